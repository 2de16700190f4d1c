"""The heartbeat at run time: ticks, active hours, gates and per-item times.

The file format (memory/HEARTBEAT.md: items, `every:`, `when:`) is in checklist.py. A tick
runs only when the daemon is idle and inside `[heartbeat] active_hours`; otherwise it is
skipped, not queued. Due items run together in one turn; when nothing is due the tick
makes no model call and logs one line. Per-item times live in
`.agentd/daemon/heartbeat.json`, keyed by the item's text, outside git.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

from agentd import state
from agentd.daemon.checklist import HEARTBEAT, Due, Item, build_task, load
from agentd.home import Home
from agentd.jobs.log import EventLog
from agentd.jobs.queue import QueuedTurn, TurnQueue
from agentd.jobs.records import run_job_turn
from agentd.outbox import OUTBOX, Delivery, is_silent

if TYPE_CHECKING:
    from agentd.config import Settings

GATE_OUTPUT = 1500  # characters of a fired gate's output passed to the model


def zone(name: str) -> tzinfo:
    """An IANA zone, or this machine's when empty."""
    if name:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    import tzlocal

    return tzlocal.get_localzone()


def in_active_hours(now: datetime, window: tuple[int, int] | None) -> bool:
    """Whether `now` (already in the heartbeat's zone) is inside the window; the window may
    wrap past midnight ("22:00-06:00")."""
    if window is None:
        return True
    start, end = window
    minute = now.hour * 60 + now.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


def is_due(item: Item, entry: dict[str, float], now: float, slack: float) -> bool:
    """Whether the item's interval has passed; `slack` (half a tick) keeps an item due
    every 2h from slipping to the following tick because a tick came a second early."""
    if item.every is None:
        return True
    last = entry.get("checked" if item.gate else "run")
    return last is None or now - last >= item.every - slack


async def run_gate(home: Path, settings: Settings, command: str) -> tuple[bool, str, str]:
    """(fired, output, problem). The gate runs like the agent's bash tool: sandboxed, with
    the home as its folder, bounded by `gate_timeout`, and its output redacted like every
    tool result (agentd/redact.py): it goes into the task, the transcript and the log."""
    from agentd.redact import from_settings  # these three: only once a gate runs
    from agentd.tools import ToolContext
    from agentd.tools.bash import run_bash

    redactor = from_settings(settings)
    ctx = ToolContext(home=home, workdir=home, sandbox=settings.sandbox, redactor=redactor)
    limit = settings.heartbeat.gate_timeout.seconds
    res = await run_bash(ctx, command, limit)
    out = redactor.redact(res.content).strip()
    if not res.is_error:
        out = "" if out == "(no output)" else out
        return True, out[:GATE_OUTPUT], ""
    if out.startswith(("bash refused", "bash could not")) or "[timed out" in out:
        return False, "", out.splitlines()[-1]
    return False, "", ""


async def evaluate(home: Path, settings: Settings, items: list[Item],
                   entries: dict[str, dict[str, float]], now: float, slack: float,
                   problems: list[str]) -> tuple[list[Due], int]:
    """Which items are due now (gates run here, one after another). Updates `entries`'
    `checked` times; returns the due items and how many gates ran."""
    due: list[Due] = []
    gates = 0
    for item in items:
        entry = entries.setdefault(item.key, {})
        if not is_due(item, entry, now, slack):
            continue
        if item.gate is None:
            due.append(Due(item))
            continue
        gates += 1
        entry["checked"] = now
        fired, output, problem = await run_gate(home, settings, item.gate)
        if problem:
            problems.append(f"line {item.line}: gate `{item.gate}`: {problem}")
        if fired:
            due.append(Due(item, output))
    return due, gates


def state_path(home: Path) -> Path:
    return Home(home).daemon / "heartbeat.json"


def load_state(home: Path) -> dict[str, dict[str, float]]:
    data = state.read(state_path(home), {})
    return data if isinstance(data, dict) else {}


def save_state(home: Path, entries: dict[str, dict[str, float]], items: list[Item],
               tick: float | None = None) -> None:
    """Keep entries of items still in the file (a removed item forgets its times)."""
    keep = {i.key for i in items}
    data = {k: v for k, v in entries.items() if k in keep}
    meta = load_state(home).get("_tick", {})
    if tick is not None:
        meta = {"last": tick}
    data["_tick"] = meta
    state.write(state_path(home), data)


class Heartbeat:
    """The tick: skip when inactive or busy, check items at zero tokens, queue one turn
    with the due ones. `settings` is a callable so a hot reload is seen at the next tick."""

    def __init__(self, home: Path, settings: Callable[[], Settings], queue: TurnQueue,
                 log: EventLog, on_change: Callable[[], None] = lambda: None):
        self.home, self.settings, self.queue, self.log = home, settings, queue, log
        self.on_change = on_change
        self.last: dict[str, object] = {}  # the last tick's outcome, for the status file
        self._reported: set[str] = set()  # problems already logged (once per change)
        self._ticking = False

    def report_problems(self, problems: list[str]) -> None:
        """Log each problem once, not on every tick; forget fixed ones."""
        for p in problems:
            if p not in self._reported:
                self.log.error("heartbeat", f"{HEARTBEAT}: {p}")
        self._reported = set(problems)

    def _skip(self, why: str) -> str:
        self.log("heartbeat", f"skipped: {why}")
        self.last = {"ts": time.time(), "result": f"skipped: {why}"}
        self.on_change()
        return "skipped"

    async def tick(self) -> str:
        """One tick; returns "skipped", "idle" or "queued" (for tests and the log)."""
        s = self.settings()
        hb = s.heartbeat
        now = datetime.now(zone(hb.timezone))
        if not in_active_hours(now, hb.active_hours.window):
            return self._skip(f"outside active hours {hb.active_hours}")
        if self._ticking or self.queue.busy or self.queue.depth:
            return self._skip("a turn is running" if self.queue.busy else "turns are waiting")
        self._ticking = True
        try:
            return await self._check(s, now)
        finally:
            self._ticking = False

    async def _check(self, s: Settings, now: datetime) -> str:
        items, problems = await asyncio.to_thread(load, self.home)
        entries = await asyncio.to_thread(load_state, self.home)
        slack = s.heartbeat.every.seconds / 2
        due, gates = await evaluate(self.home, s, items, entries, time.time(), slack,
                                    problems)
        self.report_problems(problems)
        await asyncio.to_thread(save_state, self.home, entries, items, time.time())
        if not due:
            gated = f", {gates} gate{'s' * (gates != 1)} checked" if gates else ""
            self.log("heartbeat", f"nothing due ({len(items)} item{'s' * (len(items) != 1)}"
                     f"{gated}); no model call")
            self.last = {"ts": time.time(), "result": "nothing due"}
            self.on_change()
            return "idle"
        task = build_task(due, now)
        names = ", ".join(f"line {d.item.line}" for d in due)
        job = QueuedTurn("heartbeat", "heartbeat", lambda: self._run(due, task))
        if not self.queue.put(job):
            return self._skip("could not queue")
        self.log("heartbeat", f"{len(due)} item{'s' * (len(due) != 1)} due ({names}); "
                 "turn queued")
        self.last = {"ts": time.time(), "result": f"{len(due)} due"}
        self.on_change()
        return "queued"

    async def _run(self, due: list[Due], task: str) -> None:
        from agentd.turn import TurnRequest  # not loaded by an idle daemon

        s = self.settings()
        started = time.time()

        def mark(entries: dict[str, dict[str, float]]) -> None:
            for d in due:
                entries.setdefault(d.item.key, {})["run"] = started

        await asyncio.to_thread(state.update, state_path(self.home), mark)
        answer = f"{OUTBOX}/heartbeat-{datetime.now():%Y%m%d-%H%M%S}.md"
        req = TurnRequest(task, self.home, trigger="heartbeat", model=s.heartbeat.model or None,
                          delivery=Delivery(answer), title="Heartbeat")
        report = await run_job_turn(self.home, s, req, "heartbeat", "heartbeat", self.log)
        if report is not None:
            self.last = {"ts": time.time(), "result": report.result.status
                         + (" [SILENT]" if is_silent(report.result.text) else "")}
