"""The OpenAI-compatible endpoint, driven by the real `openai` SDK against real uvicorn on
loopback, with the fake LLM as the agent's model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from bridgekit import TOKEN, BridgeHost, bridge_env, bridge_home
from fakellm import FakeLLM

from agentd.bridge.secrets import StreamRedactor
from agentd.redact import Redactor


@pytest.fixture
def host(home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[BridgeHost]:
    bridge_env(monkeypatch)
    with BridgeHost(bridge_home(home)) as h:
        yield h


def client(host: BridgeHost, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=host.url + "/v1", api_key=key, max_retries=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def session_rows(home: Path, key: str) -> list[dict]:
    path = home / ".agentd" / "sessions" / f"chat-{key}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_non_streaming_reply_is_the_final_answer_with_the_turns_usage(
        host: BridgeHost, fake: FakeLLM, home: Path) -> None:
    fake.push({"text": "let me look", "tool_calls": [
                  {"name": "read", "arguments": {"path": "memory/USER.md"}}],
               "usage": {"input": 100, "output": 10, "cache_read": 40}},
              {"text": "You are the user.", "usage": {"input": 30, "output": 5,
                                                      "cache_read": 120}})
    r = client(host).chat.completions.create(model="agentd", messages=user("who am I?"))
    assert r.choices[0].message.content == "You are the user."
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (290, 15)
    assert r.usage.total_tokens == 305 and r.usage.prompt_tokens_details.cached_tokens == 160
    ledger = [json.loads(x) for x in (home / ".agentd/usage.jsonl").read_text().splitlines()]
    key = r.model_extra["agentd"]["session"]  # a new conversation: a new session
    assert {row["trigger"] for row in ledger} == {f"chat:{key}"}
    rows = session_rows(home, key)
    assert rows[0]["type"] == "session" and rows[1]["text"] == "who am I?"


def test_streaming_sends_text_as_written_then_usage_and_done(
        host: BridgeHost, fake: FakeLLM) -> None:
    fake.push({"text": "first I check", "tool_calls": [
                  {"name": "read", "arguments": {"path": "memory/USER.md"}}],
               "usage": {"input": 10, "output": 3}},
              {"text": "the answer is forty two", "usage": {"input": 20, "output": 6}})
    chunks = list(client(host).chat.completions.create(
        model="agentd", messages=user("q"), stream=True,
        stream_options={"include_usage": True}, extra_headers={"X-Agentd-Show-Tools": "1"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "first I check\n\n`▸ read memory/USER.md`\n\nthe answer is forty two"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 30
    assert chunks[-1].usage.completion_tokens == 9


def test_streaming_without_tool_lines_by_default(host: BridgeHost, fake: FakeLLM) -> None:
    fake.push({"tool_calls": [{"name": "read", "arguments": {"path": "memory/USER.md"}}]},
              {"text": "done reading"})
    chunks = list(client(host).chat.completions.create(model="agentd", messages=user("q"),
                                                       stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "done reading"
    assert all(c.usage is None for c in chunks)


def test_conversations_keep_separate_transcripts_and_only_the_last_message_is_new(
        host: BridgeHost, fake: FakeLLM, home: Path) -> None:
    fake.push({"text": "hi alice"}, {"text": "hi bob"}, {"text": "alice again"})
    c = client(host)
    c.chat.completions.create(model="agentd", messages=user("I am alice"), user="alice")
    c.chat.completions.create(model="agentd", messages=user("I am bob"),
                              extra_headers={"X-Agentd-Session": "bob"})
    c.chat.completions.create(model="agentd", user="alice", messages=[
        {"role": "user", "content": "FORGED HISTORY"}, {"role": "assistant", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": "what is my name?"}]}])
    third = json.dumps([m for m in fake.requests[-1].body["messages"]
                        if m["role"] != "system"])  # the day log there is shared memory
    assert "I am alice" in third and "hi alice" in third and "what is my name?" in third
    assert "I am bob" not in third and "FORGED HISTORY" not in third
    texts = [r.get("text") for r in session_rows(home, "alice") if r["type"] == "message"]
    assert texts == ["I am alice", "hi alice", "what is my name?", "alice again"]
    assert [r.get("text") for r in session_rows(home, "bob") if r["type"] == "message"] == [
        "I am bob", "hi bob"]


def test_odd_conversation_keys_become_safe_distinct_ids(host: BridgeHost, fake: FakeLLM,
                                                        home: Path) -> None:
    fake.push({"text": "a"}, {"text": "b"})
    c = client(host)
    c.chat.completions.create(model="agentd", messages=user("x"), user="../../etc/passwd")
    c.chat.completions.create(model="agentd", messages=user("x"), user="..//etc/passwd")
    names = sorted(p.name for p in (home / ".agentd/sessions").iterdir())
    assert len(names) == 2 and all(n.startswith("chat-etc-passwd-") for n in names), names
    assert not (home / "etc").exists()


def test_two_chats_at_once_run_one_after_the_other(host: BridgeHost, fake: FakeLLM,
                                                   home: Path) -> None:
    fake.push({"text": "one", "delay": 0.4}, {"text": "two", "delay": 0.4})
    answers: dict[str, str] = {}

    def ask(key: str) -> None:
        r = client(host).chat.completions.create(model="agentd", messages=user(key), user=key)
        answers[key] = r.choices[0].message.content or ""

    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(answers.values()) == ["one", "two"]
    assert time.monotonic() - started >= 0.8
    events = [line.split("person: ")[1] for line in host.log.splitlines() if "person: " in line]
    assert [e.split(": ", 1)[1].split(" ")[1] for e in events] == [
        "started", "ok", "started", "ok"], events
    for key in ("a", "b"):
        texts = [r.get("text") for r in session_rows(home, key) if r["type"] == "message"]
        assert texts == [key, answers[key]]


def test_auth_and_unknown_models(host: BridgeHost, fake: FakeLLM) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(host, "wrong-token-0123456789").chat.completions.create(
            model="agentd", messages=user("hi"))
    with pytest.raises(openai.AuthenticationError):
        client(host, "x").models.list()
    with pytest.raises(openai.NotFoundError):
        client(host).chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert [m.id for m in client(host).models.list()] == ["agentd", "openai:test"]
    assert not [r for r in fake.requests if r.method == "POST"]


def test_a_failed_turn_is_an_error_the_sdk_does_not_retry(host: BridgeHost,
                                                           fake: FakeLLM) -> None:
    fake.push({"error": 400, "message": "bad request"})
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=host.url + "/v1", api_key=TOKEN).chat.completions.create(
            model="agentd", messages=user("hi"))
    assert e.value.status_code == 502 and "the turn ended early" in str(e.value)
    assert host.log.count("turn started") == 1
    fake.push({"error": 400, "message": "bad request"})
    with pytest.raises(openai.APIError, match="the turn ended early"):
        list(client(host).chat.completions.create(model="agentd", messages=user("hi"),
                                                  stream=True))


def test_secrets_never_leave_in_answers_streamed_or_not(host: BridgeHost,
                                                        fake: FakeLLM) -> None:
    leak = f"the token is {TOKEN} and the key sk-test-KEYVALUE"
    fake.push({"text": leak}, {"text": leak})
    r = client(host).chat.completions.create(model="agentd", messages=user("leak it"))
    assert TOKEN not in r.choices[0].message.content
    assert "[REDACTED:AGENTD_BRIDGE_TOKEN]" in r.choices[0].message.content
    chunks = list(client(host).chat.completions.create(model="agentd", messages=user("x"),
                                                       stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert TOKEN not in text and "KEYVALUE" not in text
    assert text == r.choices[0].message.content


def test_stream_redactor_holds_back_split_secrets() -> None:
    secret = "hunter2 with spaces inside"
    red = Redactor({"PASS": secret, "TOKEN": "abcdefghijklmnop"})
    text = (f"a {secret} b abcdefghijklmnop c sk-{'x1' * 15} d\n-----BEGIN PRIVATE KEY-----\n"
            "MIIBVwIBADANBg\n-----END PRIVATE KEY-----\nend")
    for size in (1, 2, 3, 7):
        sr = StreamRedactor(red, [secret, "abcdefghijklmnop"])
        out = "".join(sr.feed(text[i:i + size]) for i in range(0, len(text), size)) + sr.flush()
        assert out == red.redact(text), size
        assert "hunter2" not in out and "MIIBVw" not in out and "x1x1" not in out


# -- conversations of stateless clients ---------------------------------------------------

def sent_to_model(fake: FakeLLM) -> str:
    """The conversation the last model call carried, without the system prompt."""
    posts = [r for r in fake.requests if r.method == "POST"]
    return json.dumps([m for m in posts[-1].body["messages"] if m["role"] != "system"])


def session_of(r: openai.types.chat.ChatCompletion) -> str:
    return r.model_extra["agentd"]["session"]


def test_a_replayed_history_continues_its_session_and_a_fresh_one_starts_another(
        host: BridgeHost, fake: FakeLLM, home: Path) -> None:
    fake.push({"text": "Noted:  the code is\n\nBLUE."}, {"text": "It is blue."},
              {"text": "Fresh start."}, {"text": "pinned"})
    c = client(host)
    first = c.chat.completions.create(model="agentd", messages=user("the code is blue"))
    history = [{"role": "user", "content": "the code is blue"},
               {"role": "assistant", "content": first.choices[0].message.content}]
    second = c.chat.completions.create(model="agentd", messages=[
        *history, {"role": "user", "content": "what is the code?"}])
    assert session_of(second) == session_of(first)
    assert "the code is blue" in sent_to_model(fake) and "BLUE" in sent_to_model(fake)
    fresh = c.chat.completions.create(model="agentd", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
    assert session_of(fresh) != session_of(first)
    assert "code" not in sent_to_model(fake) and "hello" in sent_to_model(fake)
    texts = [r.get("text") for r in session_rows(home, session_of(first))
             if r["type"] == "message"]
    assert texts == ["the code is blue", "Noted:  the code is\n\nBLUE.", "what is the code?",
                     "It is blue."]
    # an explicit key still wins over a history that matches another session
    raw = c.chat.completions.with_raw_response.create(
        model="agentd", messages=[*history, {"role": "user", "content": "pin"}],
        extra_headers={"X-Agentd-Session": "pinned"})
    assert raw.headers["x-agentd-session"] == "pinned"
    assert session_of(raw.parse()) == "pinned" and "code" not in sent_to_model(fake)


def test_every_openai_message_shape_is_history_and_matching_uses_what_was_sent(
        host: BridgeHost, fake: FakeLLM) -> None:
    """The answer the client saw was redacted and streamed with a tool line: that text,
    re-wrapped by the client, is what it sends back, between messages of every role and
    content shape the API allows; the session still continues."""
    fake.push({"text": "looking", "tool_calls": [
                  {"name": "read", "arguments": {"path": "memory/USER.md"}}]},
              {"text": f"the token is {TOKEN}"}, {"text": "continued"})
    c = client(host)
    raw = c.chat.completions.with_raw_response.create(
        model="agentd", messages=user("show me"), stream=True,
        extra_headers={"X-Agentd-Show-Tools": "1"})
    key = raw.headers["x-agentd-session"]
    seen = "".join(ch.choices[0].delta.content or "" for ch in raw.parse())
    assert "`▸ read memory/USER.md`" in seen and "[REDACTED:AGENTD_BRIDGE_TOKEN]" in seen
    r = c.chat.completions.create(model="agentd", messages=[
        {"role": "system", "content": "sys"}, {"role": "developer", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "show"}, {"type": "text",
                                                                        "text": "me"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
        {"role": "function", "name": "f", "content": "legacy"},
        {"role": "assistant", "content": [{"type": "text", "text": "  ".join(seen.split())},
                                          {"type": "refusal", "refusal": "x"}]},
        {"role": "user", "content": "go on"}])
    assert session_of(r) == key and "show me" in sent_to_model(fake)
    # agentd is text-only: a user message without text (an image) is refused, not dropped
    with pytest.raises(openai.BadRequestError, match="only text content is supported"):
        c.chat.completions.create(model="agentd", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "user", "content": "go on"}])


def test_a_tail_continues_an_edit_starts_anew_and_the_index_survives_a_restart(
        home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    fake.push(*({"text": f"answer {i}"} for i in range(5)))
    with BridgeHost(bridge_home(home)) as host:
        c = client(host)
        a = c.chat.completions.create(model="agentd", messages=user("q0"))
        b = c.chat.completions.create(model="agentd", messages=[
            *user("q0"), {"role": "assistant", "content": "answer 0"}, *user("q1")])
        assert session_of(b) == session_of(a)
    with BridgeHost(home) as host:  # a new process: the index is read back from disk
        c = client(host)
        tail = c.chat.completions.create(model="agentd", messages=[  # oldest dropped
            *user("q1"), {"role": "assistant", "content": "answer 1"}, *user("q2")])
        assert session_of(tail) == session_of(a)
        edit = c.chat.completions.create(model="agentd", messages=[  # stops before answer 2
            *user("q0"), {"role": "assistant", "content": "answer 0"}, *user("q1 edited")])
        assert session_of(edit) != session_of(a)
        longer = c.chat.completions.create(model="agentd", messages=[  # more than it knew
            *user("q9"), {"role": "assistant", "content": "answer 9"},
            *user("q1"), {"role": "assistant", "content": "answer 1"},
            *user("q2"), {"role": "assistant", "content": "answer 2"}, *user("q3")])
        assert session_of(longer) not in (session_of(a), session_of(edit))
    rows = (home / ".agentd/bridge/conversations.jsonl").read_text().splitlines()
    assert len(rows) == 5 and "q0" not in rows[0]  # hashes, not texts


# -- client parameters --------------------------------------------------------------------

@pytest.mark.parametrize(("params", "message"), [
    ({"temperature": 3}, "body.temperature: must be at most 2"),
    ({"temperature": "hot"}, "body.temperature: must be number"),
    ({"max_tokens": 0}, "body.max_tokens: must be at least 1"),
    ({"max_completion_tokens": 1.5}, "body.max_completion_tokens: must be integer"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "body.stop"),
    ({"stop": [""]}, "body.stop[0]: too short"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]},
     "client-side tools are not supported"),
    ({"functions": [{"name": "f"}]}, "client-side tools are not supported"),
    ({"tools": "bash"}, "body.tools: must be array"),
])
def test_bad_parameters_are_a_one_line_400(host: BridgeHost, fake: FakeLLM,
                                            params: dict, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(host).chat.completions.create(model="agentd", messages=user("hi"),
                                             extra_body=params)
    assert message in e.value.message and "\n" not in e.value.message
    assert not [r for r in fake.requests if r.method == "POST"]


@pytest.mark.parametrize("messages", [
    [{"role": "robot", "content": "hi"}], [{"role": "user", "content": 5}],
    [{"role": "user", "content": [{"text": "no type"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "system", "content": "only a system message"}],
])
def test_messages_the_api_would_refuse_are_a_400(host: BridgeHost, fake: FakeLLM,
                                                 messages: list) -> None:
    with pytest.raises(openai.BadRequestError):
        client(host).chat.completions.create(model="agentd", messages=messages)


def test_tools_with_tool_choice_none_are_accepted(host: BridgeHost, fake: FakeLLM) -> None:
    fake.push({"text": "ok"})
    r = client(host).chat.completions.create(
        model="agentd", messages=user("hi"), tool_choice="none",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert r.choices[0].message.content == "ok"
    assert [t["function"]["name"] for t in [r for r in fake.requests if r.method == "POST"][
        -1].body["tools"]] != ["f"]  # the agent's own tools, not the client's


def test_sampling_parameters_reach_the_model(host: BridgeHost, fake: FakeLLM) -> None:
    fake.push({"text": "ok"})
    client(host).chat.completions.create(model="agentd", messages=user("hi"),
                                         temperature=0.25, max_tokens=77, stop="END")
    body = [r for r in fake.requests if r.method == "POST"][-1].body
    assert body["temperature"] == 0.25 and body["stop"] in ("END", ["END"])
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 77


def test_the_index_reads_past_damage_stays_bounded_and_compacts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentd.bridge import conversations
    from agentd.bridge.conversations import Conversations, fingerprint

    monkeypatch.setattr(conversations, "MAX_SESSIONS", 3)
    u, a = fingerprint("user", "hi"), fingerprint("assistant", "Hello  there")
    assert fingerprint("assistant", " Hello\nthere ") == a != fingerprint("user", "Hello there")
    good = json.dumps({"s": "old", "tail": [u, a]})
    (tmp_path / "conversations.jsonl").write_text(
        good + '\n[1]\n{"s": 5, "tail": []}\n{"s": "x", "tail": "no"}\n{"s": "torn", "ta')
    index = Conversations(tmp_path)
    assert index.find([u, a]) == "old" and index.find([a]) == "old"
    assert index.find([]) is None and index.find([u]) is None
    for n in range(5):
        index.record(f"s{n}", [], [u, a])  # five sessions ending alike: the latest wins
    assert index.find([u, a]) == "s4" and len(index.tails) == 3
    index.record("s4", [u, a], [u, fingerprint("assistant", "again")])
    assert index.find([u, a]) == "s3" and index.tails["s4"][:2] == [u, a]
    monkeypatch.setattr(conversations, "MAX_SESSIONS", 5_000)
    for n in range(1_100):
        index.record("busy", [], [fingerprint("user", str(n)), a])
    again = Conversations(tmp_path)
    assert again.rows < 1_050 and again.tails == index.tails
    assert len(again.tails["busy"]) == conversations.TAIL
