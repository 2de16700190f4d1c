"""The fleet bridge's OpenAI-compatible routes: `POST /v1/chat/completions` with `model` =
`agentd/NAME`, and `GET /v1/models` (Bearer AGENTD_FLEET_TOKEN).

A request becomes a turn on NAME's partition of the queue; the answer is the turn's final
text in the OpenAI shape, or with `stream: true` its text as SSE chunks as the worker
writes it (the turn's "out" stream). `usage` is the turn's ledger rows. The conversation
is the `X-Agentd-Session` header or the `user` field, else the history the client sends
back names it, as in the single-home bridge: a history that is the tail of what a session
of that home exchanged continues it, any other starts a new one (chats.py). Either way
the session (a transcript in the home, carried between workers with it) holds the
history, so only the last user message is new input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets as pysecrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path  # a request's workdir: ignored, a turn runs in a fresh clone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentd.bridge.chat_request import check, check_tools, parse_messages, parse_sampling
from agentd.bridge.http import ApiError, error_body, parse_json, require_json
from agentd.bridge.openai_compat import chat_schema, conversation_key
from agentd.fleet import chats, db, enqueue
from agentd.turn import TurnRequest

if TYPE_CHECKING:
    from agentd.fleet.bridge import Fleet

PREFIX = "agentd/"
KEEPALIVE = 15.0
NO_RETRY = {"x-should-retry": "false"}  # the OpenAI SDKs would otherwise queue it again


def failure(result: dict[str, Any]) -> tuple[int, str, str]:
    """(HTTP status, code, message) of a turn that did not end well; (0, "", "") if it did."""
    status = str(result.get("status"))
    if status == "ok":
        return 0, "", ""
    message = f"the turn ended early ({status}): {str(result.get('error') or '')[:500]}"
    return (429 if status == "budget" else 502), f"turn_{status}", message


def router(fleet: Fleet) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.get("/models", summary="agentd/NAME for each home (Bearer token)")
    async def models(request: Request) -> JSONResponse:
        fleet.auth(request)
        homes = await fleet.query(db.homes)
        return JSONResponse({"object": "list", "data": [
            {"id": PREFIX + h.name, "object": "model", "created": 0, "owned_by": "agentd"}
            for h in homes]})

    @api.post("/chat/completions", openapi_extra=chat_schema(),
              summary="Talk to home NAME as model agentd/NAME (OpenAI Chat Completions; "
              "Bearer token)")
    async def chat(request: Request) -> Any:
        fleet.auth(request)
        body = await request.body()
        require_json(request.headers.get("content-type"))
        req = parse_json(body, fleet.settings.bridge.max_json_depth)
        check(req)
        text, history = parse_messages(req.get("messages"))
        sampling = parse_sampling(req)
        check_tools(req)
        model = req.get("model")
        if not isinstance(model, str) or not model.startswith(PREFIX):
            raise ApiError(404, "unknown model: use agentd/NAME for home NAME (GET /v1/models "
                           "lists them)", "model_not_found")
        stream, opts = req.get("stream", False), req.get("stream_options") or {}
        if not isinstance(stream, bool) or not isinstance(opts, dict) or req.get("n", 1) != 1:
            raise ApiError(400, "stream must be true/false, stream_options an object, n 1",
                           "invalid_request")
        try:
            home = await fleet.home(model[len(PREFIX):])
        except ApiError:
            raise ApiError(404, "unknown model: no such home (GET /v1/models lists them)",
                           "model_not_found") from None
        named = conversation_key(request.headers.get("x-agentd-session"), req.get("user"))
        fleet.check_sender(f"chat:{home.name}:{named or '*'}")
        key = (named or await fleet.query(lambda c: chats.find(c, home.name, history))
               or pysecrets.token_hex(8))
        turn = TurnRequest(text, Path("."), f"chat:{key}", sampling=sampling,
                           session=f"chat-{key}")
        wid = enqueue.run_id(home.name)
        await fleet.enqueue(home.name, turn, wid)
        fleet.log("chat", f"{home.name}: queued {wid} (session chat-{key})")
        cid, created = f"chatcmpl-{pysecrets.token_hex(12)}", int(time.time())
        headers = {"x-agentd-session": key, "x-agentd-run": wid}

        async def answered(sent: str) -> None:
            """The client now holds `sent`: a history ending with it continues `key`."""
            try:
                await fleet.query(lambda c: chats.record(c, home.name, key, history, text,
                                                         sent))
            except ApiError:  # the database went away: the answer still goes out
                fleet.log.warn("chat", f"{home.name}: session chat-{key} not recorded "
                               "(database unreachable)")

        if stream:
            show = request.headers.get("x-agentd-show-tools", "").lower()
            tools = show in ("1", "true", "yes") or (
                show not in ("0", "false", "no") and await _shows_tools(fleet, home))
            return StreamingResponse(
                _sse(fleet, wid, cid, created, model, bool(opts.get("include_usage")),
                     answered, tools),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers})
        result = await fleet.follow(wid, None)
        status, code, message = failure(result)
        if status:
            return JSONResponse(error_body(status, message, code), status,
                                headers={**NO_RETRY, **headers})
        answer = str(result.get("text") or "")
        await answered(answer)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer,
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": await fleet.usage(wid), "system_fingerprint": None,
            "agentd": {"run": wid, "session": key, "steps": result.get("steps"),
                       "cost": result.get("cost"), "commit": result.get("commit")}},
            headers=headers)

    return api


async def _shows_tools(fleet: Fleet, home: db.HomeRow) -> bool:
    """The home's `[bridge] show_tools` (its agentd.toml, cached per head); off when it
    cannot be read now, rather than refusing the chat."""
    try:
        return bool((await fleet.settings_of(home)).bridge.show_tools)
    except ApiError:
        return False


async def _sse(fleet: Fleet, wid: str, cid: str, created: int, model: str,
               include_usage: bool, answered: Callable[[str], Awaitable[None]],
               show_tools: bool) -> AsyncIterator[bytes]:
    """The turn's text as chunks as the worker writes it (and with `show_tools` a line per
    tool call, the worker's redacted `▸ name what`), then how it ended; once it ended
    well, `answered` gets the whole text sent."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                      "model": model, "choices": [{"index": 0, "delta": delta,
                                                   "logprobs": None, "finish_reason": finish}]})

    sink: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(fleet.follow(wid, sink))
    yield chunk({"role": "assistant", "content": ""})
    sent: list[str] = []
    try:
        while not (task.done() and sink.empty()):
            getter = asyncio.ensure_future(sink.get())
            done, _ = await asyncio.wait({getter, task}, timeout=KEEPALIVE,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if not done:
                    yield b": waiting\n\n"  # keeps proxies from closing a queued request
                continue
            event = getter.result()
            text = str(event.get("text") or "") if event.get("kind") == "text" else ""
            if show_tools and event.get("kind") == "tool" and str(event.get("line")).strip():
                text = "`" + " ".join(str(event["line"]).split())[:200] + "`"
            if text.strip():
                sent.append(("\n\n" if sent else "") + text.strip())
                yield chunk({"content": sent[-1]})
        result = task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    status, code, message = failure(result)
    if status:
        yield _data(error_body(status, message, code))
    else:
        if not sent and str(result.get("text") or "").strip():
            sent.append(str(result["text"]).strip())
            yield chunk({"content": sent[-1]})
        await answered("".join(sent))
        yield chunk({}, "stop")
        if include_usage:
            yield _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": model, "choices": [], "usage": await fleet.usage(wid)})
    yield b"data: [DONE]\n\n"


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
