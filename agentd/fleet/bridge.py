"""`agentd fleet serve`: one HTTP bridge for every home of the fleet.

- `POST /v1/chat/completions` (Bearer): OpenAI-compatible, `model` = `agentd/NAME`. The
  request becomes a turn on NAME's partition of the queue; the answer is the turn's final
  text in the OpenAI shape, or with `stream: true` its text as SSE chunks as the worker
  writes it (the turn's "out" stream). `usage` is the turn's ledger rows. The conversation
  is the `X-Agentd-Session` header or the `user` field (a chat session of that name in the
  home, carried between workers with the home), else a new one per request; only the last
  user message is new input, as in the single-home bridge.
- `GET /v1/models` (Bearer): `agentd/NAME` for each home.
- `POST /homes/NAME/hooks/HOOK`: Standard Webhooks, signed with AGENTD_FLEET_WEBHOOK_SECRET
  (without it, hooks are off: 404). Accepted: 202 and the run's ID. The workflow ID is
  derived from the hook and the delivery's webhook-id, so a redelivery enqueues nothing
  (DBOS: a workflow ID exists once) and answers 200 "duplicate".
- `GET /runs/ID` (Bearer): a run's status and, once done, its result.

The pieces are the single-home bridge's (agentd/bridge): the guard (rate limits, body cap),
the connection caps, Bearer and webhook checks, strict JSON, the chat request's schema and
its error shapes. A client that goes away does not stop its turn: the turn is the fleet's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets as pysecrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path  # a request's workdir: ignored, a turn runs in a fresh clone
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentd.bridge.auth import bearer_ok, decode_secret, verify_webhook, webhook_headers
from agentd.bridge.chat_request import check, check_tools, parse_messages, parse_sampling
from agentd.bridge.hooks import build_task
from agentd.bridge.http import ApiError, error_body, parse_json, require_json, unauthorized
from agentd.bridge.limits import Buckets
from agentd.bridge.openai_compat import conversation_key
from agentd.bridge.server import add_error_handlers
from agentd.config import HOOK_NAME, Settings
from agentd.errors import AgentdError
from agentd.fleet import admin, callbacks, db, enqueue, homeconf
from agentd.jobs.log import EventLog
from agentd.turn import TurnRequest

if TYPE_CHECKING:
    import psycopg

PREFIX = "agentd/"
KEEPALIVE = 15.0
NO_RETRY = {"x-should-retry": "false"}  # the OpenAI SDKs would otherwise queue it again
MIN_SECRET = 16


def hook_keys(value: str, what: str = "AGENTD_FLEET_WEBHOOK_SECRET") -> list[bytes]:
    """A webhook secret: one or more (whsec_… or raw), space-separated while rotating."""
    keys = []
    for part in value.split():
        try:
            key = decode_secret(part)
        except ValueError:
            raise AgentdError(f"{what}: a whsec_ secret must be base64 after the prefix",
                              1) from None
        if len(key) < MIN_SECRET:
            raise AgentdError(f"{what} is too short: use at least {MIN_SECRET} bytes", 1)
        keys.append(key)
    return keys


class Fleet:
    """What the endpoints share: the database (one psycopg connection, used from worker
    threads one at a time, reopened after a failure), the DBOS client, the limits."""

    def __init__(self, url: str, token: str, keys: list[bytes], log: EventLog, cache: Path):
        if len(token) < MIN_SECRET or any(c.isspace() for c in token):
            raise AgentdError("fleet serve: set AGENTD_FLEET_TOKEN to 16+ characters without "
                              "spaces (e.g. `openssl rand -hex 32`); it guards /v1 and /runs", 1)
        self.url, self.token, self.keys, self.log = url, token, keys, log
        self.settings = Settings()  # the bridge's defaults: body cap, rates, timeouts
        b = self.settings.bridge
        self.ip_buckets = Buckets(b.ip_rate, b.ip_burst)
        self.sender_buckets = Buckets(b.sender_rate, b.sender_burst)
        self.closing = False
        self.hook_keys = homeconf.load_secrets(hook_keys)  # (home, hook) -> its own keys
        self.homes = homeconf.HomeSettings(cache, lambda m: log.warn("bridge", m))
        self.tasks: set[asyncio.Task[None]] = set()
        self._http: Any = None  # an httpx2 AsyncClient (agentd.bridge's) once a callback is due
        self.dbos = admin.client(url)
        self._conn: psycopg.Connection[Any] | None = admin.connect(url)
        self._lock = threading.Lock()

    def limits(self) -> tuple[int, Buckets]:
        return self.settings.bridge.max_body, self.ip_buckets

    def keys_of(self, home: str, hook: str) -> list[bytes]:
        """The keys a delivery to HOME's HOOK is signed with: its own, else the fleet's."""
        return self.hook_keys.get((home, hook)) or self.keys

    async def settings_of(self, home: db.HomeRow) -> Any:
        try:
            return await asyncio.to_thread(self.homes.get, home)
        except AgentdError as e:
            self.log.warn("bridge", f"{home.name}: cannot read its agentd.toml: {e}")
            raise ApiError(503, "cannot read this home's settings now; retry later",
                           "home_unreachable", {"Retry-After": "30"}) from None

    def callback(self, home: str, hook: str, wid: str, url: str) -> None:
        """Send the turn's result to the hook's callback_url once it ends (callbacks.py)."""
        async def post(to: str, body: bytes, headers: dict[str, str]) -> int:
            if self._http is None:
                import httpx2

                self._http = httpx2.AsyncClient(timeout=15.0, follow_redirects=False)
            return (await self._http.post(to, content=body, headers=headers)).status_code

        async def run() -> None:
            outcome = await callbacks.deliver(lambda w: self.follow(w, None), post,
                                              self.keys_of(home, hook), url, home, hook, wid)
            self.log("hook", f"{home}/{hook}: run {wid} result sent to its callback: "
                     f"{outcome}")

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        """At the end of serving: callbacks still waiting are dropped (see callbacks.py)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    def close(self) -> None:
        self.dbos.destroy()
        if self._conn is not None:
            self._conn.close()

    async def query(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        def run() -> Any:
            with self._lock:
                if self._conn is None or self._conn.closed:
                    self._conn = admin.connect(self.url)
                try:
                    return fn(self._conn)
                except Exception:
                    self._conn.close()
                    raise
        try:
            return await asyncio.to_thread(run)
        except AgentdError:
            raise ApiError(503, "the fleet database is unreachable; retry later",
                           "database_unreachable", {"Retry-After": "5"}) from None

    async def home(self, name: str) -> db.HomeRow:
        found = await self.query(lambda c: db.homes(c, name)) if db.NAME.match(name) else []
        if not found:
            raise ApiError(404, "no such home", "not_found")
        return found[0]

    def check_sender(self, key: str) -> None:
        wait = self.sender_buckets.take(key)
        if wait:
            raise ApiError(429, "too many requests from this sender; slow down",
                           "rate_limited", {"Retry-After": str(max(1, int(wait + 0.999)))})

    async def enqueue(self, home: str, req: TurnRequest, wid: str) -> None:
        await asyncio.to_thread(enqueue.via_client, self.dbos, home, req.to_json(), wid)

    async def follow(self, wid: str, sink: asyncio.Queue[dict[str, Any]] | None
                     ) -> dict[str, Any]:
        """The turn's result; its other events go to `sink` as they come."""
        async for event in self.dbos.read_stream_async(wid, "out", polling_interval_sec=0.1):
            if not isinstance(event, dict):
                continue
            if event.get("kind") == "end":
                return {k: v for k, v in event.items() if k != "kind"}
            if sink is not None:
                sink.put_nowait(event)
        handle = await self.dbos.retrieve_workflow_async(wid)
        return admin.ended(await handle.get_status())

    async def usage(self, wid: str) -> dict[str, Any]:
        row = await self.query(lambda c: c.execute(
            "SELECT coalesce(sum(input_tokens + cache_read + cache_write), 0), "
            "coalesce(sum(output_tokens), 0), coalesce(sum(cache_read), 0) "
            "FROM agentd_fleet.usage WHERE workflow_id = %s", (wid,)).fetchone())
        prompt, output, cached = (int(v) for v in row)
        return {"prompt_tokens": prompt, "completion_tokens": output,
                "total_tokens": prompt + output,
                "prompt_tokens_details": {"cached_tokens": cached}}


def failure(result: dict[str, Any]) -> tuple[int, str, str]:
    """(HTTP status, code, message) of a turn that did not end well; (0, "", "") if it did."""
    status = str(result.get("status"))
    if status == "ok":
        return 0, "", ""
    message = f"the turn ended early ({status}): {str(result.get('error') or '')[:500]}"
    return (429 if status == "budget" else 502), f"turn_{status}", message


def create_app(fleet: Fleet) -> Any:
    """The ASGI app, inside the single-home bridge's guard (limits.Guard)."""
    from agentd.bridge.limits import Guard

    app = FastAPI(title="agentd fleet bridge", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)

    add_error_handlers(app)  # the single-home bridge's: one error body

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    def auth(request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), fleet.token):
            raise unauthorized(bearer=True)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        auth(request)
        homes = await fleet.query(db.homes)
        return JSONResponse({"object": "list", "data": [
            {"id": PREFIX + h.name, "object": "model", "created": 0, "owned_by": "agentd"}
            for h in homes]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        auth(request)
        body = await request.body()
        require_json(request.headers.get("content-type"))
        req = parse_json(body, fleet.settings.bridge.max_json_depth)
        check(req)
        text, _history = parse_messages(req.get("messages"))
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
        key = named or pysecrets.token_hex(8)
        turn = TurnRequest(text, Path("."), f"chat:{key}", sampling=sampling,
                           session=f"chat-{key}")
        wid = enqueue.run_id(home.name)
        await fleet.enqueue(home.name, turn, wid)
        fleet.log("chat", f"{home.name}: queued {wid} (session chat-{key})")
        cid, created = f"chatcmpl-{pysecrets.token_hex(12)}", int(time.time())
        headers = {"x-agentd-session": key, "x-agentd-run": wid}
        if stream:
            return StreamingResponse(
                _sse(fleet, wid, cid, created, model, bool(opts.get("include_usage"))),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers})
        result = await fleet.follow(wid, None)
        status, code, message = failure(result)
        if status:
            return JSONResponse(error_body(status, message, code), status,
                                headers={**NO_RETRY, **headers})
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": str(result.get("text") or ""),
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": await fleet.usage(wid), "system_fingerprint": None,
            "agentd": {"run": wid, "session": key, "steps": result.get("steps"),
                       "cost": result.get("cost"), "commit": result.get("commit")}},
            headers=headers)

    @app.post("/homes/{name}/hooks/{hook}", status_code=202)
    async def webhook(name: str, hook: str, request: Request) -> JSONResponse:
        keys = fleet.keys_of(name, hook)
        if not keys or not HOOK_NAME.fullmatch(hook):
            raise ApiError(404, "no such hook", "not_found")
        body = await request.body()
        why = verify_webhook(keys, request.headers, body)
        if why:
            fleet.log.warn("hook", f"{name[:64]}/{hook}: refused a delivery ({why})")
            raise unauthorized()
        home = await fleet.home(name)
        require_json(request.headers.get("content-type"))
        msg_id = webhook_headers(request.headers)[0]
        digest = hashlib.sha256(f"{hook}\0{msg_id}".encode()).hexdigest()[:32]
        wid = f"run:{home.name}:{digest}"  # a redelivery is the same workflow: enqueued once
        if await asyncio.to_thread(fleet.dbos.list_workflows, workflow_ids=[wid],
                                   load_input=False, load_output=False):
            return JSONResponse({"id": wid, "status": "duplicate"}, 200)
        fleet.check_sender(f"hook:{home.name}:{hook}")
        b = (await fleet.settings_of(home)).bridge  # the home's own [bridge] table
        event = parse_json(body, b.max_json_depth, want=None)
        prompt, callback_url = homeconf.hook_settings_of(b, hook)
        task = build_task(hook, msg_id, event, prompt, b.max_event_chars)
        turn = TurnRequest(task, Path("."), f"webhook:{hook}", profile="untrusted",
                           title=f"Webhook: {hook}")
        await fleet.enqueue(home.name, turn, wid)
        fleet.log("hook", f"{home.name}/{hook}: accepted {msg_id[:64]} as {wid}")
        if callback_url:
            fleet.callback(home.name, hook, wid, callback_url)
        return JSONResponse({"id": wid, "status": "queued", "url": f"/runs/{wid}"}, 202)

    @app.get("/runs/{wid}")
    async def run(wid: str, request: Request) -> JSONResponse:
        auth(request)
        parts = wid.split(":")
        if len(wid) > 200 or len(parts) < 3 or not db.NAME.match(parts[1]):
            raise ApiError(404, "no such run", "not_found")
        found = await asyncio.to_thread(fleet.dbos.list_workflows, workflow_ids=[wid],
                                        load_input=False, load_output=True)
        if not found:
            raise ApiError(404, "no such run", "not_found")
        s = found[0]
        out: dict[str, Any] = {"id": wid, "home": s.queue_partition_key,
                               "status": s.status.lower()}
        if s.status in ("SUCCESS", "ERROR", "CANCELLED"):
            out["result"] = admin.ended(s)
        return JSONResponse(json.loads(json.dumps(out, default=str)))

    return Guard(app, fleet.limits, lambda m: fleet.log.error("bridge", m),
                 lambda: fleet.closing)


async def _sse(fleet: Fleet, wid: str, cid: str, created: int, model: str,
               include_usage: bool) -> AsyncIterator[bytes]:
    """The turn's text as chunks as the worker writes it, then how it ended."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                      "model": model, "choices": [{"index": 0, "delta": delta,
                                                   "logprobs": None, "finish_reason": finish}]})

    sink: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(fleet.follow(wid, sink))
    yield chunk({"role": "assistant", "content": ""})
    wrote = False
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
            if text.strip():
                yield chunk({"content": ("\n\n" if wrote else "") + text.strip()})
                wrote = True
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
        if not wrote and str(result.get("text") or "").strip():
            yield chunk({"content": str(result["text"]).strip()})
        yield chunk({}, "stop")
        if include_usage:
            yield _data({"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": model, "choices": [], "usage": await fleet.usage(wid)})
    yield b"data: [DONE]\n\n"


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
