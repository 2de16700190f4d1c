"""Putting a turn on the fleet's queue, the two ways there are: from a process that is not
a worker (`agentd fleet run`, the fleet bridge) through a DBOSClient, and from inside a
workflow (the tick) through the queue itself. Either way the home is the queue partition
(one turn per home at a time, fleet-wide) and the workflow ID is the idempotency key:
enqueueing an ID that exists already is a no-op."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from agentd.fleet.db import check_name
from agentd.fleet.engine import QUEUE

if TYPE_CHECKING:
    from dbos import DBOSClient

TURN_WORKFLOW = "agentd.fleet.turn"  # the name turnflow.py registers the turn workflow by


def run_id(home: str) -> str:
    """A fresh workflow ID for a turn someone asked for (not a due time's: those are
    made of home, job and time, so they fire once)."""
    return f"run:{check_name(home)}:{uuid.uuid4().hex}"


def via_client(client: DBOSClient, home: str, request: dict[str, Any],
               workflow_id: str) -> str:
    client.enqueue({"queue_name": QUEUE, "workflow_name": TURN_WORKFLOW,
                    "workflow_id": workflow_id, "queue_partition_key": check_name(home)},
                   home, request)
    return workflow_id


def in_process(home: str, request: dict[str, Any], workflow_id: str) -> str:
    """From a worker (inside a workflow, this is a checkpointed step of it)."""
    from dbos import DBOS, SetEnqueueOptions, SetWorkflowID

    from agentd.fleet import turnflow

    queue = DBOS.retrieve_queue(QUEUE)
    assert queue is not None, "the worker declares the turn queue at launch"
    with SetEnqueueOptions(queue_partition_key=check_name(home)), SetWorkflowID(workflow_id):
        queue.enqueue(turnflow.fleet_turn, home, request)
    return workflow_id
