"""A home's cron jobs and heartbeat as the fleet's tick sees them: read once per head from
a checkout (`read`), stored as JSON in agentd_fleet.homes, and turned into due turns by
the tick (`due`) without touching git.

One way to do each thing: the files are parsed by the daemon's own code (cron.parse via
crontab.read_job/job_files, cronexpr for `schedule:`, checklist.load for HEARTBEAT.md),
all through homefs, since a checkout is agent-written. What differs from the daemon, and
why:

- Due times must be the same on every worker, because they are part of the workflow ID
  (`cron:HOME:JOB:DUE`) that makes a due time fire once fleet-wide. So nothing depends on
  the machine: a job without `timezone` uses `[heartbeat] timezone`, else UTC (the daemon
  uses the machine's zone); `every:` jobs and the heartbeat fire at whole multiples of
  their interval since the Unix epoch (the daemon counts from the last run, which would
  differ between two workers reading it at different moments).
- Catch-up follows the daemon's `[daemon] catch_up`: due times the tick did not cover
  (no worker ran) are coalesced into one run, the latest, if it was due within catch_up
  and after the job was first seen; older ones are skipped.
- The heartbeat: the tick only knows that HEARTBEAT.md has items and whether the due time
  is inside `active_hours`. Which items are due (`every:` times and `when:` gates, which
  run in the sandbox on the home's files) is decided at the start of the heartbeat turn
  by `heartbeat_task`, on the turn's clone: a turn whose items are not due makes no model
  call, as in the daemon. The tick cannot decide it: it has no checkout, and gates must
  not run on a worker's host for every home at every tick.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from agentd.config.settings import Settings, parse_settings, read_config
from agentd.config.tables import CONFIG_NAME
from agentd.daemon import checklist, cron
from agentd.daemon.crontab import CRON, SESSION_PREFIX, build_task, job_files, not_a_file, read_job
from agentd.errors import AgentdError
from agentd.homefs import Root

HEARTBEAT_TASK = ("Heartbeat: the items of memory/HEARTBEAT.md that are due are checked "
                  "when this turn starts.")  # replaced by `heartbeat_task` in the turn
# What `read` reads: a commit that touches none of them leaves the schedule as it was (the
# worker's refresh then skips the read).
SOURCES = (CRON, CONFIG_NAME, checklist.HEARTBEAT)


def zone_of(name: str) -> tzinfo:
    """An IANA zone; empty is UTC (never the machine's zone: see the module)."""
    from zoneinfo import ZoneInfo

    return ZoneInfo(name) if name else UTC


def settings_of(root: Root) -> tuple[Settings, str]:
    """(Settings, problem) from the checkout's agentd.toml, read by config's read_config
    (through homefs: a symlink or FIFO is refused; capped at its MAX_CONFIG); a bad file
    gives the defaults and says why in one line naming it (empty when all is well)."""
    try:
        table = read_config(root)
    except AgentdError as e:  # it names the file
        return parse_settings({}), str(e)
    try:
        return parse_settings(table), ""
    except AgentdError as e:
        return parse_settings({}), f"{CONFIG_NAME}: {e}"


def _job(job: cron.CronJob, default_zone: str) -> dict[str, Any]:
    return {"kind": job.kind, "value": job.value, "prompt": job.prompt, "model": job.model,
            "timezone": job.timezone or default_zone, "enabled": job.enabled,
            "session": job.session, "seconds": job.seconds, "spec": job.spec,
            "at": job.at.isoformat() if job.at else None}


def read(checkout: Path) -> dict[str, Any]:
    """What the tick needs of a home, JSON-able: its cron jobs (bad ones as errors naming
    the file), its heartbeat settings and whether HEARTBEAT.md has items."""
    with Root(checkout) as root:
        settings, problem = settings_of(root)
        hb = settings.heartbeat
        jobs: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        try:
            files = job_files(root)
        except OSError as e:  # homefs.Refused too
            files, errors["cron/"] = [], f"cron/ not read: {e}"
        for name, kind in files:
            if kind != "file":
                errors[name] = not_a_file(kind)
                continue
            try:
                jobs[name] = _job(read_job(root, name), hb.timezone)
            except (OSError, ValueError) as e:
                errors[name] = str(e)
    items, problems = checklist.load(checkout)
    return {"jobs": jobs, "errors": errors,
            "problem": f"{problem}; the defaults apply" if problem else "",
            "catch_up": settings.daemon.catch_up.seconds,
            "heartbeat": {"enabled": hb.enabled, "every": hb.every.seconds,
                          "active_hours": hb.active_hours, "timezone": hb.timezone,
                          "model": hb.model or None, "items": len(items),
                          "problems": problems}}


def merge(old: dict[str, Any] | None, new: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`new` with each job's `seen` (when its spec was first seen: the catch-up baseline)
    kept from `old` when the spec is unchanged, else `now`."""
    before = (old or {}).get("jobs") or {}
    for name, job in new["jobs"].items():
        prev = before.get(name) or {}
        job["seen"] = (prev.get("seen") if prev.get("spec") == job["spec"] and prev.get("seen")
                       else now.astimezone(UTC).isoformat())
    hb_old = (old or {}).get("heartbeat") or {}
    new["heartbeat"]["seen"] = hb_old.get("seen") or now.astimezone(UTC).isoformat()
    return new


def stamp(when: datetime) -> str:
    """A due time as it appears in workflow IDs: UTC, ISO 8601, to the second."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _every(seconds: float, after: datetime, until: datetime) -> Iterator[datetime]:
    """Whole multiples of `seconds` since the epoch in (after, until]."""
    k = math.floor(after.timestamp() / seconds) + 1
    while k * seconds <= until.timestamp():
        yield datetime.fromtimestamp(k * seconds, UTC)
        k += 1


def fire_times(job: dict[str, Any], after: datetime, until: datetime) -> Iterator[datetime]:
    """A job's due times in (after, until], in UTC."""
    tz = zone_of(job["timezone"])
    if job["kind"] == "every":
        yield from _every(max(float(job["seconds"]), 1.0), after, until)
    elif job["kind"] == "at":
        when = cron.localize(datetime.fromisoformat(job["at"]), tz).astimezone(UTC)
        if after < when <= until:
            yield when
    else:
        from agentd.daemon.cronexpr import compile_expr

        expr, t = compile_expr(job["value"]), after
        while (t := expr.next_after(t, tz)) is not None and t <= until:  # type: ignore[assignment]
            yield t


def _pick(times: list[datetime], on_time: datetime) -> list[datetime]:
    """Every on-time due time, and of those before `on_time` (missed while no tick ran)
    only the latest: the daemon coalesces missed runs into one catch-up run."""
    late = [t for t in times if t <= on_time]
    return late[-1:] + [t for t in times if t > on_time]


def _window(entry: dict[str, Any], schedule: dict[str, Any], since: datetime,
            until: datetime) -> datetime:
    """Where a job's due times start counting: not before catch_up, nor before it existed
    (but an `at` job written just after its time still runs, within catch_up, as in the
    daemon)."""
    start = max(since, until - timedelta(seconds=float(schedule.get("catch_up", 0))))
    seen = entry.get("seen")
    if not seen or entry.get("kind") == "at":
        return start
    return max(start, datetime.fromisoformat(seen))


def cron_request(name: str, job: dict[str, Any], when: datetime) -> dict[str, Any]:
    """The turn of one due time, as the daemon builds it (crontab.execute)."""
    from agentd.outbox import OUTBOX, Delivery
    from agentd.turn import TurnRequest

    local = when.astimezone(zone_of(job["timezone"]))
    shape = cron.CronJob(name, job["kind"], job["value"], job["prompt"])
    req = TurnRequest(build_task(shape, local), Path("."), trigger="cron",
                      model=job["model"],
                      session=SESSION_PREFIX + name if job["session"] == "continue" else None,
                      delivery=Delivery(f"{OUTBOX}/{CRON}-{name}-{local:%Y%m%d-%H%M%S}.md"),
                      title=f"Cron: {name}")
    return req.to_json()


def heartbeat_request(hb: dict[str, Any], when: datetime) -> dict[str, Any]:
    from agentd.outbox import OUTBOX, Delivery
    from agentd.turn import TurnRequest

    local = when.astimezone(zone_of(hb["timezone"]))
    req = TurnRequest(HEARTBEAT_TASK, Path("."), trigger="heartbeat", model=hb["model"],
                      delivery=Delivery(f"{OUTBOX}/heartbeat-{local:%Y%m%d-%H%M%S}.md"),
                      title="Heartbeat")
    return req.to_json()


def due(schedule: dict[str, Any], home: str, since: datetime, until: datetime, *,
        on_time: datetime | None = None, heartbeat_floor: float = 0.0
        ) -> list[tuple[str, dict[str, Any]]]:
    """(workflow ID, request) of each turn due in (since, until]. Due times up to
    `on_time` (default: `since`) were missed by the ticks and are coalesced (see `_pick`);
    the heartbeat fires at most every `heartbeat_floor` seconds (a fleet-wide floor: an
    agent-written agentd.toml must not make a home tick every second)."""
    from agentd.config import parse_hours
    from agentd.daemon.heartbeat import in_active_hours

    on_time = on_time or since
    out: list[tuple[str, dict[str, Any]]] = []
    for name, job in sorted((schedule.get("jobs") or {}).items()):
        if not job.get("enabled", True):
            continue
        times = list(fire_times(job, _window(job, schedule, since, until), until))
        for when in _pick(times, on_time):
            out.append((f"cron:{home}:{name}:{stamp(when)}", cron_request(name, job, when)))
    hb = schedule.get("heartbeat") or {}
    if hb.get("enabled") and hb.get("items"):
        every = max(float(hb["every"]), heartbeat_floor, 1.0)
        start = _window(hb, schedule, since, until)
        window = parse_hours(hb.get("active_hours") or "")
        tz = zone_of(hb.get("timezone") or "")
        times = [t for t in _every(every, start, until)
                 if in_active_hours(t.astimezone(tz), window)]
        for when in _pick(times, on_time):
            out.append((f"heartbeat:{home}:{stamp(when)}", heartbeat_request(hb, when)))
    return out


async def heartbeat_task(clone: Path, settings: Settings, now: datetime) -> str | None:
    """For the heartbeat turn, on its clone (the runtime state restored in .agentd/): the
    task of the items of HEARTBEAT.md due now, or None when none is (then the turn makes no
    model call). Gates run as the daemon runs them (heartbeat.evaluate, in the sandbox);
    the items' times are saved to .agentd/daemon/heartbeat.json, which travels with the
    home. Call it inside a checkpointed step: gates must not run twice."""
    import asyncio
    import time

    from agentd.daemon import heartbeat

    items, problems = await asyncio.to_thread(checklist.load, clone)
    entries = await asyncio.to_thread(heartbeat.load_state, clone)
    slack = settings.heartbeat.every.seconds / 2
    found, _ = await heartbeat.evaluate(clone, settings, items, entries, time.time(), slack,
                                        problems)
    started = time.time()
    for d in found:
        entries.setdefault(d.item.key, {})["run"] = started
    await asyncio.to_thread(heartbeat.save_state, clone, entries, items, started)
    if not found:
        return None
    return checklist.build_task(found, now.astimezone(zone_of(settings.heartbeat.timezone)))
