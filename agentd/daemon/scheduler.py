"""The daemon process: one asyncio loop running APScheduler 3.x (AsyncIOScheduler), the
file watcher, the turn queue and its worker.

No APScheduler job store: at start the schedules are rebuilt from the files (HEARTBEAT.md
and agentd.toml for the heartbeat, cron/*.md for jobs), so the files in git stay the only
truth. Jobs only queue work (cheap, on the loop); turns, gates, git and file scans run as
coroutines or in threads, so nothing blocks the loop. `misfire_grace_time` is the
`[daemon] catch_up` window (default 6h) with coalescing: a laptop waking from sleep runs
each overdue job once instead of dropping it (APScheduler's default grace is 1 s).

Hot reload: agentd.toml (an invalid one keeps the last good settings and says why),
HEARTBEAT.md (read on every tick; checked on change so problems show at once), skills
(read by every turn's prompt; checked on change), cron/ (rescheduled within the watcher's
debounce). SIGHUP reloads agentd.toml too; a rescan every minute backs up the watcher.

`agentd serve` is this same process with the background work (heartbeat, cron, inbox, and
the watcher and rescan behind them) off and the bridge on (`Parts`): the signals, reload,
preflight, recovery, pid lock, status file and stop sequence are the daemon's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agentd import state
from agentd.config import Settings, load_settings
from agentd.daemon import checklist, service
from agentd.daemon.crontab import CronTable
from agentd.daemon.heartbeat import Heartbeat, load_state, zone
from agentd.daemon.inbox import Inbox
from agentd.daemon.recovery import recover
from agentd.daemon.status import status_path
from agentd.daemon.warm import WarmServer
from agentd.daemon.watcher import Batch, Watcher
from agentd.errors import AgentdError
from agentd.jobs.log import EventLog, route_library_logs
from agentd.jobs.queue import TurnQueue
from agentd.turnlock import TurnLock

RESCAN = 60.0
STATUS_DELAY = 0.25  # seconds: a flood of webhooks rewrites it 4 times a second


@dataclasses.dataclass(frozen=True)
class Parts:
    """Which parts of the daemon run. `agentd daemon`: the background work (heartbeat, cron,
    inbox) and the bridge if `[bridge] enabled`; `agentd serve`: the bridge alone, whatever
    agentd.toml says, on `port` if given."""

    background: bool = True
    bridge: bool = False  # run it even without [bridge] enabled
    port: int | None = None  # instead of [bridge] port

    @property
    def name(self) -> str:
        """The process's name in its log lines and in `agentd status`."""
        return "daemon" if self.background else "serve"


class Daemon:
    def __init__(self, home: Path, log: EventLog, parts: Parts = Parts()):
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.home, self.log, self.parts, self.name = home, log, parts, parts.name
        self.settings = load_settings(home)
        self.started = time.time()
        s = self.settings
        self.queue = TurnQueue(s.daemon.queue_limit, log, self.changed, TurnLock(home))
        self.scheduler = AsyncIOScheduler(timezone=zone(s.heartbeat.timezone), job_defaults={
            "misfire_grace_time": int(s.daemon.catch_up.seconds), "coalesce": True,
            "max_instances": 1})
        self.heartbeat = Heartbeat(home, self.current, self.queue, log, self.changed)
        self.cron = CronTable(home, self.current, self.scheduler, self.queue, log, self.changed)
        self.inbox = Inbox(home, self.current, self.queue, log)
        self.watcher = Watcher(home, self.on_batch, s.daemon.watch,
                               warn=lambda m: log.warn("watch", m))
        self.stopping: asyncio.Event | None = None
        self.worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cron_lock = asyncio.Lock()
        self._status_due = False
        self._signals = 0
        self.bridge: Any = None  # agentd/bridge, when [bridge] enabled = true
        self.warm = WarmServer(home, self.queue, log)  # `agentd run`'s turns (warm path)

    def current(self) -> Settings:
        return self.settings

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        if threading.current_thread() is threading.main_thread():  # else its host's (tests)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._spawn, self.reload, "SIGHUP")
        bridged = self.parts.bridge or self.settings.bridge.enabled
        if bridged:  # a bridge that must not start (no token...) stops us before recovery
            from agentd.bridge.secrets import load

            load(self.home, self.settings)
        await asyncio.to_thread(recover, self.home, self.log)
        self._preflight()
        if bridged:
            from agentd.bridge.server import start_bridge  # AgentdError without a token

            self.bridge = await start_bridge(self.home, self.current, self.queue, self.log,
                                             self.parts.port)
        if self.parts.background:
            await self._start_background()
        self.worker = loop.create_task(self.queue.work())
        await self.warm.start()
        self.log(self.name, f"started (pid {os.getpid()}) for {self.home}: {self._runs()}")
        self._write_status()
        await self.stopping.wait()
        await self._shutdown()
        return 0

    async def _start_background(self) -> None:
        """The heartbeat, cron and inbox, and the watcher and rescan behind them."""
        self.scheduler.start()
        self._schedule_heartbeat()
        self.scheduler.add_job(self._rescan, "interval", seconds=RESCAN, id="rescan")
        await self._sync_cron(starting=True)
        await self._check_heartbeat_file()
        self.log("watch", f"watching agentd.toml, memory/HEARTBEAT.md, cron/, inbox/, skills/ "
                 f"({self.watcher.start()})")
        await self.inbox.scan()

    def _runs(self) -> str:
        if not self.parts.background:
            return "the bridge alone; heartbeat, cron and inbox are off"
        hb = self.settings.heartbeat
        return ("heartbeat " + (f"every {hb.every}" if hb.enabled else "off")
                + f", {len(self.cron.jobs)} cron job(s)")

    def stop(self) -> None:
        """Stop as on SIGTERM (a running turn finishes); for hosts that own the signals."""
        assert self.stopping is not None
        self.stopping.set()

    def _preflight(self) -> None:
        """Say at start what will make every turn or gate fail, not once per turn later."""
        from agentd.chain import choose_model
        from agentd.tools.sandbox import find_bwrap

        try:
            choose_model(None, self.settings)
        except AgentdError as e:
            self.log.warn("config", f"{e}; turns will fail until then")
        if self.settings.sandbox.mode == "off":
            self.log.warn("config", "sandbox is off: bash and heartbeat gates run unsandboxed")
        elif not find_bwrap():
            self.log.warn("config", "bubblewrap (bwrap) is not installed: bash and heartbeat "
                          "gates will refuse to run (`apt-get install bubblewrap`)")

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        name = signal.Signals(sig).name
        if self._signals == 1:
            busy = self.queue.running
            self.log(self.name, f"{name}: stopping" + (
                f"; letting the running {busy.kind} turn ({busy.name}) finish and commit "
                f"({name} again interrupts it)" if busy else ""))
            self.stop()
        elif self.worker is not None and not self.worker.done():
            self.log(self.name, f"{name} again: interrupting the running turn")
            self.worker.cancel()

    async def _shutdown(self) -> None:
        self.warm.stop_accepting()
        if self.bridge is not None:
            await self.bridge.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.watcher.stop()
        dropped = self.queue.close()
        if dropped:
            self.log("queue", f"dropped {len(dropped)} waiting job(s) on stop: " + ", ".join(
                f"{j.kind} {j.name}" for j in dropped) + " (inbox files stay for next start)")
        if self.worker is not None:
            try:
                await self.worker
            except asyncio.CancelledError:
                self.log(self.name, "the running turn was interrupted; it committed what it "
                         "did")
        await self.warm.close()
        if self.bridge is not None:
            await self.bridge.close()
        for t in list(self._tasks):
            t.cancel()
        status_path(self.home).unlink(missing_ok=True)
        self.log(self.name, "stopped")

    # -- schedules -------------------------------------------------------------------------

    def _schedule_heartbeat(self) -> None:
        if self.scheduler.get_job("heartbeat"):
            self.scheduler.remove_job("heartbeat")
        hb = self.settings.heartbeat
        if not hb.enabled:
            return
        every = hb.every.seconds
        tz = zone(hb.timezone)
        now = datetime.now(tz)
        last = (load_state(self.home).get("_tick") or {}).get("last")
        first = now + timedelta(seconds=every)
        if last:  # keep the rhythm across restarts; a tick missed while down comes now
            first = max(now + timedelta(seconds=1), datetime.fromtimestamp(last + every, tz))
        self.scheduler.add_job(self._tick, "interval", seconds=every, id="heartbeat",
                               next_run_time=first, timezone=tz)
        self.changed()

    async def _tick(self) -> None:
        await self.heartbeat.tick()
        self.changed()

    async def _rescan(self) -> None:
        await self._sync_cron()
        await self.inbox.scan()

    async def _sync_cron(self, starting: bool = False) -> None:
        async with self._cron_lock:
            await self.cron.sync(starting)

    async def _check_heartbeat_file(self) -> None:
        items, problems = await asyncio.to_thread(checklist.load, self.home)
        self.heartbeat.report_problems(problems)
        gates = sum(1 for i in items if i.gate)
        self.log("heartbeat", f"{checklist.HEARTBEAT}: {len(items)} item(s), {gates} with a "
                 "gate" + (f", {len(problems)} problem(s)" if problems else ""))

    # -- hot reload ------------------------------------------------------------------------

    def _spawn(self, fn: Any, *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_batch(self, batch: Batch) -> None:
        if "config" in batch:
            self._spawn(self.reload, "agentd.toml changed")
        if "heartbeat" in batch:
            self._spawn(self._check_heartbeat_file)
        if "cron" in batch:
            self._spawn(self._sync_cron)
        if "skills" in batch:
            self._spawn(self._check_skills)
        if "inbox" in batch:
            self.inbox.notice(sorted(batch["inbox"]))

    async def reload(self, why: str) -> None:
        try:
            new = await asyncio.to_thread(load_settings, self.home)
        except AgentdError as e:
            self.log.error("config", f"{why}, but it is invalid: {e}; keeping the last good "
                           "settings")
            return
        old, self.settings = self.settings, new
        changed = [k for k in ("model", "max_steps", "sandbox", "providers", "prices",
                               "heartbeat", "daemon", "bridge")
                   if getattr(old, k) != getattr(new, k)]
        self.log("config", f"{why}: reloaded" + (f" ({', '.join(changed)} changed)"
                                                  if changed else " (no change)"))
        self.queue.limit = new.daemon.queue_limit
        if (old.bridge.host, old.bridge.port) != (new.bridge.host, new.bridge.port):
            self.log.warn("config", "bridge.host and bridge.port take effect at the next start")
        if not self.parts.background:
            return
        if old.heartbeat != new.heartbeat:
            self._schedule_heartbeat()
        if old.heartbeat.timezone != new.heartbeat.timezone:
            self.cron._seen.clear()  # cron's default zone is the heartbeat's
            await self._sync_cron()
        if old.daemon.watch != new.daemon.watch:
            self.log.warn("config", "daemon.watch takes effect at the next start")

    async def _check_skills(self) -> None:
        from agentd.skills import discover

        warnings: list[str] = []
        found = await asyncio.to_thread(discover, self.home, warnings)
        self.log("skills", f"changed: {len(found)} skill(s) for the next turn")
        for w in warnings:
            self.log.warn("skills", w)

    # -- status ----------------------------------------------------------------------------

    def changed(self) -> None:
        """Something `agentd status` shows changed: rewrite the status file soon (once)."""
        if not self._status_due:
            self._status_due = True
            asyncio.get_running_loop().call_later(STATUS_DELAY, self._write_status)

    def _write_status(self) -> None:
        self._status_due = False
        hb = self.settings.heartbeat
        job = self.scheduler.get_job("heartbeat") if self.scheduler.running else None
        running = self.queue.running
        cron = [{"name": n, "next": (nx.isoformat() if (nx := self.cron.next_run(n)) else None)}
                for n in sorted(self.cron.jobs)]
        bridge = self.bridge
        state.write(status_path(self.home), {
            "pid": os.getpid(), "started": self.started, "updated": time.time(),
            "home": str(self.home), "stopping": bool(self.stopping and self.stopping.is_set()),
            "watch": self.watcher.kind, "serve": not self.parts.background,
            "bridge": {"url": bridge.url, "port": bridge.port} if bridge else None,
            "heartbeat": {"enabled": hb.enabled, "every": hb.every,
                          "active_hours": hb.active_hours, "timezone": hb.timezone,
                          "next": job.next_run_time.isoformat() if job and job.next_run_time
                          else None, "last": self.heartbeat.last},
            "cron": cron, "cron_errors": dict(self.cron.errors),
            "queue": {"depth": self.queue.depth, "limit": self.queue.limit,
                      "running": running.describe() if running else None,
                      "waiting": [j.describe() for j in self.queue.waiting()[:20]]}},
            durable=False)  # rewritten 4 times a second in a flood: no fsync on the loop


def main(home: Path, json_logs: bool = False, lock_fd: int | None = None,
         parts: Parts = Parts()) -> int:
    """`agentd daemon` (and `agentd serve`, with its `parts`): run in the foreground until
    SIGTERM/SIGINT, holding the home's pid lock (one of them per home)."""
    log = EventLog(json_lines=json_logs)
    route_library_logs(log)
    fd, stale = service.acquire(home, lock_fd)
    try:
        if stale:
            log(parts.name, f"replaced a stale pid file (pid {stale} is not running)")
        return asyncio.run(Daemon(home, log, parts).run())
    finally:
        service.release(fd, home)
