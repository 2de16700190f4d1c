"""Helpers for the bridge tests: the bridge served by real uvicorn on loopback (port 0),
in a thread of the test process with its own queue (`agentd serve`'s code path), signing
helpers, and fake Telegram and Slack API servers on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from daemonkit import configure, wait_for

from agentd.bridge.auth import sign, slack_sign
from agentd.jobs.log import EventLog

if TYPE_CHECKING:
    from agentd.bridge.server import BridgeServer

TOKEN = "test-bridge-token-0123456789abcdef"
SECRET_BYTES = b"webhook-secret-bytes-0123456789"
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()
TG_BOT = "123456:telegram-bot-token-ABCDEFGHIJ"
TG_SECRET = "telegram-secret-token-0123456789"
SLACK_SIGNING = "slack-signing-secret-0123456789ab"
SLACK_BOT = "xoxb-1111-2222-slackbottoken"


def bridge_env(monkeypatch: Any) -> None:
    for var, value in (("AGENTD_BRIDGE_TOKEN", TOKEN), ("AGENTD_WEBHOOK_SECRET", SECRET),
                       ("AGENTD_TELEGRAM_BOT_TOKEN", TG_BOT),
                       ("AGENTD_TELEGRAM_SECRET", TG_SECRET),
                       ("AGENTD_SLACK_SIGNING_SECRET", SLACK_SIGNING),
                       ("AGENTD_SLACK_BOT_TOKEN", SLACK_BOT)):
        monkeypatch.setenv(var, value)


def bridge_home(home: Path, **bridge: Any) -> Path:
    """The fake model, a slow heartbeat, and [bridge] settings (generous limits unless
    told otherwise)."""
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"},
              bridge={"ip_rate": 1000, "ip_burst": 1000, "sender_rate": 1000,
                      "sender_burst": 1000, **bridge})
    return home


def add_table(home: Path, header: str, **values: Any) -> None:
    """Append a TOML table (e.g. "bridge.telegram") to agentd.toml."""
    with (home / "agentd.toml").open("a") as f:
        f.write(f"\n[{header}]\n")
        for k, v in values.items():
            f.write(f"{k} = {json.dumps(v)}\n")


class BridgeHost:
    """`agentd serve` (the daemon with heartbeat, cron and inbox off) in a thread; `url`
    once it listens; `stop()` waits."""

    def __init__(self, home: Path):
        from agentd.daemon.scheduler import Daemon, Parts

        self.home = home
        self.stream = io.StringIO()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        serve = Parts(background=False, bridge=True, port=0)
        self.daemon = Daemon(home, EventLog(self.stream), serve)

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self.daemon.run()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.daemon.worker is not None or self.error is not None, 20,
                 "the bridge")
        if self.error is not None:
            raise self.error

    @property
    def server(self) -> BridgeServer:
        assert self.daemon.bridge is not None
        return self.daemon.bridge

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def bridge(self) -> Any:
        return self.server.bridge

    @property
    def log(self) -> str:
        return self.stream.getvalue()

    def stop(self) -> None:
        if self._loop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self.daemon.stop)
        self.thread.join(30)

    def __enter__(self) -> BridgeHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServeProcess:
    """A real `agentd serve` process on a free loopback port; `log` is its stderr. Stopping
    it (SIGTERM) must end it cleanly. `preexec` runs in the child before agentd starts."""

    def __init__(self, home: Path, preexec: Callable[[], None] | None = None):
        self.log_path = home.parent / "serve.log"
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentd", "serve", "--home", str(home), "--port", "0"],
                stderr=err, stdout=subprocess.DEVNULL, env=dict(os.environ),
                preexec_fn=preexec)
        try:
            found = wait_for(lambda: self.proc.poll() is not None or re.search(
                r"listening on http://127.0.0.1:(\d+)", self.log), 20, "agentd serve")
        except BaseException:
            self.stop()
            raise
        assert self.proc.poll() is None, self.log
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(30)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        code = self.stop()
        if exc[0] is None:
            assert code == 0, self.log


def signed(body: bytes, msg_id: str = "msg_1", key: bytes = SECRET_BYTES,
           ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(key, msg_id, ts, body),
            "content-type": "application/json"}


def slack_headers(body: bytes, ts: int | None = None, retry: int | None = None
                  ) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    h = {"x-slack-request-timestamp": stamp, "content-type": "application/json",
         "x-slack-signature": slack_sign(SLACK_SIGNING, stamp, body)}
    if retry is not None:
        h["x-slack-retry-num"] = str(retry)
    return h


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that writes no access log to stderr."""

    def log_message(self, *args: Any) -> None:
        pass


class LoopbackServer:
    """An HTTP server for `handler` on a free loopback port, served from a daemon thread;
    `close()` (or leaving the `with`) frees the port."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # polled every 10 ms (not the default 0.5 s), so close() returns at once
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeApi(LoopbackServer):
    """A fake Telegram Bot API / Slack Web API on loopback: records every POST and answers
    {"ok": true}. `calls` holds (path, headers, json body); `raw` the bodies as sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], Any]] = []
        self.raw: list[bytes] = []
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n)
                outer.raw.append(raw)
                outer.calls.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                                    json.loads(raw or b"null")))
                data = b'{"ok": true, "result": {}}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)
