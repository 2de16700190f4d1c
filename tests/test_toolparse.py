"""Tolerant reading of tool calls (agentd/llm/toolparse.py): the faults small models make
are repaired, what cannot be read is quoted back (capped) and kept, and nothing a model
sends makes it raise."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.llm.toolparse import KEEP_CAP, QUOTE_CAP, parse_arguments, text_tool_calls

NAMES = {"bash", "read"}


@pytest.mark.parametrize("raw, expected", [
    ('{"command": "ls"}', {"command": "ls"}),
    ('{"command": "printf \'a\nb\'"}', {"command": "printf 'a\nb'"}),  # a raw newline
    ('{"command": "a\tb"}', {"command": "a\tb"}),  # a raw tab
    ('{"command": "ls",}', {"command": "ls"}),  # a trailing comma
    ('{"a": [1, 2,], "b": "x,}",}', {"a": [1, 2], "b": "x,}"}),  # ",}" in a string stays
    ('{"a": "q\\",}",}', {"a": 'q",}'}),  # an escaped quote does not end the string
    ('```json\n{"command": "ls"}\n```', {"command": "ls"}),  # a code fence
    ('```\n{"command": "ls",}\n```', {"command": "ls"}),
    ("", {}), ("  ", {}),  # no arguments
])
def test_repairs(raw: str, expected: dict) -> None:
    args, error, kept = parse_arguments(raw)
    assert (args, error) == (expected, None)
    clean = raw.strip() == "" or raw == json.dumps(expected)
    assert kept == (None if clean else raw)  # a repaired call keeps what was sent


def test_unreadable_arguments_are_quoted_and_kept() -> None:
    raw = '{"command": "ls' + "x" * 1000
    args, error, kept = parse_arguments(raw)
    assert args == {} and kept == raw
    assert error and error.startswith("invalid JSON arguments (Unterminated string")
    assert json.dumps(raw[:QUOTE_CAP]) in error and "(1015 characters)" in error
    assert "at at" not in error
    assert len(parse_arguments("{" + "x" * 50_000)[2] or "") == KEEP_CAP


def test_not_an_object() -> None:
    args, error, kept = parse_arguments("[1, 2]")
    assert args == {} and "expected an object, got list: \"[1, 2]\"" in (error or "")
    assert kept == "[1, 2]"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    args, error, _ = parse_arguments("[" * 100_000)
    assert args == {} and error


@given(st.text(max_size=300))
def test_never_raises(raw: str) -> None:
    args, error, _ = parse_arguments(raw)
    assert isinstance(args, dict) and (error is None or isinstance(error, str))
    text_tool_calls(raw, NAMES)
    text_tool_calls(f"<tool_call>{raw}", NAMES)


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>',
    '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}',  # no closing tag
    '{"name": "bash", "arguments": {"command": "ls"}}',
    '[{"name": "bash", "arguments": {"command": "ls"}}]',
    '```json\n{"name": "bash", "arguments": {"command": "ls"}}\n```',
    '{"name": "bash", "parameters": {"command": "ls"}}',
    '{"name": "bash", "arguments": "{\\"command\\": \\"ls\\"}"}',  # arguments as a string
])
def test_text_tool_call_formats(text: str) -> None:
    rest, calls = text_tool_calls(text, NAMES)
    assert rest == "" and calls == [("bash", {"command": "ls"}, None, None)]


def test_text_around_hermes_calls_stays() -> None:
    text = ('Let me look.\n<tool_call>{"name": "read", "arguments": {"path": "a"}}</tool_call>'
            '\n<tool_call>{"name": "bash", "arguments": {"command": "ls",}}</tool_call>')
    rest, calls = text_tool_calls(text, NAMES)
    assert rest == "Let me look."
    assert [(c[0], c[1]) for c in calls] == [("read", {"path": "a"}), ("bash", {"command": "ls"})]


def test_an_unreadable_hermes_call_is_answered_with_its_text() -> None:
    rest, calls = text_tool_calls('<tool_call>{"name": "bash", "arguments": {oops}</tool_call>',
                                  NAMES)
    [(name, args, error, raw)] = calls
    assert rest == ""
    assert (name, args, raw) == ("bash", {}, '{"name": "bash", "arguments": {oops}')
    assert error and "unreadable <tool_call>" in error and "oops" in error


@pytest.mark.parametrize("text", [
    "Just an answer.",
    '{"name": "weather", "arguments": {}}',  # not one of our tools
    'The JSON is {"name": "bash", "arguments": {}} as you see.',  # prose around it
    '{"status": "done"}',
])
def test_prose_is_not_a_call(text: str) -> None:
    assert text_tool_calls(text, NAMES) == (text, [])
