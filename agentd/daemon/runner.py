"""Running a daemon turn through agentd.turn, and delivering what it says.

Every daemon turn (heartbeat, cron, inbox, and `agentd cron run` in a terminal) goes
through `run_job_turn`: it runs under the home's turn lock (agentd/turnlock.py: one turn at
a time, across the daemon, the bridge and the CLI), leaves a marker in
`.agentd/daemon/turn.json` while the turn runs (so a daemon killed mid-turn is recognised
and its leftovers committed as a recovery commit on the next start), and appends one row
per run to `.agentd/daemon/runs.jsonl` for `agentd status`.

An answer of `[SILENT]` means "nothing worth reporting" and is not delivered; anything else
is written to `outbox/` and committed together with the turn's day-log entry. outbox/ is
writable by every turn, untrusted ones included, so delivery goes through agentd.homefs: a
new file under a free name, never written over or through what a turn planted there.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agentd.daemon import state
from agentd.daemon.log import EventLog
from agentd.errors import AgentdError
from agentd.homefs import Root
from agentd.loop import Events
from agentd.turnlock import TurnLock as TurnLock  # moved there; still importable from here

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.llm.types import ToolCall
    from agentd.turn import TurnReport, TurnRequest

SILENT = "[SILENT]"
OUTBOX = "outbox"
MAX_NAMES = 10000  # x.md … x-9999.md: a folder that full is refused, not looped over


def is_silent(text: str) -> bool:
    """`[SILENT]` alone, or at the very start or end of a short reply (models like to add
    a word of politeness around it)."""
    t = text.strip()
    return t == SILENT or (len(t) < 200 and (t.startswith(SILENT) or t.endswith(SILENT)))


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
    """Run one turn for a daemon job; None when it could not start (a config problem, a
    refusal, logged). The caller normally holds the turn lock (the queue's worker, `cron
    run`); `run_turn` takes it otherwise."""
    from agentd.turn import run_turn

    marker = state.daemon_dir(home) / "turn.json"
    started = time.time()
    state.write(marker, {"kind": kind, "name": name, "trigger": req.trigger, "task": req.task,
                         "profile": profile or req.profile, "session": req.session,
                         "started": started, "pid": os.getpid()})
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


def free_names(rel: str) -> Iterator[str]:
    """`rel`, then `stem-2.ext`, `stem-3.ext`… (bounded): the names a new answer or a moved
    inbox file may take, so an earlier one is never overwritten."""
    p = PurePosixPath(rel)
    yield rel
    for n in range(2, MAX_NAMES):
        yield str(p.with_name(f"{p.stem}-{n}{p.suffix}"))


def write_new(root: Root, rel: str, text: str) -> str:
    """Write `text` to a new file at `rel`, else at the next free name beside it; returns
    the name used. Exclusive: whatever is already there (an earlier answer, or a symlink
    the agent planted in outbox/) is never written over or through."""
    for name in free_names(rel):
        try:
            root.write_text(name, text, exclusive=True)
            return name
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    raise FileExistsError(errno.EEXIST, f"no free name for {rel}")


def prepare_outbox(root: Root, log: EventLog, kind: str) -> None:
    """outbox/ as a real folder: a symlink there is replaced (its target untouched)."""
    note = root.ensure_dir(OUTBOX)
    if note:
        log.warn(kind, note)


def commit_delivery(home: Path, files: list[str], subject: str, kind: str,
                    run_id: str | None) -> str | None:
    """Commit delivered files (relative to the home) with the day-log entry of the turn
    that produced them."""
    from agentd import history
    from agentd.daylog import DAILY

    daily = [f for f in history.pending(home).files if f.startswith(DAILY + "/")]
    trailers = {"Agentd-Trigger": kind} | ({"Agentd-Run": run_id} if run_id else {})
    return history.commit(home, files + daily, subject, trailers)


def deliver(home: Path, kind: str, name: str, report: TurnReport, log: EventLog) -> Path | None:
    """Write a non-silent answer to `outbox/<kind>-<name>-<time>.md` and commit it."""
    text = report.result.text.strip()
    if not report.ok or not text:
        return None
    if is_silent(text):
        log(kind, f"{name}: [SILENT], nothing delivered")
        return None
    stem = f"{kind}-{name}-" if name != kind else f"{kind}-"
    with Root(home) as root:
        prepare_outbox(root, log, kind)
        rel = write_new(root, f"{OUTBOX}/{stem}{datetime.now():%Y%m%d-%H%M%S}.md", text + "\n")
    commit_delivery(home, [rel], f"{kind.capitalize()} report: {name}", kind, report.run_id)
    first = " ".join(text.split())
    log(kind, f"{name}: delivered {rel}: {first[:120]}")
    return home / rel
