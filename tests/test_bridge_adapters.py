"""Telegram and Slack through real uvicorn, answering through fake Bot API and Slack Web
API servers on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from bridgekit import (
    SLACK_BOT,
    TG_BOT,
    TG_SECRET,
    BridgeHost,
    FakeApi,
    add_table,
    bridge_env,
    bridge_home,
    slack_headers,
)
from daemonkit import wait_for
from fakellm import FakeLLM

OWNER, FRIEND, STRANGER_CHAT = 111, 222, 999
CHAT = -100500


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi() as a:
        yield a


@pytest.fixture
def host(home: Path, fake: FakeLLM, api: FakeApi,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[BridgeHost]:
    bridge_env(monkeypatch)
    bridge_home(home)
    add_table(home, "bridge.telegram", enabled=True, api_base=api.url, chats=[CHAT, OWNER],
              owners=[OWNER])
    add_table(home, "bridge.slack", enabled=True, api_base=api.url, users=["UOWNER", "UFRIEND"],
              owners=["UOWNER"])
    with BridgeHost(home) as h:
        yield h


def tg(host: BridgeHost, update_id: int, text: str, chat: int = CHAT, sender: int = OWNER,
       secret: str | None = TG_SECRET) -> httpx2.Response:
    update = {"update_id": update_id, "message": {
        "message_id": 7, "text": text, "chat": {"id": chat, "type": "group"},
        "from": {"id": sender, "username": f"user{sender}"}}}
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers["x-telegram-bot-api-secret-token"] = secret
    return httpx2.post(f"{host.url}/telegram", json=update, headers=headers)


def sent(api: FakeApi, n: int = 1) -> list[tuple[str, dict[str, str], Any]]:
    wait_for(lambda: len(api.calls) >= n, 20, f"{n} API call(s)")
    return api.calls


def model_posts(fake: FakeLLM) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


def test_telegram_owner_gets_a_trusted_turn_and_a_reply(host: BridgeHost, fake: FakeLLM,
                                                        api: FakeApi, home: Path) -> None:
    fake.push({"tool_calls": [{"name": "write", "arguments": {
        "path": "notes/todo.md", "content": "milk"}}]}, {"text": "noted"})
    r = tg(host, 1, "remember milk")
    assert r.status_code == 200 and r.json()["ok"] is True
    path, _, body = sent(api)[0]
    assert path == f"/bot{TG_BOT}/sendMessage"
    assert body["chat_id"] == CHAT and body["text"] == "noted"
    assert body["reply_parameters"]["message_id"] == 7
    assert (home / "notes/todo.md").read_text() == "milk"
    assert model_posts(fake)[0].body["messages"][1]["content"] == "remember milk"
    assert (home / f".agentd/sessions/chat-tg-{CHAT}.jsonl").exists()
    assert TG_BOT not in host.log and TG_SECRET not in host.log


def test_telegram_non_owner_runs_untrusted(host: BridgeHost, fake: FakeLLM, api: FakeApi,
                                           home: Path) -> None:
    fake.push({"tool_calls": [{"name": "write", "arguments": {
        "path": "notes/x.md", "content": "x"}}]}, {"text": "could not"})
    assert tg(host, 2, "write notes/x.md", sender=FRIEND).status_code == 200
    sent(api)
    task = model_posts(fake)[0].body["messages"][1]["content"]
    assert "<untrusted-" in task and "not your owner" in task
    assert not (home / "notes/x.md").exists()


def test_telegram_refusals_and_duplicates(host: BridgeHost, fake: FakeLLM,
                                          api: FakeApi) -> None:
    assert tg(host, 3, "hi", secret=None).status_code == 401
    assert tg(host, 3, "hi", secret="wrong-secret-wrong-secret").status_code == 401
    ignored = tg(host, 4, "hi", chat=STRANGER_CHAT)
    assert ignored.status_code == 200 and ignored.json()["ignored"] == "chat not allowed"
    fake.push({"text": "x" * 5000})
    assert tg(host, 5, "long please").json()["duplicate"] is False
    assert tg(host, 5, "long please").json()["duplicate"] is True
    sent(api, 2)
    # Before counting, a positive event: a later message, queued behind anything the
    # duplicate queued (one worker, arrival order), gets its reply.
    fake.push({"text": "sentinel"})
    assert tg(host, 6, "and this?").json()["duplicate"] is False
    wait_for(lambda: any(c[2]["text"] == "sentinel" for c in api.calls), 20, "the sentinel")
    assert len(model_posts(fake)) == 2
    assert [len(c[2]["text"]) for c in api.calls] == [4096, 904, 8]


def slack_event(host: BridgeHost, event: dict[str, Any], event_id: str = "Ev1",
                **kw: Any) -> httpx2.Response:
    body = json.dumps({"type": "event_callback", "event_id": event_id, "event": event}).encode()
    return httpx2.post(f"{host.url}/slack/events", content=body,
                       headers=slack_headers(body, **kw))


def test_slack_url_verification_needs_a_signature(host: BridgeHost) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "abc123"}).encode()
    r = httpx2.post(f"{host.url}/slack/events", content=body, headers=slack_headers(body))
    assert r.status_code == 200 and r.json() == {"challenge": "abc123"}
    bad = {**slack_headers(body), "x-slack-signature": "v0=" + "0" * 64}
    assert httpx2.post(f"{host.url}/slack/events", content=body, headers=bad).status_code == 401
    stale = slack_headers(body, ts=int(time.time()) - 301)
    assert httpx2.post(f"{host.url}/slack/events", content=body,
                       headers=stale).status_code == 401


def test_slack_mention_is_answered_in_its_thread_once(host: BridgeHost, fake: FakeLLM,
                                                      api: FakeApi) -> None:
    fake.push({"text": "hello from the agent"})
    event = {"type": "app_mention", "user": "UOWNER", "text": "<@UBOT> status?",
             "channel": "C1", "ts": "1700000000.000100"}
    assert slack_event(host, event).status_code == 200
    assert slack_event(host, event, retry=1).json()["duplicate"] is True
    path, headers, body = sent(api)[0]
    assert path == "/chat.postMessage" and headers["authorization"] == f"Bearer {SLACK_BOT}"
    assert body == {"channel": "C1", "text": "hello from the agent",
                    "thread_ts": "1700000000.000100"}
    assert model_posts(fake)[0].body["messages"][1]["content"] == "status?"
    fake.push({"text": "sentinel"})  # a later mention, queued behind any duplicate turn
    assert slack_event(host, {**event, "ts": "1700000000.000200"}, "Ev2").status_code == 200
    wait_for(lambda: any(c[2]["text"] == "sentinel" for c in api.calls), 20, "the sentinel")
    assert len(model_posts(fake)) == 2
    assert [c[2]["text"] for c in api.calls] == ["hello from the agent", "sentinel"]


def test_slack_ignores_bots_strangers_and_channel_chatter(host: BridgeHost, fake: FakeLLM,
                                                          api: FakeApi) -> None:
    base = {"channel": "D1", "channel_type": "im", "ts": "1.2"}
    cases = [({**base, "type": "message", "user": "UOWNER", "text": "x", "bot_id": "B1"},
              "not a message to the agent"),
             ({**base, "type": "message", "user": "UEVE", "text": "x"}, "user not allowed"),
             ({**base, "type": "message", "user": "UOWNER", "text": "x",
               "channel_type": "channel"}, "not a message to the agent")]
    for i, (event, why) in enumerate(cases):
        assert slack_event(host, event, f"Ev{i}").json()["ignored"] == why
    fake.push({"text": "dm answer"})
    r = slack_event(host, {**base, "type": "message", "user": "UFRIEND", "text": "hi"}, "EvDM")
    assert r.status_code == 200
    assert sent(api)[0][2] == {"channel": "D1", "text": "dm answer"}
    assert "<untrusted-" in model_posts(fake)[0].body["messages"][1]["content"]
