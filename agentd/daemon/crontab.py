"""The live table of cron jobs: files → APScheduler jobs, catch-up, runs and last results.

The scheduler has no job store: at start, and whenever the watcher reports a change under
cron/, `sync` rescans the folder (cheap: a stat per file), re-parses changed files and
adds, replaces or removes their APScheduler jobs. A bad file logs one error naming it and
the problem, and only that job stops; the others keep running.

What survives a restart lives in `.agentd/daemon/cron.json`, per job: `spec` (the schedule
as written), `seen` (when that spec was first scheduled), `last_run` and the last result.
On start, a run missed while the daemon was down (after `max(last_run, seen)`) is caught up
once if it was due within `[daemon] catch_up`; older misses are skipped and logged. `at`
jobs run once; their file stays, listed as done, until someone deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd import state
from agentd.daemon import cron
from agentd.daemon.heartbeat import zone
from agentd.home import Home
from agentd.homefs import Root
from agentd.jobs.log import EventLog
from agentd.jobs.queue import QueuedTurn, TurnQueue
from agentd.jobs.records import run_job_turn
from agentd.loop import Events
from agentd.outbox import OUTBOX, Delivery, is_silent
from agentd.session import NAME

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.turn import TurnReport

CRON = "cron"
SESSION_PREFIX = "cron-"  # a `session: continue` job's transcript is cron-<name>.jsonl
MAX_NAME = 128 - len(SESSION_PREFIX)  # so that cron-<name> is still a session name


def job_files(root: Root) -> list[tuple[str, str]]:
    """(job name, kind) of every `cron/*.md`, nothing followed: kind is "file" for a regular
    file, else "link", "dir" or "other" (a job that is not a file never runs). Empty when
    cron/ is missing; Refused when it is a symlink."""
    if not root.exists(CRON):
        return []
    return [(n[:-3], kind) for n, kind in root.listdir(CRON)
            if n.endswith(".md") and not n.startswith(".")]


def check_job_name(name: str) -> None:
    """ValueError unless `name` may name a job. The name is an agent-written file stem, and
    it becomes a session file name (cron-<name>.jsonl), an outbox file name and log text,
    so it must pass the session-name rule (agentd/session.py NAME: ASCII letters, digits,
    '_', '-', '.', no leading '.' or '-') with room for the prefix; a newline, a
    right-to-left override or a 200-character stem would otherwise name those files."""
    if not (NAME.fullmatch(name) and len(name) <= MAX_NAME):
        raise ValueError(f"not a job name: rename it to letters, digits, '_', '-' and '.', "
                         f"at most {MAX_NAME}, not starting with '.' or '-'")


def shown(name: str) -> str:
    """A job name fit for a log line or an error: a refused one quoted with escapes."""
    return name if NAME.fullmatch(name) and len(name) <= MAX_NAME else ascii(name)


def read_job(root: Root, name: str) -> cron.CronJob:
    """cron/<name>.md parsed. The file is agent-written: read through homefs (a symlink or
    FIFO is refused with OSError, never followed or opened; at most MAX_BYTES+1 read), and
    only when its name is one (`check_job_name`)."""
    check_job_name(name)
    return cron.parse(name, root.read_bytes(f"{CRON}/{name}.md", limit=cron.MAX_BYTES + 1))


def not_a_file(kind: str) -> str:
    """Why a cron entry of this kind (from `job_files`) is not a job."""
    what = {"link": "a symlink, which agentd does not follow", "dir": "a folder"}.get(
        kind, "not a regular file")
    return f"it is {what}; make it a regular file"


def state_path(home: Path) -> Path:
    return Home(home).daemon / "cron.json"


def job_zone(job: cron.CronJob, settings: Settings) -> tzinfo:
    return zone(job.timezone or settings.heartbeat.timezone)


def anchor_of(entry: dict[str, Any], tz: tzinfo) -> datetime | None:
    ts = entry.get("last_run") or entry.get("seen")
    return datetime.fromtimestamp(ts, tz) if ts else None


def build_task(job: cron.CronJob, when: datetime) -> str:
    return (f"Scheduled job cron/{job.name}.md ({job.kind}: {job.value}), "
            f"{when:%Y-%m-%d %H:%M %Z}:\n\n{job.prompt}\n\n(If there is nothing worth "
            "reporting, answer exactly [SILENT].)")


async def execute(home: Path, settings: Settings, job: cron.CronJob, log: EventLog,
                  events: Events | None = None) -> TurnReport | None:
    """Run one job now (the caller holds the turn lock): the turn (which delivers its
    answer to outbox/), and its last result. The daemon and `agentd cron run` both come
    through here."""
    from agentd.turn import TurnRequest  # not loaded by an idle daemon

    started = time.time()
    tz = job_zone(job, settings)

    def begin(data: dict[str, Any]) -> None:
        data.setdefault(job.name, {})["last_run"] = started

    await asyncio.to_thread(state.update, state_path(home), begin)
    now = datetime.now(tz)
    answer = f"{OUTBOX}/{CRON}-{job.name}-{datetime.now():%Y%m%d-%H%M%S}.md"
    req = TurnRequest(build_task(job, now), home, trigger="cron", model=job.model,
                      session=SESSION_PREFIX + job.name if job.session == "continue" else None,
                      delivery=Delivery(answer), title=f"Cron: {job.name}")
    report = await run_job_turn(home, settings, req, CRON, job.name, log, events)
    delivered = report.delivered if report else None
    r = report.result if report else None
    result = {"last_status": r.status if r else "error",
              "last_summary": ((r.error or (" ".join(r.text.split())[:160]
                                            if not is_silent(r.text) else "[SILENT]"))
                               if r else "the turn could not start (see the log)"),
              "last_run_id": report.run_id if report else None,
              "last_output": delivered}
    await asyncio.to_thread(state.update, state_path(home),
                            lambda d: d.setdefault(job.name, {}).update(result))
    return report


async def run_now(home: Path, settings: Settings, name: str, log: EventLog,
                  events: Events | None = None) -> TurnReport | None:
    """`agentd cron run NAME`: the job's turn now, in the foreground, exactly as the daemon
    runs it; waits while the daemon (or another `cron run`) is in a turn."""
    from agentd.errors import AgentdError
    from agentd.turnlock import turn_lock

    stem = name.removesuffix(".md")
    with Root(home) as root:
        try:
            job = read_job(root, stem)
        except FileNotFoundError:
            known = ", ".join(shown(n) for n, kind in job_files(root) if kind == "file") or "none"
            raise AgentdError(f"no cron job {name!r} in {home / CRON} (jobs: {known})") from None
        except (OSError, ValueError) as e:
            raise AgentdError(f"cron/{shown(stem)}.md: {e}") from None

    def waiting(holder: str) -> None:
        log(CRON, f"another turn is running in this home ({holder}); waiting…")

    async with turn_lock(home, CRON, job.name, waiting):
        return await execute(home, settings, job, log, events)


class CronTable:
    def __init__(self, home: Path, settings: Callable[[], Settings], scheduler: Any,
                 queue: TurnQueue, log: EventLog, on_change: Callable[[], None]):
        self.home, self.settings, self.scheduler = home, settings, scheduler
        self.queue, self.log, self.on_change = queue, log, on_change
        self.jobs: dict[str, cron.CronJob] = {}
        self.errors: dict[str, str] = {}
        self._seen: dict[str, tuple[int, int, int]] = {}
        self.problem: str | None = None  # why cron/ itself could not be read

    def _scan(self) -> tuple[dict[str, tuple[int, int, int]], dict[str, Any]]:
        """(signatures of all files, parse results of the changed ones) — in a thread.
        Nothing is followed: a symlinked or special cron file is an error naming it; a
        symlinked cron/ folder has no jobs (`problem` says why)."""
        sigs: dict[str, tuple[int, int, int]] = {}
        kinds: dict[str, str] = {}
        with Root(self.home) as root:
            try:
                files, self.problem = job_files(root), None
            except OSError as e:
                files, self.problem = [], f"cron/ not read: {e}"
            for name, kind in files:
                with contextlib.suppress(OSError):
                    st = root.lstat(f"{CRON}/{name}.md")
                    sigs[name], kinds[name] = (st.st_mtime_ns, st.st_size, st.st_ino), kind
            parsed: dict[str, Any] = {}
            for name, sig in sigs.items():
                if self._seen.get(name) == sig:
                    continue
                if kinds[name] != "file":
                    parsed[name] = not_a_file(kinds[name])
                    continue
                try:
                    job = read_job(root, name)
                    parsed[name] = (job, cron.trigger_for(job, job_zone(job, self.settings()),
                                                          datetime.now().astimezone()))
                except (OSError, ValueError) as e:
                    parsed[name] = str(e)
        return sigs, parsed

    async def sync(self, starting: bool = False) -> None:
        told = self.problem
        sigs, parsed = await asyncio.to_thread(self._scan)
        if self.problem and self.problem != told:
            self.log.error(CRON, f"{self.problem}; no job runs until it is a real folder")
        for name in [n for n in self._seen if n not in sigs]:
            self._remove(name)
            self.log(CRON, f"{name}: removed (cron/{name}.md is gone)")
        self._seen = sigs
        for name, res in parsed.items():
            if isinstance(res, str):
                self._remove(name)
                self.errors[name] = res
                self.log.error(CRON, f"cron/{shown(name)}.md: {res}; this job will not run "
                               "until the file is fixed", job=name)
                continue
            self.errors.pop(name, None)
            await self._schedule(res[0], starting)
        if parsed or starting:
            self.on_change()

    def _remove(self, name: str) -> None:
        self.jobs.pop(name, None)
        self.errors.pop(name, None)
        if self.scheduler.get_job(f"cron:{name}"):
            self.scheduler.remove_job(f"cron:{name}")

    async def _schedule(self, job: cron.CronJob, starting: bool) -> None:
        s = self.settings()
        tz = job_zone(job, s)
        now = datetime.now(tz)
        known = await asyncio.to_thread(state.read, state_path(self.home), {})
        entry = dict((known if isinstance(known, dict) else {}).get(job.name) or {})
        if entry.get("spec") != job.spec:  # new or rescheduled: misses count from now
            entry.update(spec=job.spec, seen=now.timestamp())
            if job.kind == "at":
                entry.pop("last_run", None)
            await asyncio.to_thread(state.update, state_path(self.home), lambda d: d.update(
                {job.name: {**d.get(job.name, {}), **entry}}))
        self._remove(job.name)
        self.jobs[job.name] = job
        if not job.enabled:
            self.log(CRON, f"{job.name}: disabled (enabled: false)")
            return
        grace = s.daemon.catch_up.seconds
        if job.kind == "at":
            when = cron.localize(job.at or now, tz)
            if entry.get("last_run"):
                self.log(CRON, f"{job.name}: already ran at {job.value}; delete the file or "
                         "change `at` to run it again")
                return
            if when <= now:
                self._late(job, when, now, grace)
                return
        trigger = cron.trigger_for(job, tz, anchor_of(entry, tz) or now)
        if starting and self._catch_up(job, trigger, entry, tz, now, grace) and (
                job.kind == "every"):
            trigger = cron.trigger_for(job, tz, now)  # the catch-up run restarts the rhythm
        self.scheduler.add_job(self._fire, trigger, args=[job.name], id=f"cron:{job.name}",
                               name=job.name, replace_existing=True,
                               misfire_grace_time=int(grace), coalesce=True, max_instances=1)
        nxt = self.next_run(job.name)
        when_next = f"; next {nxt:%Y-%m-%d %H:%M:%S %Z}" if nxt else ""
        self.log(CRON, f"{job.name}: scheduled ({job.kind} {job.value}){when_next}")

    def _late(self, job: cron.CronJob, when: datetime, now: datetime, grace: float) -> bool:
        """A run that was due at `when` did not happen: catch up once if recent enough."""
        if now - when <= timedelta(seconds=grace):
            self.log(CRON, f"{job.name}: missed its run at {when:%Y-%m-%d %H:%M}; catching up")
            self.fire(job.name)
            return True
        self.log.warn(CRON, f"{job.name}: missed its run at {when:%Y-%m-%d %H:%M}, longer ago "
                      f"than catch_up ({self.settings().daemon.catch_up}); skipped")
        return False

    def _catch_up(self, job: cron.CronJob, trigger: Any, entry: dict[str, Any], tz: tzinfo,
                  now: datetime, grace: float) -> bool:
        """At start: did the job miss a run while the daemon was down? (See the module.)"""
        stamps = [t for t in (entry.get("last_run"), entry.get("seen")) if t]
        if not stamps:
            return False
        since = datetime.fromtimestamp(max(stamps), tz)
        window = max(since, now - timedelta(seconds=grace))
        missed = cron.last_fire(trigger, window, now) or cron.last_fire(trigger, since, window)
        return bool(missed) and self._late(job, missed, now, grace)

    async def _fire(self, name: str) -> None:
        """What APScheduler calls: a coroutine, so it runs on the loop, not in a thread."""
        self.fire(name)

    def fire(self, name: str) -> None:
        """Queue the job's run (cheap, never blocks)."""
        job = self.jobs.get(name)
        if job is None:
            return
        if not self.queue.put(QueuedTurn("cron", name, lambda: self._run(name))):
            if self.queue.has(f"cron:{name}"):
                self.log(CRON, f"{name}: previous run still waiting; this one skipped")
            else:
                state.update(state_path(self.home), lambda d: d.setdefault(name, {}).update(
                    last_status="skipped", last_summary="queue full"))

    async def _run(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None:
            self.log(CRON, f"{name}: deleted before it ran; skipped")
            return
        await execute(self.home, self.settings(), job, self.log)
        self.on_change()

    def next_run(self, name: str) -> datetime | None:
        j = self.scheduler.get_job(f"cron:{name}")
        return j.next_run_time if j else None
