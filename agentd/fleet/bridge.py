"""`agentd fleet serve`: one HTTP bridge for every home of the fleet, the same bridge a
home had under `agentd serve`.

- `POST /v1/chat/completions`, `GET /v1/models` (Bearer): the OpenAI-compatible routes,
  `model` = `agentd/NAME` (bridge_chat.py).
- `POST /homes/NAME/hooks/HOOK`: Standard Webhooks, signed with the hook's own key
  (AGENTD_FLEET_HOOK_SECRETS) or AGENTD_FLEET_WEBHOOK_SECRET (with neither, 404). The
  home's `[bridge.hooks.HOOK]` (prompt, callback_url) and `[bridge]` caps apply, read from
  its agentd.toml at its recorded head (homeconf.py); a callback_url gets the result
  (callbacks.py). Accepted: 202 and the run's ID. The workflow ID is derived from the hook
  and the delivery's webhook-id, so a redelivery enqueues nothing (DBOS: a workflow ID
  exists once) and answers 200 "duplicate".
- `GET /runs/ID` (Bearer): a run's status and, once done, its result.
- `GET /openapi.json`: the schema, public like /healthz (bridge_schema.py).

The pieces are the single-home bridge's (agentd/bridge): the guard (rate limits, body cap),
the connection caps, Bearer and webhook checks, strict JSON, the chat request's schema and
its error shapes. A client that goes away does not stop its turn: the turn is the fleet's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path  # a request's workdir: ignored, a turn runs in a fresh clone
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentd.bridge.auth import bearer_ok, verify_webhook, webhook_headers
from agentd.bridge.hooks import EVENT_SCHEMA, build_task
from agentd.bridge.http import ApiError, parse_json, require_json, unauthorized
from agentd.bridge.limits import Buckets
from agentd.bridge.secrets import webhook_keys
from agentd.bridge.server import add_error_handlers
from agentd.config import HOOK_NAME, Settings
from agentd.errors import AgentdError
from agentd.fleet import (
    admin,
    bridge_chat,
    bridge_schema,
    bridge_slack,
    bridge_telegram,
    callbacks,
    db,
    enqueue,
    homeconf,
)
from agentd.jobs.log import EventLog
from agentd.turn import TurnRequest

if TYPE_CHECKING:
    import psycopg

MIN_SECRET = 16


def hook_keys(value: str, what: str = "AGENTD_FLEET_WEBHOOK_SECRET") -> list[bytes]:
    """A webhook secret from the environment: the bridge's rule (webhook_keys), refused
    with exit status 1 as the fleet's commands are."""
    return webhook_keys(value, what, 1)


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
        self.sender_buckets = Buckets(b.sender_rate, b.sender_burst)
        self.closing = False
        self.secrets = homeconf.load_secrets(hook_keys)  # per-hook keys, bots of homes
        self.homes = homeconf.HomeSettings(cache, lambda m: log.warn("bridge", m))
        self.tasks: set[asyncio.Task[None]] = set()
        self._http: Any = None  # an httpx2 AsyncClient once a reply is due (post)
        self.dbos = admin.client(url)
        self._conn: psycopg.Connection[Any] | None = admin.connect(url)
        self._lock = threading.Lock()
        fleet = db.settings(self._conn)  # the operator's per-address limits (`fleet set`)
        self.ip_buckets = Buckets(float(fleet["bridge_ip_rate"]),
                                  max(1, int(fleet["bridge_ip_burst"])))
        if self._conn.execute("SELECT to_regclass('agentd_fleet.conversations')"
                              ).fetchone() == (None,):
            self.close()
            raise AgentdError("fleet serve: this fleet's database predates agentd's "
                              "conversation table: run `agentd fleet init` again", 1)

    def limits(self) -> tuple[int, Buckets]:
        return self.settings.bridge.max_body, self.ip_buckets

    def auth(self, request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), self.token):
            raise unauthorized(bearer=True)

    def keys_of(self, home: str, hook: str) -> list[bytes]:
        """The keys a delivery to HOME's HOOK is signed with: its own, else the fleet's."""
        return self.secrets.hooks.get((home, hook)) or self.keys

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
            return (await self.post(to, content=body, headers=headers)).status_code

        self.spawn(callbacks.deliver(lambda w: self.follow(w, None), post,
                                     self.keys_of(home, hook), url, home, hook, wid),
                   f"{home}/{hook}: run {wid}, its callback")

    async def post(self, url: str, **kw: Any) -> Any:
        """POST with the bridge's HTTP client (agentd.bridge's httpx2), made on first use."""
        if self._http is None:
            import httpx2

            self._http = httpx2.AsyncClient(timeout=15.0, follow_redirects=False)
        return await self._http.post(url, **kw)

    def spawn(self, send: Awaitable[str], what: str) -> None:
        """Run a reply (`send`: waits for its turn, sends, says how it went) in the
        background; its outcome is logged as `what: outcome`."""
        async def run() -> None:
            try:
                outcome = await send
            except Exception as e:  # the run could not be followed (the database): say so
                outcome = f"not sent ({type(e).__name__})"
            self.log("bridge", f"{what}: {outcome}")

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

    @staticmethod
    def run_id(home: str, key: str) -> str:
        """The workflow ID of a delivery, from what names it (a hook and its webhook-id,
        a chat platform's update id): a redelivery gets the same ID, which DBOS runs once."""
        return f"run:{home}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    async def exists(self, wid: str) -> bool:
        return bool(await asyncio.to_thread(self.dbos.list_workflows, workflow_ids=[wid],
                                            load_input=False, load_output=False))

    async def accept(self, home: str, key: str, sender: str, req: TurnRequest
                     ) -> tuple[str, bool]:
        """Queue a turn nobody waits for, once per delivery (`key`, see run_id): (its
        workflow ID, True), or (that ID, False) for a delivery already seen. Raises 429
        for a sender over its rate. The fleet's agentd.bridge.core Bridge.accept."""
        wid = self.run_id(home, key)
        if await self.exists(wid):
            return wid, False
        self.check_sender(sender)
        await self.enqueue(home, req, wid)
        return wid, True

    async def chat_request(self, name: str, request: Request, body: bytes,
                           platform: Literal["telegram", "slack"]
                           ) -> tuple[db.HomeRow, Any, dict[str, Any]]:
        """For a Telegram or Slack delivery whose signature is checked: the home, its
        `[bridge]` table and the body's JSON; 404 while its [bridge.PLATFORM] is off."""
        home = await self.home(name)
        require_json(request.headers.get("content-type"))
        b = (await self.settings_of(home)).bridge
        if not getattr(b, platform).enabled:
            raise ApiError(404, "not found", "not_found")
        return home, b, parse_json(body, b.max_json_depth)

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


def create_app(fleet: Fleet) -> Any:
    """The ASGI app, inside the single-home bridge's guard (limits.Guard)."""
    from agentd.bridge.limits import Guard

    app = FastAPI(title="agentd fleet bridge", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")  # no /docs, as in the single-home bridge
    built: list[dict[str, Any]] = []

    def schema() -> dict[str, Any]:
        """FastAPI's document completed with the real answers (bridge_schema.py), once."""
        if not built:
            built.append(bridge_schema.complete(FastAPI.openapi(app)))
        return built[0]

    app.openapi = schema  # type: ignore[method-assign]

    add_error_handlers(app)  # the single-home bridge's: one error body
    app.include_router(bridge_chat.router(fleet))
    app.include_router(bridge_telegram.router(fleet))
    app.include_router(bridge_slack.router(fleet))

    @app.get("/healthz", summary="Liveness (no auth, no details)")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/homes/{name}/hooks/{hook}", status_code=202, openapi_extra=EVENT_SCHEMA,
              summary="A signed event for home NAME's hook (Standard Webhooks: webhook-id, "
              "webhook-timestamp, webhook-signature headers)")
    async def webhook(name: str, hook: str, request: Request) -> JSONResponse:
        keys = fleet.keys_of(name, hook)
        if not keys or not HOOK_NAME.fullmatch(hook) or not db.NAME.match(name):
            raise ApiError(404, "no such hook", "not_found")
        body = await request.body()
        if verify_webhook(keys, request.headers, body):
            raise unauthorized()
        home = await fleet.home(name)
        require_json(request.headers.get("content-type"))
        msg_id = webhook_headers(request.headers)[0]
        wid = fleet.run_id(home.name, f"{hook}\0{msg_id}")
        if await fleet.exists(wid):  # a redelivery is the same workflow: enqueued once
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

    @app.get("/runs/{wid}", summary="A run's status and result (Bearer token)")
    async def run(wid: str, request: Request) -> JSONResponse:
        fleet.auth(request)
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

    guard = Guard(app, fleet.limits, lambda m: fleet.log.error("bridge", m),
                  lambda: fleet.closing)
    guard.app = app  # type: ignore[attr-defined]  # for schema tools: guard.app.openapi()
    return guard


