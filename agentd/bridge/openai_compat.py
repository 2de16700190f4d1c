"""`POST /v1/chat/completions` and `GET /v1/models`: the agent as an OpenAI-compatible
model, so any OpenAI client or chat UI can talk to it. Bearer token.

Each conversation is a chat session with its own transcript,
`.agentd/sessions/chat-<key>.jsonl`, and turns with trigger `chat:<key>`; every
conversation shares the home's memory and files. The key is the `X-Agentd-Session` header,
else the request's `user` field; without either, the history the client sends back names
it: a history that is the tail of what a session exchanged continues that session, any
other (a fresh one) starts a new session (agentd/bridge/conversations.py). Either way the
transcript holds the history, so only the last user message of a request is new input:
the earlier messages a client sends back are not read again (a client cannot rewrite what
the agent was told). Requests of one key, like all turns of the home, run one at a time.
The body is checked by agentd/bridge/chat_request.py (sampling, tools, message shapes).

The reply is the agent's final answer; `usage` counts every token the turn spent (all its
steps). Streaming sends the agent's text as it is written (with the text it writes between
tool steps; `show_tools` or `X-Agentd-Show-Tools: 1` adds a line per tool call), a last
chunk with usage when `stream_options.include_usage` is set, then `[DONE]`. Both name the
session in an `X-Agentd-Session` response header.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentd.bridge.auth import bearer_ok
from agentd.bridge.chat_request import (
    CHAT_REQUEST,
    check,
    check_tools,
    parse_messages,
    parse_sampling,
)
from agentd.bridge.conversations import fingerprint
from agentd.bridge.core import Bridge
from agentd.bridge.http import ApiError, error_body, parse_json, require_json, unauthorized
from agentd.bridge.secrets import StreamRedactor, scrub
from agentd.bridge.store import new_run_id
from agentd.jobs.log import LogEvents
from agentd.turn import TurnRequest

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.llm.types import Message, ToolCall, Usage
    from agentd.turn import TurnReport

AGENT = "agentd"
KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
KEEPALIVE = 15.0
NO_RETRY = {"x-should-retry": "false"}  # the OpenAI SDKs would otherwise run the turn again

def chat_schema() -> dict[str, Any]:
    """The operation's request: the body schema the handler checks (chat_request.py) and
    the headers it reads, for the OpenAPI schema."""
    headers = [{"name": name, "in": "header", "required": False, "description": what,
                "schema": {"type": "string"}} for name, what in (
        ("X-Agentd-Session", "Names the conversation (overrides `user`)."),
        ("X-Agentd-Show-Tools", "1/true/yes: a line per tool call in the stream; "
         "0/false/no: none."))]
    return {"parameters": headers, "requestBody": {"required": True, "content": {
        "application/json": {"schema": CHAT_REQUEST}}}}


def conversation_key(header: str | None, user: Any) -> str | None:
    """A safe file-name id for the conversation the client names (distinct inputs stay
    distinct); None when it names none."""
    raw = (header or (user if isinstance(user, str) else "") or "").strip()
    if not raw:
        return None
    if KEY.fullmatch(raw):
        return raw
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:40] or "key"
    return f"{safe}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def model_ids(settings: Settings) -> list[str]:
    """"agentd" (the home's model and fallbacks) and the models the home is set up with."""
    ids = [AGENT, settings.model or "", *settings.fallbacks, settings.budget_fallback or "",
           settings.heartbeat.model]
    return list(dict.fromkeys(i for i in ids if i))


def usage_json(u: Usage) -> dict[str, Any]:
    prompt = u.input + u.cache_read + u.cache_write
    return {"prompt_tokens": prompt, "completion_tokens": u.output,
            "total_tokens": prompt + u.output, "prompt_tokens_details": {
                "cached_tokens": u.cache_read}}


class ChatEvents(LogEvents):
    """Forwards the turn's text (and, if asked, a line per tool call, its arguments
    redacted by the turn) to the response, which redacts the stream once more."""

    def __init__(self, bridge: Bridge, name: str, sink: asyncio.Queue[str | None],
                 show_tools: bool):
        super().__init__(bridge.log, "person", name)
        self.sink, self.show_tools = sink, show_tools
        self._wrote = self._gap = False

    def text(self, delta: str) -> None:
        if self._gap and self._wrote:
            delta = "\n\n" + delta.lstrip("\n")
        self._gap, self._wrote = False, True
        self.sink.put_nowait(delta)

    def tool_call(self, call: ToolCall) -> None:
        super().tool_call(call)
        if self.show_tools:
            what = " ".join(str(call.arguments.get("command") or call.arguments.get("path")
                                or "").split())[:200]
            self.sink.put_nowait(("\n\n" if self._wrote else "") + f"`▸ {call.name} {what}`")
            self._wrote = True
        self._gap = True

    def tool_result(self, call: ToolCall, result: Message) -> None:
        self._gap = True


def router(bridge: Bridge) -> APIRouter:
    api = APIRouter(prefix="/v1")

    def auth(request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), bridge.secrets.token):
            raise unauthorized(bearer=True)

    @api.get("/models", summary="The models this agent answers as (Bearer token)")
    async def models(request: Request) -> JSONResponse:
        auth(request)
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "agentd"}
            for m in model_ids(bridge.settings())]})

    @api.post("/chat/completions", openapi_extra=chat_schema(),
              summary="Talk to the agent (OpenAI Chat Completions; Bearer token)")
    async def chat(request: Request) -> Any:
        auth(request)
        body = await request.body()
        require_json(request.headers.get("content-type"))
        settings = bridge.settings()
        req = parse_json(body, settings.bridge.max_json_depth)
        check(req)  # the published schema first: what it allows, the rest accepts
        text, history = parse_messages(req.get("messages"))
        sampling = parse_sampling(req)
        check_tools(req)
        model = req.get("model") or AGENT
        if not isinstance(model, str) or model not in model_ids(settings):
            raise ApiError(404, f"unknown model; GET /v1/models lists them ({AGENT} is the "
                           "home's own)", "model_not_found")
        stream, opts = req.get("stream", False), req.get("stream_options") or {}
        if not isinstance(stream, bool) or not isinstance(opts, dict) or req.get("n", 1) != 1:
            raise ApiError(400, "stream must be true/false, stream_options an object, n 1",
                           "invalid_request")
        named = conversation_key(request.headers.get("x-agentd-session"), req.get("user"))
        bridge.check_sender(f"chat:{named or '*'}")  # one bucket for the unnamed ones
        key = named or bridge.conversations.find(history) or new_run_id()
        show = request.headers.get("x-agentd-show-tools", "").lower()
        show_tools = show in ("1", "true", "yes") or (settings.bridge.show_tools and
                                                      show not in ("0", "false", "no"))
        sink: asyncio.Queue[str | None] = asyncio.Queue()
        events = ChatEvents(bridge, f"chat {key}", sink, show_tools and stream)
        turn = TurnRequest(text, bridge.home, f"chat:{key}", sampling=sampling,
                           model=None if model == AGENT else model, session=f"chat-{key}")
        fut = bridge.submit(f"chat {key}", turn, events)
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        headers = {"x-agentd-session": key}

        def answered(sent: str) -> None:
            """The client now holds `sent`: a history ending with it continues `key` (an
            empty answer is not part of a history, as a client sends it back)."""
            said = [fingerprint("assistant", sent)] if sent.strip() else []
            bridge.conversations.record(key, history, [fingerprint("user", text), *said])

        if stream:
            fut.add_done_callback(lambda _: sink.put_nowait(None))
            return StreamingResponse(
                _sse(bridge, fut, sink, cid, created, model, bool(opts.get("include_usage")),
                     answered),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers})
        report = await fut
        status, code, message = _failure(bridge, report)
        if status:
            return JSONResponse(error_body(status, message, code), status,
                                headers={**NO_RETRY, **headers})
        assert report is not None
        _, answer = bridge.answer(report)
        answered(answer)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer,
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_json(report.result.usage), "system_fingerprint": None,
            "agentd": {"run": report.run_id, "session": key, "steps": report.result.steps,
                       "cost": report.cost}}, headers=headers)

    return api


def _failure(bridge: Bridge, report: TurnReport | None) -> tuple[int, str, str]:
    """(HTTP status, code, message) of a turn that did not end well; (0, "", "") if it did."""
    if bridge.closing and report is None:
        return 503, "shutting_down", "the agent is shutting down; retry later"
    if report is None:
        return 502, "turn_not_started", "the agent could not start a turn (see its log)"
    r = report.result
    if r.status == "ok":
        return 0, "", ""
    message = f"the turn ended early ({r.status}): {scrub(r.error or '', bridge.redactor)}"
    return (429 if r.status == "budget" else 502), f"turn_{r.status}", message


async def _sse(bridge: Bridge, fut: asyncio.Future[TurnReport | None],
               sink: asyncio.Queue[str | None], cid: str, created: int, model: str,
               include_usage: bool, answered: Callable[[str], None]) -> AsyncIterator[bytes]:
    """The turn's text as chunks; once it ended well, `answered` gets the whole text sent
    (what the client will send back as the assistant's message)."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                      "model": model, "choices": [{"index": 0, "delta": delta,
                                                   "logprobs": None, "finish_reason": finish}]})

    redactor = StreamRedactor(bridge.redactor, list(bridge.secrets.values.values()))
    sent: list[str] = []
    yield chunk({"role": "assistant", "content": ""})
    while True:
        try:
            delta = await asyncio.wait_for(sink.get(), KEEPALIVE)
        except TimeoutError:
            yield b": waiting\n\n"  # keeps proxies from closing a queued request
            continue
        out = redactor.feed(delta) if delta is not None else redactor.flush()
        if out:
            sent.append(out)
            yield chunk({"content": out})
        if delta is None:
            break
    report = fut.result()
    status, code, message = _failure(bridge, report)
    if status:
        yield _data(error_body(status, message, code))
    else:
        assert report is not None
        answered("".join(sent))
        yield chunk({}, "stop")
        if include_usage:
            yield _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": model, "choices": [],
                         "usage": usage_json(report.result.usage)})
    yield b"data: [DONE]\n\n"


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
