"""PostgreSQL restarted under running turns (issue 15): the worker reconnects and nothing is
lost or repeated. One worker process, turns held at a model call, a tool step and the push
(tests/fleetkit.py's kill points, here without a kill), and a few free ones; PostgreSQL is
stopped while they are held, the holds are let go while it is down (so each turn reaches
the database with none there), and it is started again. Every turn must commit exactly
once, its workflow must end SUCCESS, and no completed step may run again.

The concurrency check (the last worker to start sets the fleet-wide limit) runs at the end
of the restart test, on its live worker, rather than on two workers of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from daemonkit import wait_for
from fleetkit import Fleet, Worker, check_turns, new_token
from pgkit import PgCluster, requires_postgres

pytestmark = requires_postgres


@pytest.fixture
def fleet(pg_cluster: PgCluster, fleet_template: str) -> Iterator[Fleet]:
    box = Fleet.make(pg_cluster, template=fleet_template)
    try:
        yield box
    finally:
        box.close()


def test_a_database_restart_under_running_turns_loses_and_repeats_nothing(
        fleet: Fleet, pg_cluster: PgCluster) -> None:
    fleet.settings(beat_every=0.5, tick_every=2.0, refresh_every=60.0)
    fleet.add_homes(["model", "tool", "push", "f1", "f2"])
    worker = fleet.start_worker("w1", concurrency=5)

    model, tool = new_token(), new_token()
    held_model = fleet.fake.hold(model, 1)  # its second model call (after tool step 1)
    fleet.arm(f"{tool}.2")
    fleet.arm("push.pre")
    fleet.enqueue("model", steps=2, token=model)
    fleet.enqueue("tool", steps=2, token=tool)
    fleet.enqueue("push", steps=1)
    wait_for(lambda: (model, 1) in fleet.fake.held, 90, "the held model call")
    fleet.wait_event("held", f"{tool}.2")
    fleet.wait_event("held", "push")

    pg_cluster.stop()
    try:
        held_model.set()
        fleet.release(f"{tool}.2")
        fleet.release("push.pre")
        # with the database gone, each turn goes on until it needs it: the tool step
        # finishes, the push lands on the remote, the model call is answered (no
        # event to wait for: its reply leaves the fake at once)
        fleet.wait_event("end", tool)
        fleet.wait_event("push-post", "push")
    finally:
        pg_cluster.start()
    fleet.enqueue("f1", steps=1)
    fleet.enqueue("f2", steps=2)

    fleet.wait_done(list(fleet.enqueued), timeout=120)
    assert worker.alive, worker.log.read_text()
    concurrency_is_fleet_wide(fleet, worker)
    fleet.stop_workers()
    problems = check_turns(fleet)
    # a workflow's error is in workflow_output, not workflow_status
    ended = fleet.sql("SELECT s.workflow_uuid, s.status, o.error FROM dbos.workflow_status s "
                      "LEFT JOIN dbos.workflow_output o USING (workflow_uuid) "
                      "WHERE s.workflow_uuid LIKE 'run:%%' AND s.status <> 'SUCCESS'")
    assert not problems and not ended, "\n".join([*problems, *map(str, ended)])
    log = worker.log.read_text()
    assert "Exception encountered in background workflow" not in log, log


def test_a_turns_own_statements_wait_for_the_database_and_only_for_it(
        pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    """db.retrying: a connection error is waited out (here: the server stopped, then
    started by the test once the call is waiting), and a wrong statement fails at once."""
    import threading

    import psycopg

    from agentd.fleet import db

    url = pg_cluster.libpq_url()
    with db.connect(url) as conn:
        db.init_schema(conn)
    caplog.set_level(logging.WARNING, logger="agentd.fleet")
    tries: list[float] = []

    def homes(conn: psycopg.Connection[object]) -> list[db.HomeRow]:
        tries.append(time.monotonic())
        return db.homes(conn)

    pg_cluster.stop()
    try:
        out: list[object] = []
        waiter = threading.Thread(target=lambda: out.append(db.retrying(url, homes)))
        waiter.start()
        wait_for(lambda: "waiting for it" in caplog.text, 10, "the call to wait")
        assert waiter.is_alive()
    finally:
        pg_cluster.start()
    waiter.join(30)
    assert out == [[]] and not waiter.is_alive()
    assert len(tries) == 1  # `fn` ran once the server was back: connect failed before

    def wrong(conn: psycopg.Connection[object]) -> None:
        tries.append(time.monotonic())
        conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(psycopg.errors.UndefinedTable):
        db.retrying(url, wrong)
    assert len(tries) == 2  # `wrong` ran once: not a connection error, not retried


def test_dbos_retries_psycopgs_lost_connection_errors_once_the_worker_says_so(
        pg_cluster: PgCluster) -> None:
    """engine.retry_lost_connections: what psycopg says while PostgreSQL restarts
    ("connection is bad: … No such file or directory") is a disconnect DBOS's db_retry
    retries; without the hook DBOS would raise it out of the turn (issue 15's lost turns)."""
    import sqlalchemy as sa
    from dbos._utils import retriable_postgres_exception
    from sqlalchemy.engine import Engine

    from agentd.fleet import engine

    gone = f"postgresql+psycopg://postgres@/x?host={pg_cluster.root / 'nowhere'}"
    eng = sa.create_engine(gone)
    try:
        engine.retry_lost_connections()
        engine.retry_lost_connections()  # idempotent
        with pytest.raises(sa.exc.OperationalError) as raised, eng.connect():
            pass
        assert "connection is bad" in str(raised.value)
        assert retriable_postgres_exception(raised.value)
    finally:
        eng.dispose()  # and the hook off again: this process's other tests are no worker
        sa.event.remove(Engine, "handle_error", engine._lost_connection)


def concurrency_is_fleet_wide(fleet: Fleet, w1: Worker) -> None:
    """`fleet worker --concurrency N`: DBOS 3.4 keeps the queue's per-worker limit in the
    database (no per-process setting), so the last worker to start sets it for all; the
    README and --help say so, and the worker that changes it logs a warning. (Checked at
    the end of the restart test, on its live worker: a worker process costs seconds.)"""
    assert fleet.sql("SELECT worker_concurrency FROM dbos.queues WHERE name = 'turns'") \
        == [(5,)]
    w2 = fleet.start_worker("w2", concurrency=3)
    limit = fleet.sql("SELECT worker_concurrency FROM dbos.queues WHERE name = 'turns'")
    assert limit == [(3,)]
    log = w2.log.read_text()
    assert "every worker now runs at most 3 turns at once" in log, log
    assert "had asked for 5" in log, log
    assert "fleet-wide" not in w1.log.read_text()  # the first changed nobody's
