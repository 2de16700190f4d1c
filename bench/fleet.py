"""Fleet benchmarks: prints numbers, asserts nothing. `python bench/fleet.py` (needs
Debian's postgresql; the fleet box of tests/fleetkit.py: a throwaway cluster, bare-repo
homes, a zero-latency scripted fake model, real `agentd fleet worker` processes).

- throughput: turns per second as workers go 1 -> 2 -> 4 (each `--concurrency 4`), over
  BENCH_TURNS (default 48) turns of one tool call each (two model calls, one bash
  command, one commit pushed) spread over 16 homes;
- scheduling overhead per turn, one turn at a time on an idle worker: enqueue -> the
  workflow starts (DBOS's dequeue), start -> first model call (clone, prompt),
  last model call -> workflow done (commit, push, bookkeeping);
- PostgreSQL per turn: transactions (pg_stat_database xact_commit), rows written
  (inserted + updated + deleted) and statements (pg_stat_statements calls, i.e.
  round-trips), measured over the throughput runs minus what the idle workers spend in
  the same time (queue polling, liveness, the tick);
- memory: one worker's RSS, idle, with 16 homes and with BENCH_IDLE_HOMES (default
  1,000) homes registered, and the difference per extra home.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from daemonkit import wait_for  # noqa: E402
from fleetkit import Fleet, _git_at  # noqa: E402
from pgkit import PgCluster  # noqa: E402

HOMES = 16
IDLE_HOMES = int(os.environ.get("BENCH_IDLE_HOMES", "1000"))


class StatsCluster(PgCluster):
    """The test cluster with pg_stat_statements loaded, for counting round-trips."""

    def start(self) -> None:
        opts = (f"-k {self.sock} -c listen_addresses='' -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                "-c shared_preload_libraries=pg_stat_statements "
                "-c pg_stat_statements.track=all")
        self._pg("pg_ctl", "-D", str(self.data), "-o", opts, "-l",
                 str(self.root / "server.log"), "-w", "-t", "60", "start")


def counters(fleet: Fleet) -> tuple[int, int, int]:
    """(transactions, rows written, statements) of the fleet's database so far."""
    xact, rows = fleet.sql(
        "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted "
        "FROM pg_stat_database WHERE datname = current_database()")[0]
    calls = fleet.sql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                      "JOIN pg_database d ON d.oid = s.dbid "
                      "WHERE d.datname = current_database()")[0][0]
    return int(xact), int(rows), int(calls)


def settle() -> None:
    """pg_stat_database is updated by each backend when idle: give it a moment."""
    time.sleep(1.0)


def finished(fleet: Fleet, ids: list[str]) -> int:
    return fleet.sql("SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS' "
                     "AND workflow_uuid = ANY(%s)", ids)[0][0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


Counts = tuple[float, float, float]


def throughput(fleet: Fleet, homes: list[str], n_workers: int, turns: int
               ) -> tuple[float, Counts, Counts, list[float]]:
    """Turns/s with n workers; the database's spend per turn (gross, and net of what the
    idle workers spend per second in the same time); the idle spend per second."""
    workers = [fleet.start_worker(f"b{n_workers}x{i}", concurrency=4, wait=False)
               for i in range(n_workers)]
    for w in workers:
        fleet.wait_worker(w)
    settle()
    c0, t0 = counters(fleet), time.perf_counter()
    time.sleep(3.0)  # idle: what polling, liveness and the tick cost per second
    settle()
    c1, t1 = counters(fleet), time.perf_counter()
    idle = [(b - a) / (t1 - t0) for a, b in zip(c0, c1, strict=True)]
    start = time.perf_counter()
    tokens = [fleet.enqueue(homes[i % len(homes)], steps=1) for i in range(turns)]
    ids = [f"run:{fleet.enqueued[t][0]}:{t}" for t in tokens]
    wait_for(lambda: finished(fleet, ids) == len(ids), 600, f"{turns} turns")
    elapsed = time.perf_counter() - start
    settle()
    c2, t2 = counters(fleet), time.perf_counter()
    gross = tuple((b - a) / turns for a, b in zip(c1, c2, strict=True))
    net = tuple(max(0.0, (b - a) - rate * (t2 - t1)) / turns
                for a, b, rate in zip(c1, c2, idle, strict=True))
    fleet.stop_workers()
    return turns / elapsed, gross, net, idle  # type: ignore[return-value]


def overhead(fleet: Fleet, homes: list[str], n: int = 8) -> dict[str, float]:
    """One turn at a time on one idle worker: where the time goes besides the model."""
    fleet.start_worker("solo", concurrency=1)
    parts: dict[str, list[float]] = {"dequeue": [], "setup": [], "finish": [], "total": []}
    for i in range(n):
        enqueued = time.time()
        token = fleet.enqueue(homes[i % len(homes)], steps=1)
        wid = f"run:{homes[i % len(homes)]}:{token}"
        wait_for(lambda wid=wid: finished(fleet, [wid]), 120, "a turn")
        created, started, completed = fleet.sql(
            "SELECT created_at, started_at_epoch_ms, completed_at FROM dbos.workflow_status "
            "WHERE workflow_uuid = %s", wid)[0]
        calls = [c.t for c in fleet.fake.calls if c.token == token]
        parts["dequeue"].append(started / 1000 - created / 1000)
        parts["setup"].append(min(calls) - started / 1000)
        parts["finish"].append(completed / 1000 - max(calls))
        parts["total"].append(completed / 1000 - enqueued)
    fleet.stop_workers()
    return {k: statistics.median(v) * 1000 for k, v in parts.items()}


def idle_memory(fleet: Fleet, homes: list[str]) -> tuple[float, float]:
    """One idle worker's RSS (MiB) with the current homes, then with IDLE_HOMES."""
    def idle_rss(tag: str) -> float:
        w = fleet.start_worker(f"mem-{tag}", concurrency=4)
        ticks = fleet.sql("SELECT count(*) FROM dbos.workflow_status WHERE name LIKE "
                          "'%%tick%%'")[0][0]
        wait_for(lambda: fleet.sql("SELECT count(*) FROM dbos.workflow_status WHERE name "
                                   "LIKE '%%tick%%' AND status = 'SUCCESS'")[0][0]
                 >= ticks + 3, 300, "three ticks")
        rss = rss_mib(w.proc.pid)
        fleet.stop_workers()
        return rss

    few = idle_rss("few")
    from agentd.fleet import db

    remote = fleet.root / "remotes" / f"{homes[0]}.git"
    conn = db.connect(fleet.db)
    try:
        for i in range(IDLE_HOMES - len(homes)):
            name = f"idle{i:04d}"
            path = fleet.root / "remotes" / f"{name}.git"
            _git_at(fleet.root, "clone", "-q", "--bare", "--local", str(remote), str(path))
            db.add_home(conn, name, str(path))
    finally:
        conn.close()
    return few, idle_rss("many")


def main() -> None:
    turns = int(os.environ.get("BENCH_TURNS", "48"))
    pg = StatsCluster()
    fleet = Fleet.make(pg)
    try:
        fleet.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        fleet.settings(beat_every=1.0, tick_every=5.0)
        homes = [f"bench{i:02d}" for i in range(HOMES)]
        fleet.add_homes(homes, via_cli=0)
        print(f"fleet bench: {os.cpu_count()} cores, {turns} turns of 1 tool call over "
              f"{HOMES} homes, zero-latency fake model")
        print("per turn: transactions / rows written / statements, gross (net of idle); "
              "idle: the same per second")
        print("workers  turns/s  per turn                    idle per second")
        for n in (1, 2, 4):
            rate, gross, net, idle = throughput(fleet, homes, n, turns)
            print(f"{n:7d}  {rate:7.2f}  " + " / ".join(
                f"{g:.0f} ({m:.0f})" for g, m in zip(gross, net, strict=True))
                + "   " + " / ".join(f"{i:.0f}" for i in idle), flush=True)
        ms = overhead(fleet, homes)
        print("one turn alone (median ms): enqueue->start {dequeue:.0f}, start->first model "
              "call {setup:.0f}, last model call->done {finish:.0f}, enqueue->done "
              "{total:.0f}".format(**ms))
        few, many = idle_memory(fleet, homes)
        print(f"idle worker RSS: {few:.1f} MiB with {HOMES} homes, {many:.1f} MiB with "
              f"{IDLE_HOMES}: {(many - few) * 1024 / (IDLE_HOMES - HOMES):.1f} KiB per "
              "extra home")
    finally:
        fleet.close()
        pg.close()


if __name__ == "__main__":
    main()
