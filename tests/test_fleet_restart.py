"""PostgreSQL restarted under running turns (issue 15): the worker reconnects and nothing is
lost or repeated. One worker process, turns held at a model call, a tool step and the push
(tests/fleetkit.py's kill points, here without a kill), and a few free ones; PostgreSQL is
stopped while they are held, the holds are let go while it is down (so each turn reaches
the database with none there), and it is started again. Every turn must commit exactly
once, its workflow must end SUCCESS, and no completed step may run again.

Runtime: about 40 s on two busy cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemonkit import wait_for
from fleetkit import Fleet, check_turns, new_token
from pgkit import PgCluster, pg_cluster, requires_postgres

__all__ = ["pg_cluster"]  # the session fixture, imported for pytest

pytestmark = requires_postgres


@pytest.fixture
def fleet(pg_cluster: PgCluster) -> Iterator[Fleet]:
    box = Fleet.make(pg_cluster)
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
    fleet.stop_workers()
    problems = check_turns(fleet)
    # a workflow's error is in workflow_output, not workflow_status
    ended = fleet.sql("SELECT s.workflow_uuid, s.status, o.error FROM dbos.workflow_status s "
                      "LEFT JOIN dbos.workflow_output o USING (workflow_uuid) "
                      "WHERE s.workflow_uuid LIKE 'run:%%' AND s.status <> 'SUCCESS'")
    assert not problems and not ended, "\n".join([*problems, *map(str, ended)])
    log = worker.log.read_text()
    assert "Exception encountered in background workflow" not in log, log
