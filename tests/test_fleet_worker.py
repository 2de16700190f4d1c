"""`agentd fleet worker`: the schedule a home's files make (pure), and real worker processes
on a real PostgreSQL (tests/pgkit.py): a cron due time fires once with two workers ticking,
a worker killed -9 mid-turn has its turn finished by another after `dead_after` (and not
before), a restarted worker finishes its own. The turn is tests/fleet_faketurn.py's
stand-in (these tests are about processes; the real turn has its own tests, and a real
worker runs real cron turns in tests/test_fleet_cli.py's end-to-end test)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentd.fleet import schedule
from tests.daemonkit import wait_for
from tests.fleetfake import copy_db
from tests.pgkit import PgCluster, requires_postgres

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)


# -- the schedule (pure) -------------------------------------------------------------------

def write_home(path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def ids(found: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [wid for wid, _ in found]


def test_due_times_are_the_same_everywhere_and_name_the_turn(tmp_path: Path) -> None:
    home = write_home(tmp_path, {
        "cron/ping.md": "---\nevery: 20s\n---\nping\n",
        "cron/daily.md": "---\nschedule: 0 9 * * *\ntimezone: Europe/Berlin\n---\nreport\n",
        "cron/off.md": "---\nevery: 1s\nenabled: false\n---\nnever\n",
        "cron/once.md": "---\nat: 2026-12-01T09:00:30\n---\nonce\n"})
    s = schedule.merge(None, schedule.read(home), T0 - timedelta(days=1))
    found = schedule.due(s, "h1", T0, T0 + timedelta(seconds=60))
    assert ids(found) == ["cron:h1:once:2026-12-01T09:00:30Z",
                          "cron:h1:ping:2026-12-01T09:00:20Z",
                          "cron:h1:ping:2026-12-01T09:00:40Z",
                          "cron:h1:ping:2026-12-01T09:01:00Z"]
    req = dict(found[1][1])
    assert req["trigger"] == "cron" and req["title"] == "Cron: ping"
    assert "ping" in req["task"]
    assert req["delivery"]["outbox"] == "outbox/cron-ping-20261201-090020.md"
    # 09:00 in Berlin is 08:00 UTC: a zone is named, never the machine's
    morning = schedule.due(s, "h1", T0 - timedelta(hours=2), T0 - timedelta(minutes=30))
    assert "cron:h1:daily:2026-12-01T08:00:00Z" in ids(morning)
    # a job without a zone and no [heartbeat] timezone is UTC
    assert s["jobs"]["ping"]["timezone"] == ""
    assert schedule.zone_of("") is UTC


def test_missed_due_times_are_coalesced_into_one_within_catch_up(tmp_path: Path) -> None:
    home = write_home(tmp_path, {"cron/ping.md": "---\nevery: 10m\n---\nping\n",
                                 "agentd.toml": '[daemon]\ncatch_up = "1h"\n'})
    s = schedule.merge(None, schedule.read(home), T0 - timedelta(days=1))
    until = T0 + timedelta(hours=5)
    # no tick for 5 hours: of the runs older than the on-time window, only the latest
    # (and only within catch_up) fires; the on-time ones all do
    found = schedule.due(s, "h", T0, until, on_time=until - timedelta(minutes=15))
    assert ids(found) == ["cron:h:ping:2026-12-01T13:40:00Z", "cron:h:ping:2026-12-01T13:50:00Z",
                          "cron:h:ping:2026-12-01T14:00:00Z"]
    # a job first seen after the due time does not catch it up
    fresh = schedule.merge(None, schedule.read(home), until - timedelta(minutes=8))
    assert ids(schedule.due(fresh, "h", T0, until, on_time=until - timedelta(minutes=15))) \
        == ["cron:h:ping:2026-12-01T14:00:00Z"]
    # but an `at` job written just after its time runs, within catch_up, as in the daemon
    write_home(home, {"cron/late.md": "---\nat: 2026-12-01T13:55:00\n---\nlate\n"})
    late = schedule.merge(None, schedule.read(home), until - timedelta(minutes=1))
    assert "cron:h:late:2026-12-01T13:55:00Z" in ids(schedule.due(late, "h", T0, until))
    (home / "cron/late.md").unlink()
    # an unchanged job keeps when it was first seen; a changed one starts again
    again = schedule.merge(s, schedule.read(home), until)
    assert again["jobs"]["ping"]["seen"] == s["jobs"]["ping"]["seen"]
    (home / "cron/ping.md").write_text("---\nevery: 5m\n---\nping\n")
    changed = schedule.merge(s, schedule.read(home), until)
    assert changed["jobs"]["ping"]["seen"] == until.isoformat()


def test_the_heartbeat_fires_only_with_items_inside_active_hours(tmp_path: Path) -> None:
    home = write_home(tmp_path, {
        "agentd.toml": '[heartbeat]\nevery = "30m"\nactive_hours = "09:00-10:00"\n'
                       'timezone = "UTC"\n'})
    s = schedule.merge(None, schedule.read(home), T0 - timedelta(days=1))
    day = (T0 - timedelta(hours=2), T0 + timedelta(hours=3))
    assert schedule.due(s, "h", *day) == []  # no HEARTBEAT.md items: no turn at all
    write_home(home, {"memory/HEARTBEAT.md": "- tidy notes\n  every: 2h\n"})
    s = schedule.merge(s, schedule.read(home), T0)
    found = schedule.due(s, "h", *day)
    assert ids(found) == ["heartbeat:h:2026-12-01T09:00:00Z", "heartbeat:h:2026-12-01T09:30:00Z"]
    assert found[0][1]["trigger"] == "heartbeat"
    # the fleet's floor: a home cannot tick more often than heartbeat_every
    assert ids(schedule.due(s, "h", *day, heartbeat_floor=3600)) == [
        "heartbeat:h:2026-12-01T09:00:00Z"]


def test_the_heartbeat_turn_decides_what_is_due_on_its_clone(home: Path) -> None:
    """At the start of a heartbeat turn (on its clone, runtime state restored): the due
    items' task, then None while nothing is due, so the turn makes no model call."""
    import asyncio

    from agentd.config import load_settings

    write_home(home, {"memory/HEARTBEAT.md": "- tidy the notes\n  every: 2h\n"})
    settings = load_settings(home)
    first = asyncio.run(schedule.heartbeat_task(home, settings, T0))
    assert first is not None and "tidy the notes" in first
    assert asyncio.run(schedule.heartbeat_task(home, settings, T0)) is None
    assert (home / ".agentd/daemon/heartbeat.json").is_file()  # travels with the home


def test_hostile_files_are_errors_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text('[heartbeat]\nevery = "1s"\n')
    home = write_home(tmp_path / "home", {"cron/ok.md": "---\nevery: 1h\n---\nfine\n",
                                          "cron/bad.md": "no front matter\n"})
    os.symlink(secret, home / "agentd.toml")
    os.symlink(secret, home / "cron/link.md")
    (home / "memory").mkdir()
    os.mkfifo(home / "memory/HEARTBEAT.md")
    s = schedule.read(home)
    assert list(s["jobs"]) == ["ok"]
    assert "symlink" in s["errors"]["link"] and "front matter" in s["errors"]["bad"]
    assert "agentd.toml" in s["problem"] and s["heartbeat"]["every"] == 1800
    assert s["heartbeat"]["items"] == 0 and s["heartbeat"]["problems"]


# -- worker processes on PostgreSQL ---------------------------------------------------------

class Fleet:
    """A database, one home (a bare repo), the fake turn's folder, and worker processes."""

    def __init__(self, url: str, tmp: Path, **settings: float):
        from agentd.fleet import db

        self.url, self.tmp = url, tmp
        self.dir = tmp / "turns"
        self.dir.mkdir()
        (self.dir / "log").touch()
        with db.connect(self.url) as conn:
            for key, value in {"beat_every": 0.5, "tick_every": 1, "refresh_every": 1,
                               "dead_after": 30, "stop_grace": 60, **settings}.items():
                db.set_setting(conn, key, value)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def add_home(self, name: str, files: dict[str, str], work: Path | None = None) -> Path:
        """A home from `files` (in a new repo, or in `work`, an agentd home), pushed to a
        bare remote that the fleet knows it by."""
        from agentd.fleet import db

        remote = self.tmp / f"{name}.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
        if work is None:
            work = self.tmp / f"{name}-work"
            subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
        write_home(work, files)
        for args in (["add", "-A"], ["commit", "-qm", "home"], ["push", "-q", str(remote),
                                                                  "HEAD:main"]):
            subprocess.run(["git", "-C", str(work), *args], check=True, env=git_env())
        with db.connect(self.url) as conn:
            db.add_home(conn, name, str(remote))
        return remote

    def start(self, *workers: str) -> None:
        """Start worker processes together (importing DBOS takes seconds), wait for all."""
        before = {w: self.log_of(w).count(" started: ") for w in workers}
        for worker in workers:
            env = {**git_env(), "PYTHONPATH": str(ROOT), "FAKETURN_DIR": str(self.dir),
                   "FAKETURN_WORKER": worker}
            with open(self.tmp / f"{worker}.log", "ab") as out:
                self.procs[worker] = subprocess.Popen(
                    [sys.executable, "-m", "tests.fleet_workerproc",
                     self.url, worker, "2", str(self.tmp / f"cache-{worker}")],
                    env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        for worker in workers:
            proc = self.procs[worker]
            wait_for(lambda w=worker, p=proc: self.log_of(w).count(" started: ") > before[w]
                     or p.poll() is not None, 90, f"worker {worker} to start")
            assert proc.poll() is None, self.log_of(worker)

    def log_of(self, worker: str) -> str:
        path = self.tmp / f"{worker}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def steps(self) -> list[tuple[str, str, str]]:
        lines = (self.dir / "log").read_text().splitlines()
        return [tuple(line.split()) for line in lines]  # type: ignore[misc]

    def enqueue(self, home: str, task: str) -> str:
        from agentd.fleet import engine, enqueue

        client = engine.client(self.url)
        try:
            wid = enqueue.run_id(home)
            return enqueue.via_client(client, home, {"task": task}, wid)
        finally:
            client.destroy()

    def workflows(self, prefix: str) -> dict[str, tuple[str, str | None]]:
        """workflow ID -> (status, executor) of the turns whose ID starts with `prefix`."""
        from agentd.fleet import db

        with db.connect(self.url) as conn:
            rows = conn.execute("SELECT workflow_uuid, status, executor_id FROM "
                                "dbos.workflow_status WHERE workflow_uuid LIKE %s",
                                (prefix + "%",)).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def stop(self, *workers: str) -> list[int]:
        """SIGTERM to each, then their exit statuses."""
        procs = [self.procs.pop(w) for w in workers]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        return [proc.wait(60) for proc in procs]

    def kill(self, worker: str) -> None:
        proc = self.procs.pop(worker)
        proc.kill()
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)


def git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def runs_in(remote: Path) -> list[str]:
    """The `Agentd-Run:` trailer of every commit on the home's main branch."""
    out = subprocess.run(["git", "-C", str(remote), "log", "--format=%(trailers:key=Agentd-Run,"
                          "valueonly)", "main"], check=True, capture_output=True,
                         text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


@pytest.fixture
def make_fleet(pg_cluster: PgCluster, fleet_template: str, tmp_path: Path
               ) -> Iterator[Callable[..., Fleet]]:
    """Fleet(settings...), on a fresh copy of the session's fleet database (conftest's
    fleet_template); its workers are killed at the end whatever happened."""
    made: list[Fleet] = []

    def make(**settings: float) -> Fleet:
        made.append(Fleet(copy_db(pg_cluster.libpq_url("postgres"), fleet_template), tmp_path,
                          **settings))
        return made[-1]

    yield make
    for f in made:
        f.close()


@requires_postgres
def test_two_workers_fire_each_cron_due_time_once(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    remote = fleet.add_home("h1", {"cron/ping.md": "---\nevery: 2s\n---\nping\n",
                                   "README.md": "a home\n"})
    fleet.start("w1", "w2")

    def done() -> dict[str, tuple[str, str | None]]:
        return {k: v for k, v in fleet.workflows("cron:h1:ping:").items() if v[0] == "SUCCESS"}

    wait_for(lambda: len(done()) >= 3, 120, "three cron turns to finish")
    assert fleet.stop("w1", "w2") == [0, 0]
    fired = fleet.workflows("cron:h1:ping:")
    ran = sorted(wid for wid, (status, _) in fired.items() if status == "SUCCESS")
    assert {status for status, _ in fired.values()} <= {"SUCCESS", "ENQUEUED"}, fired
    times = sorted(datetime.fromisoformat(w.split(":", 3)[3]) for w in fired)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert gaps == {2.0}, times  # every due time once, none skipped between the first and last
    assert sorted(runs_in(remote)) == ran  # each turn that ran committed exactly once
    began = sorted(wid for step, wid, _ in fleet.steps() if step == "begin")
    assert began == ran  # and ran once; the ones still queued at the stop never began
    ticks = fleet.workflows("sched-agentd.fleet.tick-")
    assert ticks and all(s in ("SUCCESS", "PENDING", "ENQUEUED") for s, _ in ticks.values())
    assert " stopped" in fleet.log_of("w1") and "Traceback" not in fleet.log_of("w1")



def held_turn(fleet: Fleet) -> tuple[str, str]:
    """(workflow ID, worker) of a turn that a worker has begun and holds until `release`."""
    wid = fleet.enqueue("h1", "[hold] work")
    began = wait_for(lambda: [w for step, i, w in fleet.steps() if (step, i) == ("begin", wid)],
                     60, f"a worker to begin {wid}")
    return wid, began[0]


def release(fleet: Fleet) -> None:
    (fleet.dir / "release").touch()


@requires_postgres
def test_a_killed_workers_turn_is_finished_by_another_after_dead_after(
        make_fleet: Callable[..., Fleet]) -> None:
    from agentd.fleet import db

    fleet = make_fleet(dead_after=3)
    remote = fleet.add_home("h1", {"README.md": "a home\n"})
    fleet.start("w1", "w2")
    wid, dead = held_turn(fleet)
    live = "w2" if dead == "w1" else "w1"
    fleet.kill(dead)
    release(fleet)
    wait_for(lambda: fleet.workflows(wid)[wid][0] == "SUCCESS", 60, "the turn to finish")
    assert fleet.workflows(wid)[wid] == ("SUCCESS", live)
    with db.connect(fleet.url) as conn:
        by, silent = conn.execute(
            "SELECT recovered_by, extract(epoch FROM recovered_at - last_seen) "
            "FROM agentd_fleet.workers WHERE id = %s", (dead,)).fetchone()
    assert by == live and silent >= 3  # not recovered before dead_after
    # the step in flight ran again on the live worker; the commit was made once
    assert [s for s in fleet.steps() if s[1] == wid] == [
        ("begin", wid, dead), ("begin", wid, live), ("publish", wid, live), ("end", wid, live)]
    assert runs_in(remote) == [wid]
    handed = [line for line in fleet.log_of(live).splitlines() if "handed back" in line]
    assert len(handed) == 1 and f"worker {dead} silent" in handed[0] and wid in handed[0]


def owner_push(remote: Path, tmp: Path, files: dict[str, str]) -> str:
    """The owner commits `files` to the home and pushes; the new head."""
    work = tmp / f"owner-{uuid.uuid4().hex[:8]}"
    subprocess.run(["git", "clone", "-q", str(remote), str(work)], check=True)
    write_home(work, files)
    for args in (["add", "-A"], ["commit", "-qm", "owner"], ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", "-C", str(work), *args], check=True, env=git_env())
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


@requires_postgres
def test_a_cron_job_the_owner_pushes_is_picked_up(make_fleet: Callable[..., Fleet]) -> None:
    """The refresh sees the owner's push: a new cron job runs; a commit that touches no
    schedule file moves the head without reading the schedule again."""
    from agentd.fleet import db

    fleet = make_fleet()
    remote = fleet.add_home("h1", {"README.md": "a home\n"})
    fleet.start("w1")
    owner_push(remote, fleet.tmp, {"cron/ping.md": "---\nevery: 2s\n---\nping\n"})
    wait_for(lambda: any(s == "SUCCESS" for s, _ in fleet.workflows("cron:h1:ping:").values()),
             90, "the pushed cron job to run")
    reads = fleet.log_of("w1").count("schedule read")
    head = owner_push(remote, fleet.tmp, {"README.md": "still a home\n"})

    def seen() -> bool:  # the cron turns keep committing on top of the owner's commit
        with db.connect(fleet.url) as conn:
            at = db.homes(conn, "h1")[0].schedule_head
        return at is not None and subprocess.run(
            ["git", "-C", str(remote), "merge-base", "--is-ancestor", head, at]).returncode == 0

    wait_for(seen, 60, "the refresh to see the owner's second push")
    assert fleet.log_of("w1").count("schedule read") == reads


@requires_postgres
def test_a_restarted_worker_finishes_its_own_turn_and_one_declared_dead_exits(
        make_fleet: Callable[..., Fleet]) -> None:
    """A worker restarted under its ID resumes its own turn. The same worker, once silent
    too long (a stalled machine) and back, finds its turns handed to others: it exits
    instead of running them beside their recovery."""
    from agentd.fleet import db

    fleet = make_fleet(dead_after=60)
    remote = fleet.add_home("h1", {"README.md": "a home\n"})
    fleet.start("w1")
    wid, _ = held_turn(fleet)
    fleet.kill("w1")
    release(fleet)
    fleet.start("w1")
    wait_for(lambda: fleet.workflows(wid)[wid][0] == "SUCCESS", 60, "the turn to finish")
    assert fleet.workflows(wid)[wid] == ("SUCCESS", "w1")
    assert [s[0] for s in fleet.steps() if s[1] == wid] == ["begin", "begin", "publish", "end"]
    assert runs_in(remote) == [wid]

    proc = fleet.procs["w1"]
    assert proc.poll() is None
    with db.connect(fleet.url) as conn:
        conn.execute("UPDATE agentd_fleet.workers SET recovered_at = now(), "
                     "recovered_by = 'w9' WHERE id = 'w1'")
    assert proc.wait(60) == 3
    assert "w1 was declared dead by w9" in fleet.log_of("w1")
