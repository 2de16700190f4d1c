"""schemathesis against the bridge's own OpenAPI schema, in-process (ASGI, no sockets):
valid and invalid requests for every operation, with the Bearer token, must never get a
5xx (nor a stack trace). Bounded: a few dozen examples per mode, no example database."""

from __future__ import annotations

import asyncio
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from bridgekit import TOKEN, add_table, bridge_env, bridge_home
from fakellm import FakeLLM
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi

from agentd.bridge.core import Bridge
from agentd.bridge.secrets import load
from agentd.bridge.server import create_app
from agentd.config import load_settings
from agentd.jobs.log import EventLog
from agentd.jobs.queue import TurnQueue
from agentd.turnlock import TurnLock


class WithWorker:
    """Runs the queue's worker for the length of the app's lifespan (schemathesis keeps
    one event loop for the test and runs the lifespan in it)."""

    def __init__(self, app: Any, queue: TurnQueue, bridge: Bridge):
        self.app, self.queue, self.bridge = app, queue, bridge

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        worker = asyncio.get_running_loop().create_task(self.queue.work())

        async def recv() -> dict[str, Any]:
            msg = await receive()
            if msg["type"] == "lifespan.shutdown":
                self.bridge.stop()
                self.queue.close()
                await worker
                await self.bridge.close()
            return msg

        await self.app(scope, recv, send)


def test_no_server_errors_anywhere_in_the_schema(home: Path, fake: FakeLLM,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    bridge_home(home)
    add_table(home, "bridge.telegram", enabled=True, chats=[1])
    add_table(home, "bridge.slack", enabled=True, users=["U1"])
    fake.push(*[{"text": "ok"}] * 500)
    current = load_settings(home)
    log = EventLog(io.StringIO())
    queue = TurnQueue(current.daemon.queue_limit, log, lock=TurnLock(home))
    bridge = Bridge(home, lambda: current, queue, log, load(home, current))
    app = create_app(bridge)
    raw = app.app.openapi()
    assert set(raw["paths"]) == {"/healthz", "/v1/models", "/v1/chat/completions",
                                 "/hooks/{name}", "/runs/{run_id}", "/telegram",
                                 "/slack/events"}
    schema = schemathesis.openapi.from_dict(raw)
    schema.app = WithWorker(app, queue, bridge)
    seen: dict[int, int] = {}
    try:
        for op, mode in itertools.product(
                [o.ok() for o in schema.get_all_operations()],
                (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
            @given(case=op.as_strategy(mode, headers={"Authorization": f"Bearer {TOKEN}"}))
            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                response = case.call()
                seen[response.status_code] = seen.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.method, case.path,
                                                    response.status_code, response.text)
                assert "Traceback" not in response.text and TOKEN not in response.text

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (GET /healthz)
                assert mode == GenerationMode.NEGATIVE
    finally:
        asgi.shutdown_lifespans()
    assert seen.get(200, 0) >= 5 and any(400 <= code < 500 for code in seen), seen
    assert [r for r in fake.requests if r.method == "POST"], "no chat turn was fuzzed"
