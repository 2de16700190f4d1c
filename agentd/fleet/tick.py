"""Cron and heartbeat for the whole fleet: one tick workflow per `tick_every` seconds,
fired by a DBOS schedule (DBOS gives each firing the workflow ID `sched-NAME-TIME`, so
however many workers run the schedule, a time fires one tick).

A tick reads every home's stored schedule (schedule.py; the worker keeps it current) and
enqueues each due cron or heartbeat turn under the ID `cron:HOME:JOB:DUE` or
`heartbeat:HOME:DUE`. The ID is the idempotency key: the window a tick looks at overlaps
the previous tick's (two ticks of margin), so a late or lost tick loses nothing, and a due
time two ticks see is still enqueued once.

Due times missed while no worker ran: the window starts at the last tick that completed
(found in DBOS's own records, so there is no bookkeeping of ours to get wrong), bounded by
each home's `[daemon] catch_up`; those missed runs are coalesced into one catch-up run per
job, the latest, as the daemon does after a restart; older ones are skipped.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from dbos import DBOS

from agentd.fleet import db, enqueue, schedule

TICK = "agentd.fleet.tick"  # the workflow's name, and its DBOS schedule's (one per fleet)
OVERLAP = 2  # ticks: what each window shares with the ones before it
EVEN = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)  # the divisors of 60: an even rhythm

_db_url: str | None = None


def configure(db_url: str) -> None:
    """Where the homes' schedules are (called by the worker before launch)."""
    global _db_url
    _db_url = db_url


def cron_for(seconds: float) -> str:
    """A 6-field cron expression (seconds first) firing every `seconds`, rounded to a
    divisor of a minute, an hour or a day so the rhythm is even."""
    s = max(1, round(seconds))
    if s < 60:
        step = max(d for d in EVEN if d <= s)
        return f"*/{step} * * * * *"
    m = round(s / 60)
    if m < 60:
        step = max(d for d in EVEN if d <= m)
        return f"0 */{step} * * * *"
    h = max(d for d in (1, 2, 3, 4, 6, 8, 12) if d <= max(1, round(m / 60)))
    return f"0 0 */{h} * * *"


def ensure_schedule(tick_every: float) -> str:
    """Create the tick's DBOS schedule, or replace it when `tick_every` changed. Two workers
    starting together may both create it: the loser's error is ignored, the result is one
    schedule."""
    from dbos._error import DBOSException

    want = cron_for(tick_every)
    have = DBOS.get_schedule(TICK)
    if have is not None and have["schedule"] == want:
        return want
    if have is not None:
        DBOS.delete_schedule(TICK)
    with contextlib.suppress(DBOSException):  # another worker created it meanwhile
        DBOS.create_schedule(schedule_name=TICK, workflow_fn=fleet_tick, schedule=want)
    return want


def _previous(until: datetime) -> datetime | None:
    """When the last completed tick before this one was due (DBOS's records)."""
    done = DBOS.list_workflows(name=TICK, status="SUCCESS", sort_desc=True, limit=5,
                               load_output=False)
    times = [w.input["args"][0] for w in done
             if w.input and w.input.get("args") and isinstance(w.input["args"][0], datetime)]
    earlier = [t.astimezone(UTC) for t in times if t.astimezone(UTC) < until]
    return max(earlier) if earlier else None


@DBOS.step(name="agentd.fleet.tick.plan")
def plan(until_iso: str, previous_iso: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(workflow ID, home, request) of every turn due up to `until`: one read of the homes'
    schedules, nothing enqueued (the workflow does that, one checkpointed enqueue each)."""
    assert _db_url is not None, "tick.configure() runs before DBOS launches"
    until = datetime.fromisoformat(until_iso)
    s, rows = db.retrying(_db_url, lambda conn: (db.settings(conn), db.homes(conn)))
    # (db.retrying: a tick due while PostgreSQL restarts waits for it, not fails)
    every = float(s["tick_every"])
    on_time = until - timedelta(seconds=OVERLAP * every)
    since = on_time
    if previous_iso:  # missed ticks: from the last completed one (catch_up bounds it)
        since = min(on_time, datetime.fromisoformat(previous_iso) - timedelta(seconds=every))
    out: list[tuple[str, str, dict[str, Any]]] = []
    for home in rows:
        if home.schedule:
            for wid, request in schedule.due(home.schedule, home.name, since, until,
                                             on_time=on_time,
                                             heartbeat_floor=float(s["heartbeat_every"])):
                out.append((wid, home.name, request))
    return out


@DBOS.workflow(name=TICK)
def fleet_tick(scheduled_at: datetime, context: Any) -> int:
    """One tick: enqueue each due turn under its idempotency key; returns how many were
    due (enqueueing an ID that exists already does nothing)."""
    until = scheduled_at.astimezone(UTC)
    previous = _previous(until)
    due = plan(until.isoformat(), previous.isoformat() if previous else None)
    for wid, home, request in due:
        enqueue.in_process(home, request, wid)
    return len(due)
