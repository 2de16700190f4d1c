"""`POST /v1/chat/completions` and `GET /v1/models`: the agent as an OpenAI-compatible
model, so any OpenAI client or chat UI can talk to it. Bearer token.

Each conversation key (the `X-Agentd-Session` header, else the request's `user` field,
else "default") has its own transcript, `.agentd/sessions/chat-<key>.jsonl`, and turns with
trigger `chat:<key>`; every conversation shares the home's memory and files. The
transcript holds the history, so only the last user message of a request is new input:
the earlier messages a client sends back are not read again (a client cannot rewrite what
the agent was told). Requests of one key, like all turns of the home, run one at a time.

The reply is the agent's final answer; `usage` counts every token the turn spent (all its
steps). Streaming sends the agent's text as it is written (with the text it writes between
tool steps; `show_tools` or `X-Agentd-Show-Tools: 1` adds a line per tool call), a last
chunk with usage when `stream_options.include_usage` is set, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentd.bridge import chat_request
from agentd.bridge.auth import bearer_ok
from agentd.bridge.core import Bridge
from agentd.bridge.http import ApiError, error_body, parse_json, require_json, unauthorized
from agentd.bridge.secrets import StreamRedactor, scrub
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
        "application/json": {"schema": chat_request.CHAT_REQUEST}}}}


def conversation_key(header: str | None, user: Any) -> str:
    """A safe file-name id for the conversation; distinct inputs stay distinct."""
    raw = (header or (user if isinstance(user, str) else "") or "").strip()
    if not raw:
        return "default"
    if KEY.fullmatch(raw):
        return raw
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:40] or "key"
    return f"{safe}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def model_ids(settings: Settings) -> list[str]:
    """"agentd" (the home's model and fallbacks) and the models the home is set up with."""
    ids = [AGENT, settings.model or "", *settings.fallbacks, settings.budget_fallback or "",
           settings.heartbeat.model]
    return list(dict.fromkeys(i for i in ids if i))


def last_user_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages or len(messages) > 10_000:
        raise ApiError(400, "messages must be a non-empty list", "invalid_messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise ApiError(400, "each message must be an object with a role", "invalid_messages")
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise ApiError(400, "no user message: the last user message is the agent's input",
                       "invalid_messages")
    content = users[-1].get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text"
                   and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, "only text content is supported", "unsupported_content")
        content = "\n".join(p["text"] for p in content)
    if not isinstance(content, str) or not content.strip():
        raise ApiError(400, "the last user message has no text", "invalid_messages")
    return content


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
        chat_request.check(req)
        text = last_user_text(req.get("messages"))
        model = req.get("model") or AGENT
        if not isinstance(model, str) or model not in model_ids(settings):
            raise ApiError(404, f"unknown model; GET /v1/models lists them ({AGENT} is the "
                           "home's own)", "model_not_found")
        stream, opts = req.get("stream", False), req.get("stream_options") or {}
        if not isinstance(stream, bool) or not isinstance(opts, dict) or req.get("n", 1) != 1:
            raise ApiError(400, "stream must be true/false, stream_options an object, n 1",
                           "invalid_request")
        key = conversation_key(request.headers.get("x-agentd-session"), req.get("user"))
        bridge.check_sender(f"chat:{key}")
        show = request.headers.get("x-agentd-show-tools", "").lower()
        show_tools = show in ("1", "true", "yes") or (settings.bridge.show_tools and
                                                      show not in ("0", "false", "no"))
        sink: asyncio.Queue[str | None] = asyncio.Queue()
        events = ChatEvents(bridge, f"chat {key}", sink, show_tools and stream)
        turn = TurnRequest(text, bridge.home, f"chat:{key}",
                           model=None if model == AGENT else model, session=f"chat-{key}")
        fut = bridge.submit(f"chat {key}", turn, events)
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if stream:
            fut.add_done_callback(lambda _: sink.put_nowait(None))
            return StreamingResponse(
                _sse(bridge, fut, sink, cid, created, model, bool(opts.get("include_usage"))),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        report = await fut
        status, code, message = _failure(bridge, report)
        if status:
            return JSONResponse(error_body(status, message, code), status, headers=NO_RETRY)
        assert report is not None
        _, answer = bridge.answer(report)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer,
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_json(report.result.usage), "system_fingerprint": None,
            "agentd": {"run": report.run_id, "session": key, "steps": report.result.steps,
                       "cost": report.cost}})

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
               include_usage: bool) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                      "model": model, "choices": [{"index": 0, "delta": delta,
                                                   "logprobs": None, "finish_reason": finish}]})

    redactor = StreamRedactor(bridge.redactor, list(bridge.secrets.values.values()))
    yield chunk({"role": "assistant", "content": ""})
    while True:
        try:
            delta = await asyncio.wait_for(sink.get(), KEEPALIVE)
        except TimeoutError:
            yield b": waiting\n\n"  # keeps proxies from closing a queued request
            continue
        out = redactor.feed(delta) if delta is not None else redactor.flush()
        if out:
            yield chunk({"content": out})
        if delta is None:
            break
    report = fut.result()
    status, code, message = _failure(bridge, report)
    if status:
        yield _data(error_body(status, message, code))
    else:
        assert report is not None
        yield chunk({}, "stop")
        if include_usage:
            yield _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": model, "choices": [],
                         "usage": usage_json(report.result.usage)})
    yield b"data: [DONE]\n\n"


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
