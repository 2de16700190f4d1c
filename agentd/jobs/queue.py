"""One queue per home, one turn at a time.

Priorities, highest first: a person or a webhook (0), the heartbeat (1), cron (2), the inbox
(3). A person is waiting on the other end; the heartbeat is the agent's own attention; cron
jobs are punctual but can wait a turn; inbox files are a batch with no deadline. Equal
priorities run in arrival order.

The queue is bounded (`[daemon] queue_limit`, default 100). When it is full, a new job is
refused and logged, never silently lost: an inbox file simply stays in inbox/ and is picked
up again by the next scan; a cron run is skipped and recorded as the job's last result; a
heartbeat tick was going to be skipped anyway; a person (the bridge, later) is told "busy".
A job whose key is already waiting or running is refused as a duplicate (the same inbox file
twice, a cron job that fires again while its last run still waits).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentd.jobs.log import EventLog

if TYPE_CHECKING:
    from agentd.turnlock import TurnLock

PRIORITY = {"person": 0, "webhook": 0, "heartbeat": 1, "cron": 2, "inbox": 3}


@dataclass
class QueuedTurn:
    """An entry of the queue: a turn waiting to run. `run` does the whole thing (the turn
    through agentd.jobs.records.run_job_turn, and what the trigger does after it)."""

    kind: str  # a PRIORITY key
    name: str  # what the log and `agentd status` show: the cron job, the inbox file
    run: Callable[[], Awaitable[None]]
    key: str = ""  # duplicates of a waiting or running key are refused
    enqueued: float = field(default_factory=time.time)
    started: float | None = None

    def __post_init__(self) -> None:
        self.key = self.key or f"{self.kind}:{self.name}"

    @property
    def priority(self) -> int:
        return PRIORITY[self.kind]

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "enqueued": self.enqueued,
                "started": self.started}


class TurnQueue:
    """A bounded priority queue with a single worker (`work`)."""

    def __init__(self, limit: int, log: EventLog, on_change: Callable[[], None] = lambda: None,
                 lock: TurnLock | None = None):
        self.limit = limit
        self.lock = lock
        self.log = log
        self.on_change = on_change
        self.running: QueuedTurn | None = None
        self._heap: list[tuple[int, int, QueuedTurn]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def depth(self) -> int:
        return len(self._heap)

    @property
    def busy(self) -> bool:
        return self.running is not None

    def waiting(self) -> list[QueuedTurn]:
        return [job for _, _, job in sorted(self._heap)]

    def has(self, key: str) -> bool:
        return (self.running is not None and self.running.key == key) or any(
            j.key == key for _, _, j in self._heap)

    def put(self, job: QueuedTurn) -> bool:
        """Queue `job`; False (and one log line) when closed, full, or a duplicate."""
        if self._closed:
            self.log(job.kind, f"{job.name}: not queued, the daemon is stopping")
            return False
        if self.has(job.key):
            return False
        if len(self._heap) >= self.limit:
            self.log.warn("queue", f"full ({self.limit} waiting): dropped {job.kind} "
                          f"{job.name}", kind=job.kind, job=job.name)
            return False
        heapq.heappush(self._heap, (job.priority, next(self._seq), job))
        self._wake.set()
        self.on_change()
        return True

    def close(self) -> list[QueuedTurn]:
        """Refuse new jobs and drop the waiting ones (returned); the running one finishes."""
        self._closed = True
        dropped = [job for _, _, job in sorted(self._heap)]
        self._heap.clear()
        self._wake.set()
        self.on_change()
        return dropped

    async def work(self) -> None:
        """Run jobs one at a time until closed. A failing job is logged, never fatal;
        cancellation (a second SIGTERM) propagates into the running turn."""
        while True:
            while not self._heap and not self._closed:
                self._wake.clear()
                await self._wake.wait()
            if not self._heap:
                return
            _, _, job = heapq.heappop(self._heap)
            job.started = time.time()
            self.running = job
            self.on_change()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug in one job must not stop the queue
                self.log.error(job.kind, f"{job.name}: failed: {type(e).__name__}: {e}")
            finally:
                self.running = None
                self.on_change()

    async def _run(self, job: QueuedTurn) -> None:
        """Run `job` holding the home's turn lock, for its delivery too. The lock is marked
        held for this task, so the `run_turn` inside does not wait for it again."""
        if self.lock is None:
            await job.run()
            return

        def waiting(holder: str) -> None:
            self.log("queue", f"{job.name}: another turn is running in this home ({holder}); "
                     "waiting for it to finish")

        async with self.lock.hold(job.kind, job.name, waiting):
            await job.run()
