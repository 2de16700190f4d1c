"""Dead workers are noticed: each worker beats (agentd_fleet.workers.last_seen) every
`beat_every` seconds; a worker silent for longer than `dead_after` is claimed by exactly
one live worker (db.claim_dead, one UPDATE), which hands its unfinished turns back to the
queue, where any worker dequeues them and DBOS resumes them from their last checkpoint.

DBOS 3.4 has no liveness of its own (it recovers an executor's workflows when that
executor restarts, or when told to by its commercial Conductor). What hands another
executor's turns back: `DBOS._recover_pending_workflows([id])`, the function DBOS's own
startup recovery uses. It is private; the public alternative, `DBOS.resume_workflow`,
re-enqueues whatever it is given unconditionally, so a turn that the dead worker's
restarted self had already taken back would run twice. The private call re-enqueues only
rows still PENDING *on the dead executor* (an UPDATE with that condition), so a duplicate
or late recovery matches nothing. It is called in this one place, to be swapped when DBOS
makes it public. The queue name and partition (the home) stay on the row, so a recovered
turn still runs alone in its home.

A worker that claims a dead one also re-runs the recovery of the workers that one had
claimed (idempotent: it matches only turns still PENDING on them), in case it died between
its claim and its recovery.

A worker that finds itself claimed (it was silent too long: a stalled machine, a cut
network) has had its turns handed to others, which may be running them already; it exits
at once rather than race them, and a restart makes it a fresh worker again.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from agentd.fleet import db
from agentd.jobs.log import EventLog

if TYPE_CHECKING:
    import psycopg


class Declared(Exception):
    """This worker was declared dead by another, which recovered its turns."""


class Liveness:
    def __init__(self, worker: str, concurrency: int, log: EventLog):
        self.worker, self.concurrency, self.log = worker, concurrency, log
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = False

    def beat(self, conn: psycopg.Connection[Any]) -> None:
        """Record that we are alive. Raises Declared when another worker claimed us since
        our last beat (not at start: a restarted worker takes its ID back)."""
        if self.started:
            by = db.beat_again(conn, self.worker)
            if by is None:
                return
            if by:
                raise Declared(by)
        db.beat(conn, self.worker, self.host, self.pid, self.concurrency)
        self.started = True

    def recover(self, conn: psycopg.Connection[Any], dead_after: float) -> list[str]:
        """Claim the workers silent for longer than `dead_after` and hand their unfinished
        turns (and ticks) back to the queue; returns the workflow IDs handed back."""
        from dbos import DBOS

        handed: list[str] = []
        claimed = db.claim_dead(conn, self.worker, dead_after)
        # the workers those had claimed: a worker dying between its claim and its recovery
        # would leave their turns stuck (recovery matches nothing when it was done already)
        orphans = db.claimed_by(conn, claimed) if claimed else []
        for dead in claimed + orphans:
            handles = DBOS._recover_pending_workflows([dead])
            ids = [h.get_workflow_id() for h in handles]
            handed += ids
            self.log("worker", f"worker {dead} silent for over {dead_after:g}s: "
                     f"{len(ids)} unfinished workflow{'s' * (len(ids) != 1)} handed back"
                     + (f" ({', '.join(ids[:5])}{', …' * (len(ids) > 5)})" if ids else ""),
                     dead=dead, recovered=ids)
        return handed
