"""The bridge's OpenAPI schema is served and honest.

`GET /openapi.json` (public, like /healthz) lists for each route the answers it really
sends, with the one error body, its security scheme, and the chat request body the handler
checks. Then schemathesis's own CLI runs every one of its checks (`--checks all`: no 5xx,
status codes, content types, response headers and bodies, negative data rejected,
positive data accepted, auth enforced, methods, ...) against a live `agentd serve` over
loopback HTTP with the Bearer token. Bounded: the coverage phase in negative mode (its
positive cases for the chat body take schemathesis minutes to generate), fuzzing in both
modes, a fixed seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from bridgekit import (
    TOKEN,
    BridgeHost,
    ServeProcess,
    add_table,
    bridge_env,
    bridge_home,
    signed,
)
from fakellm import FakeLLM

from agentd.bridge.chat_request import CHAT_REQUEST, parse_messages
from agentd.bridge.jsonshape import problem

AUTH = {"authorization": f"Bearer {TOKEN}"}
PATHS = {"/healthz", "/v1/models", "/v1/chat/completions", "/hooks/{name}", "/runs/{run_id}",
         "/telegram", "/slack/events"}
ST = Path(sys.executable).with_name("st")


@pytest.fixture
def env(home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Path:
    bridge_env(monkeypatch)
    bridge_home(home)
    add_table(home, "bridge.telegram", enabled=True, chats=[1])
    add_table(home, "bridge.slack", enabled=True, users=["U1"])
    return home


def test_the_schema_is_public_and_documents_every_answer(env: Path, fake: FakeLLM) -> None:
    with BridgeHost(env) as host:
        r = httpx2.get(f"{host.url}/openapi.json")  # no token: public, like /healthz
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        doc = r.json()
        assert set(doc["paths"]) == PATHS
        assert "openai:test" not in json.dumps(doc)  # nothing of this home (its model)
        schemes = doc["components"]["securitySchemes"]
        assert schemes["bearer"] == {"type": "http", "scheme": "bearer",
                                     "description": schemes["bearer"]["description"]}
        assert {schemes[n]["name"] for n in ("standardWebhooks", "svixWebhooks")} == {
            "webhook-signature", "svix-signature"}
        for path, item in doc["paths"].items():
            for method, op in item.items():
                codes = set(op["responses"])
                assert "422" not in codes, (method, path)
                assert {"408", "413", "429"} <= codes
                assert "Retry-After" in op["responses"]["429"]["headers"]
                if path == "/healthz":
                    assert op["security"] == [] and codes == {"200", "408", "413", "429"}
                    continue
                assert {"401", "503"} <= codes and op["security"], (method, path)
                error = op["responses"]["401"]["content"]["application/json"]["schema"]
                assert error["properties"]["error"]["required"] == ["message", "type", "code"]
                if method == "post":
                    assert {"400", "404", "415"} <= codes, (method, path)
        chat = doc["paths"]["/v1/chat/completions"]["post"]
        assert chat["security"] == [{"bearer": []}]
        assert chat["requestBody"]["content"]["application/json"]["schema"] == CHAT_REQUEST
        assert set(chat["responses"]["200"]["content"]) == {"application/json",
                                                            "text/event-stream"}
        assert {"bearer": []} not in doc["paths"]["/hooks/{name}"]["post"]["security"]

        # What the schema documents is what the server sends.
        r = httpx2.get(f"{host.url}/v1/models")
        assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type",
                                                                     "param", "code"}
        fake.push({"text": "history taken"})
        history = [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": "run it"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "f"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "done"},
                   {"role": "user", "content": [{"type": "text", "text": "and now?"}]}]
        r = httpx2.post(f"{host.url}/v1/chat/completions", headers=AUTH,
                        json={"messages": history}, timeout=30)
        assert r.status_code == 200, r.text  # a tool message in the history was a 400
        for bad, why in ((
                {"messages": history, "temperature": 9}, "body.temperature: must be at most 2"),
                ({"messages": [{"role": "user", "content": " \n"}]}, "body.messages[0].content"),
                ({"messages": history, "tools": [{"type": "function"}]}, "client-side tools")):
            r = httpx2.post(f"{host.url}/v1/chat/completions", headers=AUTH, json=bad)
            assert r.status_code == 400 and why in r.json()["error"]["message"], r.text
        body = json.dumps({"x": 1}).encode()
        r = httpx2.post(f"{host.url}/hooks/bad.name", content=body, headers=signed(body))
        assert r.status_code == 404  # the name's pattern is in the schema too


def test_the_body_check_is_json_schema() -> None:
    """The handler's check reads the schema as JSON Schema does: `true` is no integer,
    patterns search, a keyword it does not know is an error, not a silent pass."""
    user = {"role": "user", "content": "hi"}
    assert problem({"messages": [user], "n": 1}, CHAT_REQUEST) is None
    assert problem({"messages": [user], "n": True}, CHAT_REQUEST) == "body.n: must be integer"
    assert problem({"messages": [user], "stop": ["a"] * 5}, CHAT_REQUEST)
    assert problem({"messages": [{"role": "system", "content": "x"}]}, CHAT_REQUEST).endswith(
        "no user message: the last user message is the agent's input")
    with pytest.raises(ValueError, match="not supported"):
        problem(1, {"multipleOf": 2})


@pytest.mark.parametrize("messages", [
    None, "hi", [], ["hi"], [{"content": "no role"}], [{"role": "robot", "content": "x"}],
    [{"role": "user", "content": 5}], [{"role": "assistant", "content": [{"text": "x"}]}],
    [{"role": "system", "content": "no user"}], [{"role": "user"}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": [{"type": "text", "text": " \u2028"}]}],
    [{"role": "user", "content": "\ufeff\x1c "}],
])
def test_the_schema_refuses_every_message_list_parse_messages_cannot_read(
        messages: object) -> None:
    """parse_messages reads only what `check` let through: each shape it once refused
    itself is refused by the published schema first."""
    assert problem({"messages": messages}, CHAT_REQUEST)


def test_parse_messages_reads_what_the_schema_passes() -> None:
    messages = [{"role": "system", "content": None},
                {"role": "user", "content": [{"type": "text", "text": "a"},
                                             {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "x"}, {"role": "user", "content": "go"}]
    assert problem({"messages": messages}, CHAT_REQUEST) is None
    text, history = parse_messages(messages)
    assert text == "go" and len(history) == 2


def test_schemathesis_every_check_against_live_serve(env: Path, fake: FakeLLM,
                                                     tmp_path: Path) -> None:
    fake.push(*[{"text": "ok"}] * 400)
    config = tmp_path / "schemathesis.toml"
    config.write_text('[phases.coverage.generation]\nmode = "negative"\n')
    with ServeProcess(env) as serve:
        r = subprocess.run(
            [str(ST), "--config-file", str(config), "run", f"{serve.url}/openapi.json",
             "--checks", "all", "--phases", "examples,coverage,fuzzing", "-n", "6",
             "--seed", "12", "-H", f"Authorization: Bearer {TOKEN}", "--request-timeout", "30",
             "--report", "ndjson", "--report-ndjson-path", str(tmp_path / "events.ndjson")],
            capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        summary = r.stdout.strip().splitlines()[-1]
        assert "failure" not in summary and "error" not in summary, r.stdout[-6000:]
        assert "Traceback" not in serve.log and TOKEN not in serve.log
    statuses = [c["response"]["status_code"]
                for line in (tmp_path / "events.ndjson").read_text().splitlines()
                if "ScenarioFinished" in line
                for c in json.loads(line)["ScenarioFinished"]["recorder"].get(
                    "interactions", {}).values() if c.get("response")]
    assert statuses.count(200) >= 5 and statuses.count(400) >= 20, sorted(set(statuses))
    assert [q for q in fake.requests if q.method == "POST"], "no chat turn was fuzzed"
