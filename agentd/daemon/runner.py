"""Running a daemon turn through agentd.turn, and delivering what it says.

Every daemon turn (heartbeat, cron, inbox, and `agentd cron run` in a terminal) goes
through `run_job_turn`: it holds the home's turn lock (one turn at a time, across the daemon
and the CLI), leaves a marker in `.agentd/daemon/turn.json` while the turn runs (so a daemon
killed mid-turn is recognised and its leftovers committed as a recovery commit on the next
start), and appends one row per run to `.agentd/daemon/runs.jsonl` for `agentd status`.

An answer of `[SILENT]` means "nothing worth reporting" and is not delivered; anything else
is written to `outbox/` and committed together with the turn's day-log entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.daemon import state
from agentd.daemon.log import EventLog
from agentd.errors import AgentdError
from agentd.loop import Events

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.llm.types import ToolCall
    from agentd.turn import TurnReport, TurnRequest

SILENT = "[SILENT]"


def is_silent(text: str) -> bool:
    """`[SILENT]` alone, or at the very start or end of a short reply (models like to add
    a word of politeness around it)."""
    t = text.strip()
    return t == SILENT or (len(t) < 200 and (t.startswith(SILENT) or t.endswith(SILENT)))


class TurnLock:
    """`.agentd/daemon/turn.lock`: held for the length of a turn, by the daemon's worker and
    by `agentd cron run`, so a home never runs two scheduled turns at once."""

    def __init__(self, home: Path):
        self.path = state.daemon_dir(home) / "turn.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def acquire(self, on_wait: Any = None) -> None:
        """Wait for the lock without blocking the loop (and stay cancellable)."""
        waited = False
        while not self.try_acquire():
            if not waited and on_wait:
                on_wait()
            waited = True
            await asyncio.sleep(0.2)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LogEvents(Events):
    """A daemon turn's progress as log lines: one per tool call (its arguments come
    redacted from the turn, agentd/turn.py)."""

    def __init__(self, log: EventLog, kind: str, name: str):
        self.log, self.kind, self.name = log, kind, name

    def tool_call(self, call: ToolCall) -> None:
        a = call.arguments
        what = str(a.get("command") or a.get("path") or "")
        what = " ".join(what.split())
        self.log(self.kind, f"{self.name}: ▸ {call.name} {what[:100]}")


def with_profile(req: TurnRequest, profile: str | None) -> TurnRequest:
    """Inbox turns (strangers' text) ask for the "untrusted" sandbox profile."""
    return dataclasses.replace(req, profile=profile) if profile else req


def _record(home: Path, row: dict[str, Any]) -> None:
    state.append_line(state.daemon_dir(home) / "runs.jsonl", row)


async def run_job_turn(home: Path, settings: Settings, req: TurnRequest, kind: str,
                       name: str, log: EventLog, events: Events | None = None,
                       profile: str | None = None) -> TurnReport | None:
    """Run one turn for a daemon job; None when it could not start (a config problem,
    logged). The caller holds the turn lock."""
    from agentd.turn import run_turn

    marker = state.daemon_dir(home) / "turn.json"
    started = time.time()
    state.write(marker, {"kind": kind, "name": name, "trigger": req.trigger, "task": req.task,
                         "session": req.session, "started": started, "pid": os.getpid()})
    log(kind, f"{name}: turn started" + (f" ({req.model})" if req.model else ""))
    row: dict[str, Any] = {"ts": started, "kind": kind, "name": name}
    try:
        report = await run_turn(home, settings, with_profile(req, profile),
                                events or LogEvents(log, kind, name), base=home)
    except AgentdError as e:
        log.error(kind, f"{name}: turn not started: {e}")
        _record(home, {**row, "status": "error", "error": str(e), "seconds": 0})
        return None
    finally:
        marker.unlink(missing_ok=True)
    r = report.result
    row.update(status=r.status, error=r.error, steps=r.steps, seconds=report.seconds,
               cost=report.cost, run=report.run_id, model=", ".join(report.models) or
               report.model, silent=r.status == "ok" and is_silent(r.text))
    _record(home, row)
    cost = "?" if report.cost is None else f"${report.cost:.4f}"
    detail = f": {r.error}" if r.error else ""
    log(kind, f"{name}: turn {r.status} ({r.steps} step{'s' * (r.steps != 1)}, "
        f"{report.seconds:.1f}s, {cost}){detail}", level="info" if report.ok else "error",
        run=report.run_id)
    return report


def unique_path(folder: Path, stem: str, suffix: str = ".md") -> Path:
    """`folder/stem.md`, else `stem-2.md`, `stem-3.md`…: never overwrite an earlier answer."""
    path = folder / f"{stem}{suffix}"
    n = 2
    while path.exists() or path.is_symlink():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def commit_delivery(home: Path, paths: list[Path], subject: str, kind: str,
                    run_id: str | None) -> str | None:
    """Commit delivered files with the day-log entry of the turn that produced them."""
    from agentd import history
    from agentd.daylog import DAILY

    daily = [f for f in history.pending(home).files if f.startswith(DAILY + "/")]
    files = [str(p.relative_to(home)) for p in paths] + daily
    trailers = {"Agentd-Trigger": kind} | ({"Agentd-Run": run_id} if run_id else {})
    return history.commit(home, files, subject, trailers)


def deliver(home: Path, kind: str, name: str, report: TurnReport, log: EventLog) -> Path | None:
    """Write a non-silent answer to `outbox/<kind>-<name>-<time>.md` and commit it."""
    text = report.result.text.strip()
    if not report.ok or not text:
        return None
    if is_silent(text):
        log(kind, f"{name}: [SILENT], nothing delivered")
        return None
    stem = f"{kind}-{name}-" if name != kind else f"{kind}-"
    path = unique_path(home / "outbox", stem + datetime.now().strftime("%Y%m%d-%H%M%S"))
    from agentd.home import atomic_write

    atomic_write(path, text + "\n")
    commit_delivery(home, [path], f"{kind.capitalize()} report: {name}", kind, report.run_id)
    first = " ".join(text.split())
    log(kind, f"{name}: delivered {path.relative_to(home)}: {first[:120]}")
    return path
