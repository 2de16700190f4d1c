"""Redaction: exact secret values and common key shapes, and where it is applied."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from pathlib import Path

import pytest
from conftest import agentd
from fakellm import FakeLLM

from agentd import redact
from agentd.config import parse_settings
from agentd.llm.types import Message, ToolCall
from agentd.session import SessionLog
from agentd.tools import ToolContext
from agentd.tools.dispatch import run_tool

OPENAI = "sk-proj-" + "a1B2c3D4e5" * 5
ANTHROPIC = "sk-ant-api03-" + "Zz9_" * 12
GHP = "ghp_" + "A1b2C3d4E5" * 4
PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"
SLACK = "xoxb-123456789012-abcdefghijkl"
AWS = "AKIAIOSFODNN7EXAMPLE"
PEM = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAA\n"
       "-----END OPENSSH PRIVATE KEY-----")


def test_values_and_names() -> None:
    r = redact.Redactor({"MY_KEY": "hunter2-but-longer", "SHORT": "abc", "EMPTY": ""})
    text = "key=hunter2-but-longer; short abc stays"
    assert r.redact(text) == "key=[REDACTED:MY_KEY]; short abc stays"
    assert r.find(text) == ["MY_KEY"]
    assert r.find("nothing here") == [] and r.redact("") == ""


def test_longest_value_wins() -> None:
    r = redact.Redactor({"A": "secret-value", "B": "secret-value-longer"})
    assert r.redact("secret-value-longer secret-value") == (
        "[REDACTED:B] [REDACTED:A]")


@pytest.mark.parametrize(("secret", "name"), [
    (OPENAI, "openai-key"), ("sk-" + "x1" * 24, "openai-key"), (ANTHROPIC, "anthropic-key"),
    (GHP, "github-token"), (PAT, "github-token"), (SLACK, "slack-token"),
    (AWS, "aws-access-key"), (PEM, "private-key"),
])
def test_key_shapes(secret: str, name: str) -> None:
    r = redact.Redactor({})
    assert r.redact(f"before {secret} after") == f"before [REDACTED:{name}] after"
    assert r.find(f"x\n{secret}\n") == [name]


def test_no_false_positives_on_ordinary_text() -> None:
    r = redact.Redactor({})
    text = ("ask-the-user-about-the-deployment-plan task-force-alpha-bravo-charlie "
            "sk-learn-is-a-python-library-name AKIA_NOT_A_KEY github_pat_short "
            "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----")
    assert r.redact(text) == text and r.find(text) == []


def test_a_cut_private_key_is_still_hidden() -> None:
    r = redact.Redactor({})
    head = PEM.split("-----END")[0]
    assert r.redact("out: " + head + "[... cut ...]") == "out: [REDACTED:private-key]"


def test_from_settings_reads_every_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse_settings({"providers": {"lm": {"key_env": "LM_KEY"}}})
    monkeypatch.setenv("LM_KEY", "local-model-key-123")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-value-999")
    monkeypatch.setenv("AGENTD_WEBHOOK_SECRET", "whsec-value-777")
    monkeypatch.setenv("AGENTD_BRIDGE_TOKEN", "tiny")  # too short: ignored
    r = redact.from_settings(s)
    text = "local-model-key-123 openai-value-999 whsec-value-777 tiny"
    assert r.redact(text) == ("[REDACTED:LM_KEY] [REDACTED:OPENAI_API_KEY] "
                              "[REDACTED:AGENTD_WEBHOOK_SECRET] tiny")
    assert "LM_KEY" not in redact.default().find(text)  # only from_settings knows it


def test_run_tool_redacts_every_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "the-openai-secret-1")
    (tmp_path / "env").write_text(f"OPENAI_API_KEY=the-openai-secret-1\nAWS={AWS}\n")
    ctx = ToolContext(home=tmp_path, workdir=tmp_path)
    read = asyncio.run(run_tool(ctx, ToolCall("1", "read", {"path": "env"})))
    assert "the-openai-secret-1" not in read.content and AWS not in read.content
    assert "[REDACTED:OPENAI_API_KEY]" in read.content
    assert "[REDACTED:aws-access-key]" in read.content
    ctx.redactor = redact.Redactor({"CUSTOM": "AWS=AKIA"})  # an explicit one replaces the default
    again = asyncio.run(run_tool(ctx, ToolCall("2", "read", {"path": "env"})))
    assert "the-openai-secret-1" in again.content and "[REDACTED:CUSTOM]" in again.content


def test_session_rows_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "anthropic-secret-42")
    log = SessionLog(tmp_path / "s.jsonl", {"id": "x"})
    log.append(Message("assistant", "the key is anthropic-secret-42",
                       tool_calls=[ToolCall("1", "bash", {"command": f"echo {GHP}"})]))
    log.end(error="provider said anthropic-secret-42")
    raw = (tmp_path / "s.jsonl").read_text()
    assert "anthropic-secret-42" not in raw and GHP not in raw
    rows = [json.loads(line) for line in raw.splitlines()]
    assert rows[1]["text"] == "the key is [REDACTED:ANTHROPIC_API_KEY]"
    assert "[REDACTED:github-token]" in json.dumps(rows[1])
    assert rows[2]["error"] == "provider said [REDACTED:ANTHROPIC_API_KEY]"


TELEGRAM = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_"


def test_telegram_bot_token_shape() -> None:
    r = redact.Redactor({})
    assert r.redact(f"url=/bot{TELEGRAM}/sendMessage") == (
        "url=/bot[REDACTED:telegram-bot-token]/sendMessage")
    assert r.redact("at 12:30:45 and 2026-11-30T12:00:00Z, id 1234567:short") == (
        "at 12:30:45 and 2026-11-30T12:00:00Z, id 1234567:short")


def test_every_variable_the_bridge_reads_is_redacted() -> None:
    """Whichever secret agentd/bridge/secrets.py reads from the environment is also one a
    turn redacts from the environment: the bridge registers what it loads, but a CLI or
    daemon turn in the same shell never ran the bridge's loader."""
    from agentd.bridge import secrets

    read = set(re.findall(r'"(AGENTD_[A-Z_]+)"', inspect.getsource(secrets)))
    assert {"AGENTD_TELEGRAM_BOT_TOKEN", "AGENTD_SLACK_BOT_TOKEN"} <= read
    assert read <= set(redact.WELL_KNOWN_VARS)


def test_a_hook_secret_env_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    s = parse_settings({"bridge": {"hooks": {"gh": {"secret_env": "GH_HOOK_SECRET"}}}})
    monkeypatch.setenv("GH_HOOK_SECRET", "hook-secret-value-31")
    assert redact.from_settings(s).redact("x hook-secret-value-31") == (
        "x [REDACTED:GH_HOOK_SECRET]")


def test_a_turn_redacts_the_bridge_tokens(home: Path, workdir: Path, fake: FakeLLM,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI turn whose tool output holds the Telegram and Slack bot tokens (a `.env` the
    agent reads) sends neither to the model nor writes either into the transcript."""
    values = {"AGENTD_TELEGRAM_BOT_TOKEN": "tg-bot-token-not-a-known-shape-1",
              "AGENTD_SLACK_BOT_TOKEN": "slack-bot-token-not-a-known-shape-2",
              "AGENTD_SLACK_SIGNING_SECRET": "slack-signing-secret-value-3",
              "AGENTD_TELEGRAM_SECRET": "telegram-webhook-secret-value-4"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    (workdir / "bot.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    fake.push({"tool_calls": [{"name": "read", "arguments": {"path": "bot.env"}}]},
              {"text": "read it"})
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", "openai:test", "read bot.env")
    assert json.loads(r.stdout)["status"] == "ok", r.output
    sent = json.dumps(fake.requests[-1].body)
    transcripts = "".join(p.read_text() for p in (home / ".agentd/sessions").glob("*.jsonl"))
    for name, value in values.items():
        assert f"[REDACTED:{name}]" in sent
        assert value not in sent and value not in transcripts and value not in r.stdout
