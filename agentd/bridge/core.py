"""The Bridge: what the endpoints share. It turns requests into turns on the home's queue
(the daemon's, or `agentd serve`'s own), so a bridge turn never runs beside another turn of
the home, keeps the run records, and sends answers back (Telegram, Slack, callbacks).

Each endpoint builds an agentd.turn.TurnRequest (what to run; its `delivery.reply` says
where the answer goes: Telegram, Slack, a callback). A person waiting on a chat is a
"person" turn in the queue (first in line); webhooks are "webhook" turns (same priority,
arrival order). A turn goes through `agentd.jobs.records.run_job_turn`, like every daemon
turn: the turn lock, the in-flight marker for crash recovery, a row in runs.jsonl for
`agentd status`, one log line per tool call. An accepted request is kept on disk
(`TurnRequest.to_json`) until it runs, so a restart runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.bridge.conversations import Conversations
from agentd.bridge.delivery import DELAYS
from agentd.bridge.http import ApiError, retry_after
from agentd.bridge.limits import Buckets
from agentd.bridge.secrets import Secrets, scrub
from agentd.bridge.store import Runs, SeenIds, lock, new_run_id
from agentd.home import Home
from agentd.jobs.log import EventLog, LogEvents
from agentd.jobs.queue import QueuedTurn, TurnQueue
from agentd.jobs.records import run_job_turn
from agentd.loop import Events
from agentd.redact import Redactor, from_settings
from agentd.turn import TurnRequest

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.turn import TurnReport

Deliver = Callable[["Bridge", dict[str, Any], str, dict[str, Any]], Awaitable[None]]


class Bridge:
    def __init__(self, home: Path, settings: Callable[[], Settings], queue: TurnQueue,
                 log: EventLog, secrets: Secrets):
        self.home, self.settings, self.queue, self.log = home, settings, queue, log
        self.secrets = secrets
        b = settings().bridge
        folder = Home(home).bridge
        self._lock: int | None = lock(folder / "bridge.lock")
        self.seen = SeenIds(folder, b.dedupe_ttl.seconds)
        self.runs = Runs(folder)
        self.conversations = Conversations(folder)  # which chat session a client continues
        self.ip_buckets = Buckets(b.ip_rate, b.ip_burst)
        self.sender_buckets = Buckets(b.sender_rate, b.sender_burst)
        self.deliverers: dict[str, Deliver] = {}
        self.delivery_delays: tuple[float, ...] = DELAYS  # chat replies' retries (tests: 0)
        self.stopping = asyncio.Event()  # set by stop(): waits between retries end at once
        self.http: Any = None  # an httpx AsyncClient once started
        self._futures: set[asyncio.Future[TurnReport | None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._full_logged = 0.0
        self._warned: dict[str, tuple[float, int]] = {}

    @property
    def closing(self) -> bool:
        return self.stopping.is_set()

    @property
    def redactor(self) -> Redactor:
        return from_settings(self.settings())

    def limits(self) -> tuple[int, Buckets]:
        """For the guard, at every request: a reloaded agentd.toml applies at once."""
        b = self.settings().bridge
        self.ip_buckets.rate, self.ip_buckets.burst = b.ip_rate, b.ip_burst
        self.sender_buckets.rate, self.sender_buckets.burst = b.sender_rate, b.sender_burst
        return b.max_body, self.ip_buckets

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client and re-queue what a stopped process had accepted."""
        if self._started:
            return
        self._started = True
        import httpx2

        self.http = httpx2.AsyncClient(timeout=15.0, follow_redirects=False)
        for rid, run in list(self.runs.runs.items()):
            if run.get("status") == "running":
                self.runs.update(rid, status="interrupted", finished=round(time.time(), 3),
                                 error="agentd stopped during the turn")
        again = 0
        for run in self.runs.pending():
            try:
                req = TurnRequest.from_json(run["spec"])
            except (TypeError, KeyError, ValueError):  # written by another version
                self.runs.update(run["id"], status="failed", error="unreadable after a restart")
                continue
            name = f"{run.get('kind')} {run.get('name')}"
            if self.queue.depth >= self.queue.limit or not self._put(name, req, run["id"]):
                break  # the rest wait for the next start
            again += 1
        if again:
            self.log("bridge", f"queued again {again} run(s) accepted before a stop")

    def stop(self) -> None:
        """Refuse new work; a chat still waiting in the queue is told "shutting down", an
        accepted webhook stays queued on disk for the next start. A turn already running
        finishes and its answer is still delivered (before the queue's worker ends)."""
        self.stopping.set()
        for fut in list(self._futures):
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        """After the queue's worker ended: let deliveries finish (a few seconds at most),
        then release the HTTP client and the files."""
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except (TimeoutError, asyncio.CancelledError, Exception):
                task.cancel()
        if self.http is not None:
            await self.http.aclose()
        self.runs.close()
        self.seen.file.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- admission -------------------------------------------------------------------------

    def check_sender(self, key: str) -> None:
        wait = self.sender_buckets.take(key)
        if wait:
            raise ApiError(429, "too many requests from this sender; slow down",
                           "rate_limited", retry_after(wait))

    def warn(self, event: str, key: str, msg: str) -> None:
        """A refusal worth a log line, at most one per `key` every 10 s (with a count of
        the ones not logged), so a flood of bad requests cannot flood the log."""
        now = time.monotonic()
        last, skipped = self._warned.get(key, (0.0, 0))
        if now - last < 10:
            self._warned[key] = (last, skipped + 1)
            return
        if len(self._warned) > 1000:
            self._warned.clear()
        self._warned[key] = (now, 0)
        self.log.warn(event, msg + (f" (and {skipped} more like it)" if skipped else ""))

    def busy(self) -> ApiError:
        now = time.monotonic()
        if now - self._full_logged > 10:
            self._full_logged = now
            self.log.warn("bridge", f"queue full ({self.queue.limit} waiting): answering 503")
        return ApiError(503, "the agent is busy: its queue is full; retry later",
                        "queue_full", retry_after(self.settings().bridge.retry_after))

    def has_room(self) -> bool:
        if self.closing:
            raise ApiError(503, "the agent is shutting down", "shutting_down", retry_after(30))
        return self.queue.depth < self.queue.limit

    def submit(self, name: str, req: TurnRequest, events: Events | None = None
               ) -> asyncio.Future[TurnReport | None]:
        """Queue a turn someone waits for (a chat; `name` is what logs and `agentd status`
        show); ApiError 503 when the queue is full."""
        if not self.has_room():
            raise self.busy()
        fut: asyncio.Future[TurnReport | None] = asyncio.get_running_loop().create_future()
        if not self._put(name, req, None, events, fut):
            raise self.busy()
        self._futures.add(fut)
        fut.add_done_callback(self._futures.discard)
        return fut

    def accept(self, kind: str, name: str, req: TurnRequest, dedupe: str | None,
               sender: str) -> tuple[str, bool]:
        """Queue a turn nobody waits for (webhook, Telegram, Slack; the run is `kind`
        `name`, e.g. "hook github"): (run id, True), or (the earlier run id, False) for a
        delivery already seen. Raises 429 or 503."""
        if dedupe and (earlier := self.seen.get(dedupe)):
            return earlier, False
        self.check_sender(sender)
        if not self.has_room():
            raise self.busy()
        rid = self.runs.new(kind, name, req.to_json())
        if dedupe:
            self.seen.add(dedupe, rid)
        if not self._put(f"{kind} {name}", req, rid):
            if dedupe:
                self.seen.forget(dedupe)
            self.runs.update(rid, status="refused")
            raise self.busy()
        return rid, True

    def _put(self, name: str, req: TurnRequest, rid: str | None, events: Events | None = None,
             fut: asyncio.Future[TurnReport | None] | None = None) -> bool:
        kind = "webhook" if req.trigger.startswith("webhook:") else "person"
        key = f"bridge:{rid or new_run_id()}"
        return self.queue.put(QueuedTurn(
            kind, name, lambda: self._execute(kind, name, req, rid, events, fut), key=key))

    # -- running ---------------------------------------------------------------------------

    async def _execute(self, kind: str, name: str, req: TurnRequest, rid: str | None,
                       events: Events | None,
                       fut: asyncio.Future[TurnReport | None] | None) -> None:
        if self.closing or (fut is not None and fut.done()):
            return  # shutting down: a webhook's run stays queued for the next start
        if fut is not None:
            self._futures.discard(fut)  # running: `stop` lets it finish
        if rid:
            self.runs.update(rid, status="running", started=round(time.time(), 3))
        report: TurnReport | None = None
        try:
            report = await run_job_turn(self.home, self.settings(), req, kind, name, self.log,
                                        events or LogEvents(self.log, kind, name))
        except asyncio.CancelledError:
            if rid:
                self.runs.update(rid, status="interrupted", finished=round(time.time(), 3))
            raise
        finally:
            if fut is not None and not fut.done():
                fut.set_result(report)
        if rid:
            await self._finish(req, rid, report)

    def answer(self, report: TurnReport | None) -> tuple[str, str]:
        """(status, text) to send back: the final answer, or what went wrong; redacted."""
        if report is None:
            return "failed", "agentd could not start a turn (see its log)"
        r = report.result
        text = r.text.strip()
        if r.status != "ok":
            note = f"(agentd: the turn ended early: {scrub(r.error or r.status, self.redactor)})"
            text = f"{text}\n\n{note}" if text else note
        return ("done" if r.status == "ok" else "failed"), self.redactor.redact(text)

    async def _finish(self, req: TurnRequest, rid: str, report: TurnReport | None) -> None:
        status, text = self.answer(report)
        info: dict[str, Any] = {"status": status, "finished": round(time.time(), 3)}
        if report is not None:
            u = report.result.usage
            info.update(turn=report.run_id, steps=report.result.steps, cost=report.cost,
                        usage={"input": u.input, "output": u.output,
                               "cache_read": u.cache_read, "cache_write": u.cache_write})
            if report.result.error:
                info["error"] = scrub(report.result.error, self.redactor)
        self.runs.update(rid, result=text, **info)
        reply = (req.delivery.reply if req.delivery else None) or {}
        via = reply.get("via")
        if via in self.deliverers:
            send = self.deliverers[via](self, reply, text, {"id": rid, **info})
            if self.closing:  # the process is about to end: deliver before the worker does
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(send, 20)
            else:
                self.spawn(send)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            e = task.exception()
            self.log.error("bridge", f"delivery failed: {type(e).__name__}: "
                           f"{scrub(str(e), self.redactor)[:200]}")
