"""`agentd fleet worker`: one process per machine that runs turns and ticks for every home.

What it does, each on its own thread so a slow part never delays another:
- DBOS (engine.launch): dequeues up to `concurrency` turns of different homes, fires the
  tick schedule, and at launch resumes this worker's own unfinished turns (a restart with
  the same ID recovers its own).
- liveness (every `beat_every` s): beats, and hands back the turns of workers silent for
  longer than `dead_after` (liveness.py). It recovers others only once it has itself been
  beating without a break for `dead_after`: after PostgreSQL restarts, every worker's
  beats stopped together, and none must take the others for dead.
- refresh (every `refresh_every` s): fetches its share of the homes (`Refresher.mine`)
  into the worker's mirror (workspace.sync_mirror), records a moved head, and re-reads the
  home's schedule (cron jobs, heartbeat) when a commit changed the files it comes from.

Stopping (SIGTERM, SIGINT): DBOS stops dequeuing and firing ticks, running turns get up to
`stop_grace` seconds to finish, then DBOS is destroyed. A turn still running then stays
PENDING under this worker's ID: this worker resumes it when it starts again, or another
does after `dead_after`.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentd.fleet import db, engine, schedule
from agentd.fleet.liveness import Declared, Liveness
from agentd.jobs.log import EventLog, route_library_logs

DECLARED_EXIT = 3  # exit status of a worker that found itself declared dead


def _setting(s: dict[str, Any], key: str) -> float:
    return float(s[key])  # db.settings: every key has its default


class Refresher:
    """Homes' heads and schedules, kept current in the database (see the module)."""

    def __init__(self, worker: str, cache: Path, log: EventLog):
        self.worker, self.cache, self.log = worker, cache, log
        self.problems: dict[str, str] = {}  # home -> the last problem logged (logged once)

    def mine(self, conn: Any, homes: list[db.HomeRow], dead_after: float
             ) -> list[db.HomeRow]:
        """The homes this worker refreshes: each live worker takes the homes whose name
        hashes to its place among the live workers, so a fleet fetches each home once per
        interval, not once per worker. While workers come and go two may share a home for
        an interval, or a home may wait one: a refresh is idempotent and turns fetch their
        own base, so neither matters."""
        live = sorted(w[0] for w in db.live_workers(conn, dead_after))
        if self.worker not in live:
            return homes
        me = live.index(self.worker)
        return [h for h in homes if zlib.crc32(h.name.encode()) % len(live) == me]

    def run(self, conn: Any, settings: dict[str, Any]) -> None:
        for home in self.mine(conn, db.homes(conn), _setting(settings, "dead_after")):
            try:
                self.home(conn, home)
                if self.problems.pop(home.name, None):
                    self.log("refresh", f"{home.name}: fetched again")
            except Exception as e:  # one home's trouble must not stop the others
                if db.lost(e):
                    raise  # the database, not this home: `every` reconnects
                msg = " ".join(str(e).split())[:300] or type(e).__name__
                if self.problems.get(home.name) != msg:
                    self.log.error("refresh", f"{home.name}: {msg}", home=home.name)
                self.problems[home.name] = msg

    def home(self, conn: Any, home: db.HomeRow) -> None:
        from agentd.fleet import workspace

        head = workspace.sync_mirror(self.cache, home.name, home.git_url, home.branch)
        if head != home.head:
            db.set_head(conn, home.name, head)
        if home.schedule_head == head:
            return
        if home.schedule and home.schedule_head and not self.touched(home, head):
            db.set_schedule(conn, home.name, head, home.schedule)  # most turns: no checkout
            return
        with tempfile.TemporaryDirectory(prefix=f"schedule-{home.name}-",
                                         dir=self.cache) as tmp:
            clone = workspace.checkout(self.cache, home.name, head, Path(tmp) / "home",
                                       home.branch)
            fresh = schedule.read(clone)
        merged = schedule.merge(home.schedule, fresh, datetime.now(UTC))
        db.set_schedule(conn, home.name, head, merged)
        bad = merged["errors"]
        self.log("refresh", f"{home.name}: schedule read at {head[:12]}: "
                 f"{len(merged['jobs'])} cron job{'s' * (len(merged['jobs']) != 1)}, "
                 f"heartbeat {'on' if merged['heartbeat']['enabled'] else 'off'} "
                 f"({merged['heartbeat']['items']} items)", home=home.name)
        for name, why in sorted(bad.items()):
            self.log.error("refresh", f"{home.name}: cron/{name}.md: {why}; it will not run",
                           home=home.name)
        for why in [merged["problem"], *merged["heartbeat"]["problems"]]:
            if why:
                self.log.error("refresh", f"{home.name}: {why}", home=home.name)


    def touched(self, home: db.HomeRow, head: str) -> bool:
        """Whether the commits since the schedule was read changed what it is read from
        (cron/, agentd.toml, memory/HEARTBEAT.md), in the worker's own mirror."""
        from agentd.fleet import workspace

        assert home.schedule_head is not None
        return workspace.changed(self.cache, home.name, home.schedule_head, head,
                                 schedule.SOURCES)


def every(stop: threading.Event, url: str, seconds: Callable[[dict[str, Any]], float],
          work: Callable[[Any, dict[str, Any]], None], name: str, log: EventLog) -> None:
    """Run `work(conn, settings)` every `seconds(settings)` until `stop`; a lost database
    (db.lost) is logged once and reconnected to, as many times as it takes."""
    conn: Any = None
    down = False
    wait = 1.0
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = db.connect(url)
            s = db.settings(conn)
            work(conn, s)
            if down:
                log(name, "database reachable again")
                down = False
            wait = seconds(s)
        except Declared:
            raise
        except Exception as e:
            if not db.lost(e):  # a bug here must not silently stop the beats
                log.error(name, f"{type(e).__name__}: {e}")
                wait = 5.0
            else:
                if not down:
                    log.error(name, f"database unreachable ({db.first_line(e)}); retrying")
                    down = True
                if conn is not None:
                    conn.close()
                conn, wait = None, 1.0
        stop.wait(wait)
    if conn is not None:
        conn.close()


class Beats:
    """The liveness thread's work: beat, then recover the dead once trusted to judge."""

    def __init__(self, live: Liveness, log: EventLog):
        self.live, self.log = live, log
        self.since: float | None = None  # when our beats last started without a break
        self.last = 0.0

    def __call__(self, conn: Any, s: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.since is None or now - self.last > 2 * _setting(s, "beat_every") + 5:
            self.since = now  # a break in our own beats: we cannot judge others yet
        self.live.beat(conn)
        self.last = now
        dead_after = _setting(s, "dead_after")
        if now - self.since >= dead_after:
            self.live.recover(conn, dead_after)


def concurrency_note(conn: Any, worker: str, concurrency: int, dead_after: float
                     ) -> str | None:
    """What to tell the operator when live workers asked for other `--concurrency` values.

    DBOS 3.4 keeps a queue's per-worker limit (worker_concurrency) in the database, in
    the queue's row, and every worker reloads that row as it polls: the limit is
    fleet-wide, and the last worker to start sets it for all (no per-process setting
    exists). So `--concurrency N` means "every worker runs at most N turns at once" and
    should be the same on every machine; a worker that changes it says so."""
    others = sorted({int(w[3]) for w in db.live_workers(conn, dead_after) if w[0] != worker}
                    - {concurrency})
    if not others:
        return None
    return (f"--concurrency is fleet-wide (DBOS keeps the per-worker limit in the "
            f"database): every worker now runs at most {concurrency} turn"
            f"{'s' * (concurrency != 1)} at once, where live workers had asked for "
            f"{', '.join(map(str, others))}; give every worker the same --concurrency")


def main(db_url: str, worker_id: str, concurrency: int, cache: Path, log: EventLog) -> int:
    """Run a worker until SIGTERM or SIGINT; the exit status."""
    from dbos import DBOS

    from agentd.fleet import tick, turnflow

    db.check_name(worker_id)
    with db.connect(db_url) as conn:
        s = db.settings(conn)
    turnflow.configure(db_url, cache)
    tick.configure(db_url)
    engine.launch(db_url, worker_id, concurrency)
    live = Liveness(worker_id, concurrency, log)
    with db.connect(db_url) as conn:
        note = concurrency_note(conn, worker_id, concurrency, _setting(s, "dead_after"))
        live.beat(conn)  # not before launch, which can take long: silence would look dead
    route_library_logs(log)  # DBOS's warnings as our log lines, its chatter dropped
    tick.ensure_schedule(_setting(s, "tick_every"))
    log("worker", f"{worker_id} started: {concurrency} turn{'s' * (concurrency != 1)} at "
        f"once, tick every {_setting(s, 'tick_every'):g}s, workers silent for "
        f"{_setting(s, 'dead_after'):g}s are recovered", worker=worker_id, pid=os.getpid())
    if note:
        log.warn("worker", note)

    stop = threading.Event()
    declared: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def beats() -> None:
        try:
            every(stop, db_url, lambda s: _setting(s, "beat_every"), Beats(live, log),
                  "worker", log)
        except Declared as e:
            declared.append(str(e))
            stop.set()

    refresher = Refresher(worker_id, cache, log)
    threads = [threading.Thread(target=beats, name="agentd-beat", daemon=True),
               threading.Thread(target=every, name="agentd-refresh", daemon=True, args=(
                   stop, db_url, lambda s: _setting(s, "refresh_every"),
                   refresher.run, "refresh", log))]
    for t in threads:
        t.start()
    while not stop.wait(1.0):
        pass
    if declared:
        log.error("worker", f"{worker_id} was declared dead by {declared[0]}, which handed "
                  "its turns to other workers; exiting at once so none runs twice")
        os._exit(DECLARED_EXIT)  # running turns must not go on beside their recovery
    return shutdown(worker_id, log, _setting(s, "stop_grace"), DBOS)


def shutdown(worker_id: str, log: EventLog, grace: float, dbos: Any) -> int:
    log("worker", f"{worker_id} stopping: no new turns; running ones get up to {grace:g}s")
    started = time.monotonic()
    dbos.destroy(workflow_completion_timeout_sec=max(1, int(grace)))
    if time.monotonic() - started >= grace:
        log.warn("worker", f"{worker_id}: turns still running after {grace:g}s stop here; "
                 "they resume when this worker starts again, or on another after dead_after")
        os._exit(0)  # a stop asked for; their threads would keep the interpreter alive
    log("worker", f"{worker_id} stopped")
    return 0
