"""A key the model types into a tool call (issue 10, part 5): the tool gets the call as
made, but everything that shows or logs it gets it redacted: `agentd run --json`
`tool_calls`, the terminal's tool lines, the daemon log (a bridge turn's LogEvents lines),
`/runs/<id>` and a streaming chat's `show_tools` lines. Through the real loop, the real
bash tool in bubblewrap, and the bridge on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from bridgekit import TOKEN, BridgeHost, bridge_env, bridge_home, signed
from conftest import agentd, requires_bwrap
from daemonkit import wait_for
from fakellm import FakeLLM

pytestmark = requires_bwrap

# An Anthropic-shaped key that is no variable of this process (the pattern catches it), and
# the fake OpenAI key the `fake` fixture exports (caught as the variable's value).
TYPED = "sk-ant-api03-Zq8WvT3nLp6RxY2mKc9BhJ4dFg7S"
OWN = "sk-test-KEYVALUE"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def leaky_calls() -> list[dict]:
    """Two model steps that put both keys into tool-call arguments, then an answer."""
    return [{"tool_calls": [{"name": "bash", "arguments": {
                "command": f"echo {TYPED} > /dev/null; echo typed"}}]},
            {"tool_calls": [{"name": "write", "arguments": {
                "path": f"outbox/{OWN}.txt", "content": f"key={TYPED}"}}]},
            {"text": "done"}]


def assert_no_keys(text: str, where: str) -> None:
    assert TYPED not in text and OWN not in text, f"a key in {where}"


def test_run_json_and_the_terminal_show_tool_calls_redacted(
        home: Path, workdir: Path, fake: FakeLLM) -> None:
    fake.push(*leaky_calls())
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", "openai:test", "leak")
    data = json.loads(r.stdout)
    assert data["status"] == "ok", r.stdout
    assert_no_keys(r.stdout, "run --json")
    command = data["tool_calls"][0]["arguments"]["command"]
    assert command == "echo [REDACTED:anthropic-key] > /dev/null; echo typed"
    assert data["tool_calls"][1]["arguments"]["path"] == "outbox/[REDACTED:OPENAI_API_KEY].txt"
    tool_results = [m["content"] for m in fake.requests[-1].body["messages"]
                    if m["role"] == "tool"]
    assert "typed" in tool_results[0]  # the command ran as the model wrote it
    fake.push(*leaky_calls())
    r = agentd("run", "--home", str(home), "--workdir", str(workdir), "--model",
               "openai:test", "leak")
    assert r.exit_code == 0, r.output
    assert "▸ bash echo [REDACTED:anthropic-key]" in r.stdout
    assert_no_keys(r.stdout + r.stderr, "the terminal")


@pytest.fixture
def host(home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[BridgeHost]:
    bridge_env(monkeypatch)
    with BridgeHost(bridge_home(home, show_tools=True)) as h:
        yield h


def test_the_daemon_log_runs_and_chat_show_tool_calls_redacted(host: BridgeHost,
                                                               fake: FakeLLM) -> None:
    fake.push(*leaky_calls())
    event = json.dumps({"action": "leak"}).encode()
    rid = httpx2.post(f"{host.url}/hooks/x", content=event,
                      headers=signed(event, "msg_leak")).json()["id"]
    wait_for(lambda: httpx2.get(f"{host.url}/runs/{rid}", headers=AUTH).json()["status"]
             in ("done", "failed"), 60, "the webhook's run")
    run = httpx2.get(f"{host.url}/runs/{rid}", headers=AUTH)
    assert run.json()["status"] == "done", run.text
    assert_no_keys(run.text, "/runs")
    assert "hook x: ▸ bash echo [REDACTED:anthropic-key]" in host.log
    fake.push(*leaky_calls())
    with httpx2.stream("POST", f"{host.url}/v1/chat/completions", headers=AUTH, json={
            "model": "agentd", "stream": True, "user": "default", "messages": [
                {"role": "user", "content": "leak"}]}, timeout=60) as r:
        streamed = "".join(r.iter_text())
    assert "▸ bash echo [REDACTED:anthropic-key]" in streamed
    assert_no_keys(streamed, "the chat stream")
    assert "chat default: ▸ write outbox/[REDACTED:OPENAI_API_KEY].txt" in host.log
    assert_no_keys(host.log, "the daemon log")
