"""Both adapters against the fake server, through the real SDKs.

What matters is what goes over the wire (the second request of a tool round trip must
carry the result in the protocol's exact shape) and that every failure comes back as one
ProviderError line that says what to do, without the key.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakellm import FakeLLM

from agentd.llm.anthropic import AnthropicProvider
from agentd.llm.openai import OpenAIProvider
from agentd.llm.types import Message, ProviderError, ToolCall, ToolSpec, Usage

KEY = "sk-test-not-a-real-key-1234"
BASH = ToolSpec("bash", "Run a shell command.", {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]})
Factory = Callable[..., Any]


def anthropic_provider(fake: FakeLLM | None, **kw: Any) -> AnthropicProvider:
    if fake:
        kw.setdefault("base_url", fake.anthropic_url)
    return AnthropicProvider("claude-test", **{"api_key": KEY, "max_retries": 0, **kw})


def openai_provider(fake: FakeLLM | None, **kw: Any) -> OpenAIProvider:
    if fake:
        kw.setdefault("base_url", fake.openai_url)
    return OpenAIProvider("gpt-test", **{"api_key": KEY, "max_retries": 0, **kw})


both = pytest.mark.parametrize("make", [anthropic_provider, openai_provider],
                               ids=["anthropic", "openai"])


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as f:
        yield f


def complete(provider: Any, messages: list[Message], on_text: Any = None) -> Message:
    async def go() -> Message:
        try:
            return await provider.complete("You are terse.", messages, [BASH], on_text)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def fails(provider: Any, messages: list[Message] | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        complete(provider, messages or [Message("user", "hi")])
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    return info.value


# -- answers ---------------------------------------------------------------------------


@both
def test_text_streams_deltas(fake: FakeLLM, make: Factory) -> None:
    fake.push({"text": "hello from the fake model"})
    provider = make(fake)
    deltas: list[str] = []
    msg = complete(provider, [Message("user", "hi")], deltas.append)
    assert len(deltas) > 1 and "".join(deltas) == msg.text == "hello from the fake model"
    assert (msg.role, msg.tool_calls, msg.model) == ("assistant", [], provider.name)
    assert msg.stop_reason in ("end_turn", "stop")
    assert msg.usage is not None and msg.usage.input > 0 and msg.usage.output > 0


@both
def test_usage_is_normalised(fake: FakeLLM, make: Factory) -> None:
    fake.push({"text": "x", "usage": {"input": 100, "output": 20, "cache_read": 30,
                                      "cache_write": 5}})
    assert complete(make(fake), [Message("user", "hi")]).usage == Usage(100, 20, 30, 5)


@both
def test_empty_reply_is_a_message(fake: FakeLLM, make: Factory) -> None:
    fake.push({"empty": True})
    msg = complete(make(fake), [Message("user", "hi")])
    assert (msg.text, msg.tool_calls) == ("", [])


@both
def test_malformed_arguments_become_call_errors(fake: FakeLLM, make: Factory) -> None:
    fake.push({"tool_calls": [{"name": "bash", "arguments": '{"command": "ls'},
                              {"name": "bash", "arguments": "[1, 2]"},
                              {"name": "bash", "arguments": {"command": "pwd"}}]})
    bad, listy, good = complete(make(fake), [Message("user", "hi")]).tool_calls
    assert bad.arguments == {} and bad.error and bad.error.startswith("invalid JSON arguments")
    assert listy.arguments == {} and "expected an object" in (listy.error or "")
    assert (good.arguments, good.error) == ({"command": "pwd"}, None)
    assert len({bad.id, listy.id, good.id}) == 3


@both
def test_a_provider_survives_several_event_loops(fake: FakeLLM, make: Factory) -> None:
    fake.push({"text": "one"}, {"text": "two"})
    provider = make(fake)
    for want in ("one", "two"):  # like a CLI that runs asyncio.run once per turn
        assert asyncio.run(provider.complete("", [Message("user", "hi")], [])).text == want


# -- what goes over the wire -----------------------------------------------------------


def round_trip(fake: FakeLLM, provider: Any, call_id: str) -> dict[str, Any]:
    """A tool call, its result, the final answer; returns the second request's body."""
    fake.push({"text": "Looking.", "tool_calls": [{"id": call_id, "name": "bash",
                                                   "arguments": {"command": "ls"}}]},
              {"text": "There is a.txt."})
    history = [Message("user", "what is here?")]
    reply = complete(provider, history)
    assert reply.stop_reason in ("tool_use", "tool_calls")
    (call,) = reply.tool_calls
    assert (call.id, call.name, call.arguments, call.error) == (call_id, "bash",
                                                               {"command": "ls"}, None)
    history += [reply, Message("tool", "a.txt", tool_call_id=call.id)]
    assert complete(provider, history).text == "There is a.txt."
    assert len(fake.requests) == 2
    return fake.requests[1].body


def without_cache_marks(value: Any) -> Any:
    """The request without its prompt-cache breakpoints (tests/test_caching.py checks them)."""
    if isinstance(value, dict):
        return {k: without_cache_marks(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_cache_marks(v) for v in value]
    return value


def test_anthropic_round_trip_shape(fake: FakeLLM) -> None:
    body = without_cache_marks(round_trip(fake, anthropic_provider(fake), "toolu_01abc"))
    assert body["system"] == [{"type": "text", "text": "You are terse."}]
    assert body["tools"] == [{"name": "bash", "description": BASH.description,
                              "input_schema": BASH.parameters}]
    assert body["stream"] is True and body["model"] == "claude-test"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "what is here?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Looking."},
            {"type": "tool_use", "id": "call_1", "name": "bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt",
             "is_error": False}]}]


def test_openai_round_trip_shape(fake: FakeLLM) -> None:
    body = round_trip(fake, openai_provider(fake), "call_xyz")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["tools"] == [{"type": "function", "function": {
        "name": "bash", "description": BASH.description, "parameters": BASH.parameters}}]
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "what is here?"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"}]


def two_calls_then_user() -> list[Message]:
    calls = [ToolCall("a", "bash", {"command": "ls"}), ToolCall("b", "bash", {"command": "x"})]
    return [Message("user", "go"), Message("assistant", "", calls),
            Message("tool", "a.txt", tool_call_id="a"),
            Message("tool", "x: not found", tool_call_id="b", is_error=True),
            Message("user", "and now?")]


def test_anthropic_merges_results_and_following_text(fake: FakeLLM) -> None:
    fake.push({"text": "ok"})
    complete(anthropic_provider(fake), two_calls_then_user())
    msgs = without_cache_marks(fake.requests[0].body["messages"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert [b["type"] for b in msgs[1]["content"]] == ["tool_use", "tool_use"]  # no "" text
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt", "is_error": False},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "x: not found",
         "is_error": True},
        {"type": "text", "text": "and now?"}]


def test_openai_marks_error_results(fake: FakeLLM) -> None:
    fake.push({"text": "ok"}, {"text": "ok"})
    history = two_calls_then_user()
    history[3] = Message("tool", "Error: already says so", tool_call_id="b", is_error=True)
    complete(openai_provider(fake), two_calls_then_user())
    complete(openai_provider(fake), history)
    first, second = (r.body["messages"] for r in fake.requests)
    assert first[2]["tool_calls"][1]["id"] == "call_2" and first[2]["content"] is None
    assert first[4] == {"role": "tool", "tool_call_id": "call_2",
                        "content": "error: x: not found"}
    assert second[4]["content"] == "Error: already says so"
    assert first[5] == {"role": "user", "content": "and now?"}


@both
def test_dangling_tool_call_is_accepted(fake: FakeLLM, make: Factory) -> None:
    """A transcript that lost a result (e.g. a crash mid-tool) must still be sendable."""
    fake.push({"text": "resuming"})
    history = [Message("user", "go"),
               Message("assistant", "", [ToolCall("lost", "bash", {"command": "sleep 9"})]),
               Message("user", "continue")]
    assert complete(make(fake), history).text == "resuming"
    sent = str(fake.requests[0].body["messages"])
    assert "no result was recorded" in sent and "call_1" in sent and "lost" not in sent


# -- failures --------------------------------------------------------------------------


@both
def test_bad_key(fake: FakeLLM, make: Factory) -> None:
    fake.push({"error": 401, "message": f"invalid x-api-key {KEY}"})  # a server echoing it
    provider = make(fake)
    err = fails(provider)
    assert err.status == 401 and KEY not in str(err)
    assert f"check ${provider.key_env}" in str(err)
    assert provider.key_env in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


@both
def test_missing_key(fake: FakeLLM, make: Factory) -> None:
    err = fails(make(fake, api_key=None, key_env="AGENTD_TEST_UNSET_KEY"))
    assert "no API key: set $AGENTD_TEST_UNSET_KEY" in str(err)
    assert fake.requests == []


@both
def test_rate_limit_then_success(fake: FakeLLM, make: Factory) -> None:
    fake.push({"error": 429, "message": "slow down", "headers": {"retry-after": "0"}},
              {"text": "made it"})
    assert complete(make(fake, max_retries=1), [Message("user", "hi")]).text == "made it"
    assert len(fake.requests) == 2


@both
def test_server_error_after_retries(fake: FakeLLM, make: Factory) -> None:
    boom = {"error": 500, "message": "boom", "headers": {"retry-after-ms": "1"}}
    fake.push(boom, boom)
    err = fails(make(fake, max_retries=1))
    assert err.status == 500 and "boom" in str(err) and "retried 1 time;" in str(err)
    assert len(fake.requests) == 2


def test_anthropic_overloaded(fake: FakeLLM) -> None:
    fake.push({"error": 529, "message": "Overloaded"})
    err = fails(anthropic_provider(fake))
    assert err.status == 529 and "try again later" in str(err)


@both
def test_model_not_found(fake: FakeLLM, make: Factory) -> None:
    fake.push({"error": 404, "message": "model: nope"})
    kw = {"label": "ollama"} if make is openai_provider else {}
    err = fails(make(fake, **kw))
    assert err.status == 404 and "not found" in str(err) and ":<model-id>" in str(err)
    assert make is anthropic_provider or "ollama:<model-id>" in str(err)


@both
@pytest.mark.parametrize("via_env", [False, True], ids=["arg", "env"])
def test_connection_refused(make: Factory, via_env: bool,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}" + ("" if make is anthropic_provider else "/v1")
    if via_env:  # the SDK's own variable; the message must name where it really went
        monkeypatch.setenv("ANTHROPIC_BASE_URL" if make is anthropic_provider
                           else "OPENAI_BASE_URL", url)
    err = fails(make(None, base_url=None if via_env else url))
    assert f"cannot reach {url}: is the server running?" in str(err)


@both
def test_malformed_body(fake: FakeLLM, make: Factory) -> None:
    fake.push({"raw": "data: {not json\n\n", "content_type": "text/event-stream"})
    assert "malformed response" in str(fails(make(fake)))


@both
def test_timeout(fake: FakeLLM, make: Factory) -> None:
    fake.push({"delay": 0.5, "text": "too late"})
    err = fails(make(fake, timeout=0.1))
    assert "cannot reach" in str(err) and "no answer within 0.1s" in str(err)


# -- what a failure means to a caller: ProviderError.transient and .retry_after ----------


@both
@pytest.mark.parametrize(("status", "transient"), [
    (429, True), (529, True), (500, True), (503, True), (408, True), (409, True),
    (400, False), (401, False), (403, False), (404, False), (413, False), (422, False)])
def test_http_statuses_say_whether_to_try_again(fake: FakeLLM, make: Factory, status: int,
                                                transient: bool) -> None:
    fake.push({"error": status, "message": "x"})
    err = fails(make(fake))
    assert (err.status, err.transient, err.retry_after) == (status, transient, None)


@both
@pytest.mark.parametrize(("headers", "wait"), [
    ({"retry-after": "2"}, 2.0), ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0), ({"retry-after": "soon"}, None)])
def test_retry_after_is_read_by_the_adapter(fake: FakeLLM, make: Factory,
                                            headers: dict[str, str], wait: float | None) -> None:
    fake.push({"error": 429, "headers": headers})
    err = fails(make(fake))
    assert err.transient and err.retry_after == wait  # a date in the past: no wait


@both
def test_a_server_saying_do_not_retry_means_not_here_soon(fake: FakeLLM, make: Factory
                                                          ) -> None:
    fake.push({"error": 503, "headers": {"x-should-retry": "false"}})
    err = fails(make(fake))
    assert err.transient and err.retry_after == math.inf  # another model, not this one


@both
def test_unreachable_and_slow_servers_are_transient(fake: FakeLLM, make: Factory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}" + ("" if make is anthropic_provider else "/v1")
    assert fails(make(None, base_url=url)).transient
    fake.push({"delay": 0.5, "text": "too late"})
    assert fails(make(fake, timeout=0.1)).transient


@both
def test_a_malformed_body_or_a_missing_key_is_not_transient(fake: FakeLLM,
                                                            make: Factory) -> None:
    fake.push({"raw": "data: {not json\n\n", "content_type": "text/event-stream"})
    assert not fails(make(fake)).transient
    assert not fails(make(fake, api_key=None, key_env="AGENTD_TEST_UNSET_KEY")).transient


CUT_OFF = {  # the stream starts, then the connection closes before the answer is done
    "anthropic": 'event: message_start\ndata: {"type": "message_start", "message": {"id": '
                 '"m", "type": "message", "role": "assistant", "model": "claude-test", '
                 '"content": [], "stop_reason": null, "usage": {"input_tokens": 3, '
                 '"output_tokens": 1}}}\n\n',
    "openai": 'data: {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": '
              '"gpt-test", "choices": [{"index": 0, "delta": {"content": "hal"}}]}\n\n',
}


@both
def test_a_cut_off_stream_is_transient(fake: FakeLLM, make: Factory) -> None:
    provider = make(fake)
    fake.push({"raw": CUT_OFF[provider.label], "content_type": "text/event-stream"})
    err = fails(provider)
    assert "ended early" in str(err) and err.transient


def test_error_events_inside_the_stream(fake: FakeLLM) -> None:
    """Anthropic names the error's type (overloaded is transient, an invalid request not);
    OpenAI sends a bare error object, which is the server's failure."""
    for kind, transient in (("overloaded_error", True), ("invalid_request_error", False)):
        event = {"type": "error", "error": {"type": kind, "message": "mid-stream"}}
        fake.push({"raw": f"event: error\ndata: {json.dumps(event)}\n\n",
                   "content_type": "text/event-stream"})
        err = fails(anthropic_provider(fake))
        assert "mid-stream" in str(err) and err.transient is transient
    fake.push({"raw": 'data: {"error": {"message": "mid-stream"}}\n\n',
               "content_type": "text/event-stream"})
    err = fails(openai_provider(fake))
    assert "mid-stream" in str(err) and err.transient
