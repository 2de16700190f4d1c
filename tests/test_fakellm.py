"""The fake LLM server is only worth trusting if the real SDKs parse what it sends.

These drive the real (sync) anthropic and openai clients against it, streaming and not,
so a drift between the fake and the wire protocols shows up here rather than as a
mysteriously green adapter test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from fakellm import FakeLLM

USER = [{"role": "user", "content": "hi"}]
BASH = {"name": "bash", "arguments": {"command": "ls -la"}}


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as f:
        yield f


def claude(fake: FakeLLM) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.anthropic_url, api_key="test", max_retries=0)


def gpt(fake: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_url, api_key="test", max_retries=0)


def ask(client: anthropic.Anthropic, **kw: Any) -> Any:
    return client.messages.create(model="claude-test", max_tokens=100, messages=USER, **kw)


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(model="gpt-test", messages=USER, **kw)


# -- Anthropic -------------------------------------------------------------------------


def test_anthropic_text(fake: FakeLLM) -> None:
    fake.push({"text": "hello there", "usage": {"input": 10, "output": 3, "cache_read": 7,
                                                "cache_write": 2}})
    msg = ask(claude(fake))
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "hello there"
    assert msg.stop_reason == "end_turn" and msg.model == "claude-test"
    u = msg.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens,
            u.cache_creation_input_tokens) == (10, 3, 7, 2)


def test_anthropic_tool_call(fake: FakeLLM) -> None:
    fake.push({"text": "let me look", "tool_calls": [{**BASH, "id": "toolu_1"}]})
    msg = ask(claude(fake))
    assert msg.stop_reason == "tool_use"
    text, call = msg.content
    assert text.text == "let me look"
    assert (call.type, call.id, call.name, call.input) == ("tool_use", "toolu_1", "bash",
                                                          {"command": "ls -la"})


def test_anthropic_stream_helper(fake: FakeLLM) -> None:
    fake.push({"text": "streamed words here", "tool_calls": [BASH, BASH],
               "usage": {"input": 5, "output": 9, "cache_read": 4, "cache_write": 1}})
    with claude(fake).messages.stream(model="m", max_tokens=100, messages=USER) as stream:
        deltas = list(stream.text_stream)
        msg = stream.get_final_message()
    assert len(deltas) > 1 and "".join(deltas) == "streamed words here"
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[1].input == msg.content[2].input == {"command": "ls -la"}
    assert msg.content[1].id != msg.content[2].id
    assert msg.stop_reason == "tool_use"
    u = msg.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens,
            u.cache_creation_input_tokens) == (5, 9, 4, 1)


def test_anthropic_raw_event_sequence(fake: FakeLLM) -> None:
    fake.push({"text": "ok", "tool_calls": [{"name": "bash", "arguments": '{"command": "l'}]})
    events = list(ask(claude(fake), stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 2
    fragments = [e.delta.partial_json for e in events if e.type == "content_block_delta"
                 and e.delta.type == "input_json_delta"]
    assert "".join(fragments) == '{"command": "l'  # malformed JSON goes out verbatim
    assert events[-2].delta.stop_reason == "tool_use" and events[-2].usage.output_tokens > 0


def test_anthropic_empty_reply(fake: FakeLLM) -> None:
    fake.push({"empty": True}, {"empty": True})
    assert ask(claude(fake)).content == []
    events = list(ask(claude(fake), stream=True))
    assert "content_block_start" not in [e.type for e in events]


@pytest.mark.parametrize(("status", "exc"), [
    (400, anthropic.BadRequestError), (401, anthropic.AuthenticationError),
    (404, anthropic.NotFoundError), (429, anthropic.RateLimitError),
    (500, anthropic.InternalServerError), (529, anthropic.OverloadedError)])
def test_anthropic_errors(fake: FakeLLM, status: int, exc: type[Exception]) -> None:
    fake.push({"error": status, "message": "nope"})
    with pytest.raises(exc) as info:
        ask(claude(fake), stream=True)
    assert info.value.status_code == status and info.value.api_message == "nope"


def test_anthropic_overloaded_type(fake: FakeLLM) -> None:
    fake.push({"error": 529})
    with pytest.raises(anthropic.APIStatusError) as info:
        ask(claude(fake))
    assert info.value.type == "overloaded_error"


# -- OpenAI ----------------------------------------------------------------------------


def test_openai_text(fake: FakeLLM) -> None:
    fake.push({"text": "hello", "usage": {"input": 10, "output": 3, "cache_read": 7}})
    r = chat(gpt(fake))
    assert r.choices[0].message.content == "hello" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 17  # includes the cached tokens
    assert r.usage.prompt_tokens_details.cached_tokens == 7
    assert r.usage.completion_tokens == 3


def test_openai_tool_calls(fake: FakeLLM) -> None:
    fake.push({"tool_calls": [{**BASH, "id": "call_a"}, {"name": "read", "arguments": "{oops"}]})
    r = chat(gpt(fake))
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    a, b = msg.tool_calls
    assert (a.id, a.function.name, a.function.arguments) == ("call_a", "bash",
                                                            '{"command": "ls -la"}')
    assert b.function.arguments == "{oops" and b.id != a.id


def test_openai_stream_with_usage(fake: FakeLLM) -> None:
    fake.push({"text": "some streamed text", "tool_calls": [BASH, BASH],
               "usage": {"input": 4, "output": 6, "cache_read": 2}})
    chunks = list(chat(gpt(fake), stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    *body, last = chunks
    assert last.choices == [] and last.usage.prompt_tokens == 6
    assert last.usage.prompt_tokens_details.cached_tokens == 2
    assert all(c.usage is None for c in body)
    text = [c.choices[0].delta.content for c in body if c.choices[0].delta.content]
    assert len(text) > 1 and "".join(text) == "some streamed text"
    calls: dict[int, list[str]] = {}
    for c in body:
        for tc in c.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(tc.index, ["", "", ""])
            slot[0] += tc.id or ""
            slot[1] += tc.function.name or ""
            slot[2] += tc.function.arguments or ""
    assert [s[1:] for s in calls.values()] == [["bash", '{"command": "ls -la"}']] * 2
    assert calls[0][0] != calls[1][0]
    assert sum(len(c.choices[0].delta.tool_calls or []) for c in body) > 2  # split up
    assert body[-1].choices[0].finish_reason == "tool_calls"


def test_openai_stream_without_usage(fake: FakeLLM) -> None:
    fake.push({"text": "x"})
    chunks = list(chat(gpt(fake), stream=True))
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("status", "exc"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError),
    (404, openai.NotFoundError), (429, openai.RateLimitError),
    (500, openai.InternalServerError)])
def test_openai_errors(fake: FakeLLM, status: int, exc: type[Exception]) -> None:
    fake.push({"error": status, "message": "nope"})
    with pytest.raises(exc) as info:
        chat(gpt(fake), stream=True)
    assert info.value.status_code == status
    assert info.value.body["message"] == "nope" and info.value.type  # OpenAI error shape


def test_openai_models(fake: FakeLLM) -> None:
    assert [m.id for m in gpt(fake).models.list()] == ["fake-model"]
    assert [m.id for m in claude(fake).models.list()] == ["fake-model"]
    assert fake.pending == 0  # listing models does not use up the script


# -- the script ------------------------------------------------------------------------


def test_script_exhausted_fails_loudly(fake: FakeLLM) -> None:
    client = anthropic.Anthropic(base_url=fake.anthropic_url, api_key="test", max_retries=2)
    with pytest.raises(anthropic.InternalServerError, match="script exhausted"):
        ask(client)
    assert len(fake.requests) == 1  # x-should-retry: false stops the SDK's retries


def test_replies_shared_fifo_and_recorded() -> None:
    with FakeLLM({"text": "one"}, {"text": "two"}) as fake:
        assert ask(claude(fake)).content[0].text == "one"
        assert chat(gpt(fake)).choices[0].message.content == "two"
        a, o = fake.requests
    assert (a.method, a.path, o.path) == ("POST", "/v1/messages", "/v1/chat/completions")
    assert a.body["model"] == "claude-test" and o.body["messages"] == USER
    assert a.headers["anthropic-version"] and o.headers["authorization"] == "Bearer test"
    assert a.raw.startswith(b"{")


def test_raw_and_delay(fake: FakeLLM) -> None:
    fake.push({"raw": "not json"}, {"delay": 0.15, "text": "late"})
    with pytest.raises(ValueError):  # the SDK cannot decode the body
        chat(gpt(fake))
    start = time.monotonic()
    assert chat(gpt(fake)).choices[0].message.content == "late"
    assert time.monotonic() - start >= 0.15


def test_error_headers_reach_the_client(fake: FakeLLM) -> None:
    fake.push({"error": 429, "headers": {"retry-after": "0"}})
    with pytest.raises(openai.RateLimitError) as info:
        chat(gpt(fake))
    assert info.value.response.headers["retry-after"] == "0"


def test_auto_mode_runs_a_tool_then_finishes() -> None:
    with FakeLLM(auto=True) as fake:
        first = ask(claude(fake))
        call = first.content[0]
        assert (call.name, call.input) == ("bash", {"command": "echo hi > hello.txt"})
        result = [{"role": "assistant", "content": [call.model_dump(include={
                       "type", "id", "name", "input"})]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                "content": ""}]}]
        second = claude(fake).messages.create(model="m", max_tokens=10,
                                              messages=[*USER, *result])
        assert second.content[0].text == "DONE"
        r = chat(gpt(fake))
        tc = r.choices[0].message.tool_calls[0]
        follow = [*USER, r.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": tc.id, "content": ""}]
        done = gpt(fake).chat.completions.create(model="m", messages=follow)
        assert done.choices[0].message.content == "DONE"
