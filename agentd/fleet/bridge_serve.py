"""Serving the fleet bridge (agentd/fleet/bridge.py): uvicorn on a socket bound here (so
"address in use" is one line and port 0 picks a free port), with the single-home bridge's
connection caps and head deadline (agentd/bridge/connections.py), its logging quiet, and
one `listening on URL` line once it accepts connections. SIGTERM or Ctrl-C stops it:
requests in flight get a few seconds; their turns go on in the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from agentd.bridge.connections import Connections, protocol_class, raise_fd_limit
from agentd.bridge.secrets import is_loopback
from agentd.bridge.server import GRACE, bind_socket, quiet_uvicorn
from agentd.errors import AgentdError
from agentd.fleet.bridge import Fleet, create_app, hook_keys
from agentd.jobs.log import EventLog


def cache_dir() -> Path:
    """Where the bridge keeps its mirrors of the homes (for their agentd.toml):
    $XDG_CACHE_HOME/agentd/fleet-serve, apart from a worker's cache on the same machine."""
    folder = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
              / "agentd" / "fleet-serve").expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AgentdError(f"fleet serve: cannot use {folder}: {e.strerror or e}", 1) from None
    return folder.resolve()


def main(db_url: str, host: str, port: int, log: EventLog) -> int:
    """Run until SIGTERM or SIGINT; the exit status."""
    import uvicorn

    class Server(uvicorn.Server):
        """Stopped by our signal handlers: uvicorn's own would raise the signal again
        once stopped, ending the process by the signal instead of with status 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def stop(self) -> None:
            self.should_exit = True

    fleet = Fleet(db_url, os.environ.get("AGENTD_FLEET_TOKEN", "").strip(),
                  hook_keys(os.environ.get("AGENTD_FLEET_WEBHOOK_SECRET", "")), log,
                  cache_dir())
    try:
        b = fleet.settings.bridge
        total, warning = raise_fd_limit(b.max_connections)
        if warning:
            log.warn("bridge", warning)
        connections = Connections(lambda: fleet.settings, total,
                                  lambda key, msg: log.warn("bridge", msg))
        sock = bind_socket(host, port)
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(fleet), lifespan="off", log_config=None, access_log=False,
            server_header=False, http=protocol_class(connections), ws="none",
            timeout_keep_alive=5, timeout_graceful_shutdown=GRACE, limit_concurrency=None)
        quiet_uvicorn(log)
        server = Server(config)
        if not is_loopback(host):
            log.warn("bridge", f"listening beyond this machine ({host}): put a TLS proxy in "
                     "front, tokens travel in the clear otherwise")
        if not (fleet.keys or fleet.secrets.hooks):
            log("bridge", "webhooks are off: no AGENTD_FLEET_WEBHOOK_SECRET or "
                "AGENTD_FLEET_HOOK_SECRETS")
        url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, server.stop)
            task = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started and not task.done():
                await asyncio.sleep(0.02)
            if server.started:
                log("bridge", f"listening on {url} (chat /v1, hooks /homes/NAME/hooks/HOOK)",
                    port=bound)
            try:
                await task
            finally:
                await fleet.drain()

        asyncio.run(serve())
    finally:
        fleet.closing = True
        fleet.close()
    log("bridge", "stopped")
    return 0


