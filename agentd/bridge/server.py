"""The FastAPI app, and uvicorn serving it inside the caller's event loop.

One loop: the daemon (with `[bridge] enabled = true`, or as `agentd serve`, which is the
daemon with heartbeat, cron and inbox off) starts it with `start_bridge` in its asyncio
loop, next to the queue's worker; the daemon owns the signals (uvicorn's handlers are not
installed), stops the server, and closes it once the running turn is done. The socket is
bound here, so "address in use" is one clear line, and port 0 picks a free port (tests).
uvicorn's own logging is off: one line per event goes through the daemon's EventLog, and no
request header (tokens) is ever logged. Below HTTP, uvicorn runs our subclass of its h11
protocol (connections.py): a deadline for request heads and caps on connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from agentd.bridge import adapters, hooks, openai_compat, openapi
from agentd.bridge.connections import Connections, protocol_class, raise_fd_limit
from agentd.bridge.core import Bridge
from agentd.bridge.http import ApiError, error_body
from agentd.bridge.limits import Guard
from agentd.bridge.secrets import is_loopback, load
from agentd.errors import AgentdError
from agentd.jobs.log import EventLog

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.jobs.queue import TurnQueue

GRACE = 5  # seconds in-flight requests get when the server stops


def add_error_handlers(app: FastAPI) -> None:
    """Every error as the one body (agentd/bridge/http.py): ours, Starlette's 404/405,
    a body FastAPI could not read, and anything unforeseen (a 500 that says nothing)."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message, e.code, e.kind), e.status,
                            headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        message = {404: "not found", 405: "method not allowed"}.get(e.status_code, "error")
        return JSONResponse(error_body(e.status_code, message), e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(400, "invalid request", "invalid_request"), 400)

    @app.exception_handler(Exception)
    async def crashed(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(500, "internal error", "internal"), 500)


def create_app(bridge: Bridge) -> Any:
    """The ASGI app: the guard (rate limit per address, body cap, last-resort 500) around
    FastAPI. The FastAPI app is `.app`; its lifespan starts the bridge, for hosts that run
    lifespans (in-process test clients); BridgeServer starts it itself."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        yield

    app = FastAPI(title="agentd bridge", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", lifespan=lifespan)
    built: list[dict[str, Any]] = []

    def schema() -> dict[str, Any]:
        """FastAPI's document completed with the real answers (openapi.py), built once."""
        if not built:
            built.append(openapi.complete(FastAPI.openapi(app)))
        return built[0]

    app.openapi = schema  # type: ignore[method-assign]

    add_error_handlers(app)

    @app.get("/healthz", summary="Liveness (no auth, no details)")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(openai_compat.router(bridge))
    app.include_router(hooks.router(bridge))
    app.include_router(adapters.router(bridge))
    bridge.deliverers.update(callback=hooks.deliver_callback,
                             telegram=adapters.deliver_telegram, slack=adapters.deliver_slack)
    guard = Guard(app, bridge.limits, lambda m: bridge.log.error("bridge", m),
                  lambda: bridge.closing)
    guard.app = app  # type: ignore[attr-defined]  # for schema tools: guard.app.openapi()
    return guard


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        raise AgentdError(f"bridge: cannot listen on {host}:{port} ({e.strerror or e}); "
                          "is another agentd serving there? ([bridge] port, --port)") from None
    sock.set_inheritable(False)
    return sock


class BridgeServer:
    """uvicorn in the running loop. `start` binds and returns once listening."""

    def __init__(self, bridge: Bridge, host: str, port: int):
        self.bridge, self.host, self.port = bridge, host, port
        self.task: asyncio.Task[None] | None = None
        self.server: Any = None
        self.connections: Connections | None = None

    async def start(self) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            """The host process owns the signals; idle, it wakes once a second."""

            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

            wake = asyncio.Event()

            async def main_loop(self) -> None:
                counter = 0
                while not await self.on_tick(counter):
                    counter = (counter + 10) % 864000  # on_tick refreshes Date every 10
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), 1.0)

        b = self.bridge.settings().bridge
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.bridge), lifespan="off", log_config=None, access_log=False,
            server_header=False, http=self._protocol(), ws="none", timeout_keep_alive=5,
            timeout_graceful_shutdown=GRACE, limit_concurrency=None,  # see connections.py
            proxy_headers=bool(b.trusted_proxies),
            forwarded_allow_ips=",".join(b.trusted_proxies) or None)
        quiet_uvicorn(self.bridge.log)
        await self.bridge.start()
        self.server = Server(config)
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise AgentdError("bridge: the HTTP server did not start")
            await asyncio.sleep(0.01)

    @property
    def url(self) -> str:
        """Where it listens (the port chosen once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _protocol(self) -> type:
        """uvicorn's h11 protocol with the head deadline and connection caps, sized to
        the file descriptors the process may open."""
        bridge = self.bridge
        total, warning = raise_fd_limit(bridge.settings().bridge.max_connections)
        if warning:
            bridge.log.warn("bridge", warning)
        self.connections = Connections(bridge.settings, total,
                                       lambda key, msg: bridge.warn("bridge", key, msg))
        return protocol_class(self.connections)

    async def stop(self) -> None:
        """Stop accepting; a running bridge turn's client gets its answer, then requests
        in flight get GRACE seconds. The queue's worker (the host's) ends afterwards; then
        `close`. (A second signal cancels the turn, which ends the wait.)"""
        self.bridge.stop()
        while (job := self.bridge.queue.running) is not None and job.key.startswith("bridge:"):
            await asyncio.sleep(0.05)  # else uvicorn cuts a chat whose turn outlasts GRACE
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            self.server.wake.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, GRACE + 5)

    async def close(self) -> None:
        """After the queue's worker: the HTTP client (deliveries), the stores, the lock."""
        await self.bridge.close()
        self.bridge.log("bridge", "stopped")


def quiet_uvicorn(log: EventLog) -> None:
    """uvicorn's loggers: errors as one line through our log, nothing else."""
    import logging

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.error("bridge", f"http: {record.getMessage()[:200]}")

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [Handler(logging.ERROR)]
        logger.propagate = False


def describe(server: BridgeServer) -> str:
    b, s = server.bridge.settings().bridge, server.bridge.secrets
    parts = ["chat (/v1)"]
    if s.webhook or s.hooks:
        parts.append("hooks")
    if b.telegram.enabled:
        parts.append("telegram")
    if b.slack.enabled:
        parts.append("slack")
    return f"listening on {server.url} ({', '.join(parts)})"


async def start_bridge(home: Path, settings: Callable[[], Settings], queue: TurnQueue,
                       log: EventLog, port: int | None = None) -> BridgeServer:
    """Start the bridge in the running loop, on `queue`. AgentdError when it must not
    start (no token, a weak one, the port taken), saying why in one line."""
    current = settings()
    secrets = load(home, current)
    for w in secrets.warnings:
        log.warn("bridge", w)
    b = current.bridge
    bridge = Bridge(home, settings, queue, log, secrets)
    server = BridgeServer(bridge, b.host, b.port if port is None else port)
    try:
        await server.start()
    except BaseException:
        await bridge.close()
        raise
    if not is_loopback(b.host):
        log.warn("bridge", f"listening beyond this machine ({b.host}): put a TLS proxy in "
                 "front, tokens travel in the clear otherwise")
    if not (secrets.webhook or secrets.hooks):
        log("bridge", "webhooks are off: no AGENTD_WEBHOOK_SECRET or [bridge] secret_file")
    log("bridge", describe(server), port=server.port)
    return server
