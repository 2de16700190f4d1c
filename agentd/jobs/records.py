"""The records of a queued turn (the daemon's heartbeat, cron and inbox turns, `agentd cron
run`, the bridge's turns): the turn itself is agentd.turn.run_turn (which also marks itself
in flight, agentd/inflight.py); around it,

- one row per run in `.agentd/daemon/runs.jsonl`, for `agentd status`;
- log lines: started, one per tool call (`LogEvents`), delivered, ended.

The caller normally holds the turn lock (the queue's worker, `cron run`); `run_turn` takes
it otherwise.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd import state
from agentd.errors import AgentdError
from agentd.home import Home
from agentd.jobs.log import EventLog, LogEvents
from agentd.loop import Events
from agentd.outbox import is_silent

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.turn import TurnReport, TurnRequest


def _record(home: Path, row: dict[str, Any]) -> None:
    state.append_line(Home(home).runs_log, row)


async def run_job_turn(home: Path, settings: Settings, req: TurnRequest, kind: str,
                       name: str, log: EventLog, events: Events | None = None, *,
                       base: Path | None = None, on_start: Callable[[], None] | None = None,
                       reraise: bool = False) -> TurnReport | None:
    """Run one queued turn with its records; None when it could not start (a config
    problem, a refusal: logged and recorded), or with `reraise` that AgentdError, for a
    caller that tells someone why (the warm path's CLI). `base` and `on_start` are
    run_turn's (a relative replay path; the lock is held)."""
    from agentd.turn import run_turn  # git, the sandbox: not loaded by an idle daemon

    started = time.time()
    log(kind, f"{name}: turn started" + (f" ({req.model})" if req.model else ""))
    row: dict[str, Any] = {"ts": started, "kind": kind, "name": name}
    try:
        report = await run_turn(home, settings, req, events or LogEvents(log, kind, name),
                                base=base or home, on_start=on_start)
    except AgentdError as e:
        log.error(kind, f"{name}: turn not started: {e}")
        _record(home, {**row, "status": "error", "error": str(e), "seconds": 0})
        if reraise:
            raise
        return None
    for warning in report.warnings:  # a malformed skill, say: the agent's to fix
        log.warn(kind, f"{name}: {warning}", run=report.run_id)
    r = report.result
    row.update(status=r.status, error=r.error, steps=r.steps, seconds=report.seconds,
               cost=report.cost, run=report.run_id, model=", ".join(report.models) or
               report.model, silent=r.status == "ok" and is_silent(r.text))
    _record(home, row)
    _log_delivery(log, kind, name, req, report)
    cost = "?" if report.cost is None else f"${report.cost:.4f}"
    detail = f": {r.error}" if r.error else ""
    log(kind, f"{name}: turn {r.status} ({r.steps} step{'s' * (r.steps != 1)}, "
        f"{report.seconds:.1f}s, {cost}){detail}", level="info" if report.ok else "error",
        run=report.run_id)
    return report


def _log_delivery(log: EventLog, kind: str, name: str, req: TurnRequest,
                  report: TurnReport) -> None:
    """What became of the answer of a turn that delivers to outbox/."""
    for note in report.notes:
        log.warn(kind, note)
    if req.delivery is None or req.delivery.outbox is None:
        return
    text = report.result.text.strip()
    if report.delivered:
        log(kind, f"{name}: delivered {report.delivered}: {' '.join(text.split())[:120]}")
    elif report.ok and is_silent(text):
        log(kind, f"{name}: [SILENT], nothing delivered")
