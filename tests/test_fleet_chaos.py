"""The fleet test (issue 15): 3 worker processes, 50 homes (some with cron jobs), turns
queued through `agentd fleet run` and the client, workers killed -9 10 times at
chosen points (a model call, a tool call, before and after the push lands), PostgreSQL
restarted under load. Afterwards, read from the outside (each home's remote history, the
fake LLM's request log, the log the agent's commands and the remotes' hooks write):

- every queued turn committed exactly once, with every step's change in its commit;
- no home ran two turns at once;
- every cron due time fired exactly once, without gaps;
- no completed tool step ran again, and no completed model call was asked again: a step
  repeats only when the worker running it was killed while it was in flight.

Kill points are events (see tests/fleetkit.py), never sleeps. Runtime: see the report at
the end of the test (printed with -s); about two minutes on two busy cores.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from daemonkit import wait_for
from fleetkit import Fleet, check_cron, check_turns, new_token, slot
from pgkit import PgCluster, requires_postgres

pytestmark = requires_postgres

HOMES = 50
CRON_HOMES = 10
CRON_EVERY = 60  # seconds: each cron home fires a few times over the test, no more (every
# cron turn is a whole turn, clone to push, on the two cores the workers share)
WORKERS = ("w1", "w2", "w3")
# (point, call or step): model call 1 (after tool step 1 finished), tool step 2 (step 1 is
# committed to the workflow), the push held before the branch moves and after it moved.
# Ten kills (issue 15's number), at least two at each kind of point.
KILLS = [("model", 1), ("tool", 2), ("pre", 0), ("post", 0)] * 2 + [("model", 1), ("tool", 2)]


@pytest.fixture
def fleet(pg_cluster: PgCluster, fleet_template: str) -> Iterator[Fleet]:
    box = Fleet.make(pg_cluster, template=fleet_template)
    try:
        yield box
    finally:
        box.close()


def kill_at(fleet: Fleet, home: str, point: str, k: int, same_id: bool,
            then: Callable[[], object]) -> str:
    """Queue a turn on `home` (then `then()`), wait until it reaches `point`, kill -9 the
    worker running it (and all it started), let the held thing go, and start a worker in
    its place: with the same ID (it recovers its own turns at launch) or a new one (the
    others notice the dead one after dead_after and recover its turns)."""
    token = new_token()
    event = None
    if point == "model":
        event = fleet.fake.hold(token, k)
    elif point == "tool":
        fleet.arm(f"{token}.{k}")
    else:
        fleet.arm(f"{home}.{point}")
    fleet.enqueue(home, steps=2, token=token)
    then()
    if point == "model":
        wait_for(lambda: (token, k) in fleet.fake.held, 90, f"model call {k} of {token}")
    elif point == "tool":
        fleet.wait_event("held", f"{token}.{k}")
    else:
        wait_for(lambda: any(e[1:4] == ["held", point, home] for e in fleet.events()), 90,
                 f"the {point}-receive hook of {home}")
    victim = fleet.executor_of(f"run:{home}:{token}")
    assert victim in fleet.workers, f"turn {token} runs on {victim}?"
    fleet.kill(victim, point, token)
    if event is not None:
        event.set()
    else:
        fleet.release(f"{token}.{k}" if point == "tool" else f"{home}.{point}")
    fleet.start_worker(victim if same_id else f"{slot(victim)}-{len(fleet.kills)}",
                       wait=False)
    return token


def test_kills_and_a_database_restart_lose_and_repeat_nothing(fleet: Fleet,
                                                              pg_cluster: PgCluster) -> None:
    began = time.monotonic()
    fleet.settings(dead_after=5.0, beat_every=0.5, tick_every=2.0, refresh_every=60.0)
    names = [f"h{i:02d}" for i in range(HOMES)]
    fleet.add_homes(names[:CRON_HOMES], cron=f"every: {CRON_EVERY}s")
    fleet.add_homes(names[CRON_HOMES:])
    workers = [fleet.start_worker(w, wait=False) for w in WORKERS]
    for w in workers:
        fleet.wait_worker(w)
    ready = time.monotonic()

    # a turn in every home (one through `agentd fleet run`, which starts while `agentd
    # fleet serve` does), ten webhooks through `agentd fleet serve`, and ≥ 10 kills at four
    # kinds of point, one at a time in homes of their own (so each is certain to happen at
    # its point), alternating self-recovery and takeover. Each victim is queued ahead of a
    # share of the load, so it does not wait for all of it, and the load is what the kills
    # hit besides.
    fleet.start_serve(wait=False)
    tokens = [fleet.run_cli(names[0]), *(fleet.enqueue(h) for h in names[1:3])]
    fleet.wait_serve()
    for h in names[CRON_HOMES:CRON_HOMES + 10]:
        fleet.webhook(h)
    load = iter(names[3:])
    share = -(-len(names[3:]) // len(KILLS))
    victims = names[-len(KILLS):]
    for n, ((point, k), home) in enumerate(zip(KILLS, victims, strict=True)):
        tokens.append(kill_at(fleet, home, point, k, n % 2 == 0,
                              then=lambda: [fleet.enqueue(h, steps=1)
                                            for h in itertools.islice(load, share)]))
        print(f"kill {n} at {point} after {time.monotonic() - began:.0f}s", flush=True)
    tokens += [t for t, (h, steps) in fleet.enqueued.items() if steps == 1]
    for w in list(fleet.workers.values()):
        if w.alive:
            fleet.wait_worker(w)
    killed = time.monotonic()

    # PostgreSQL restarted while turns run: workers reconnect, nothing is lost
    batch = [fleet.enqueue(h) for h in names[CRON_HOMES:CRON_HOMES + 10]]
    fleet.wait_event("start", batch[0])
    pg_cluster.restart()
    batch += [fleet.enqueue(h, steps=1) for h in names[:5]]
    tokens += batch

    try:  # a turn stuck for good is one problem among the others, all reported at once
        fleet.wait_done(tokens, timeout=240)
        stuck = []
    except AssertionError as e:
        stuck = [str(e)]
    # every cron home's job is due once a minute: wait (an event: a finished cron turn in
    # DBOS's records) until at least as many have fired, should the rest have been quick
    wait_for(lambda: fleet.sql("SELECT count(*) FROM dbos.workflow_status WHERE "
                               "workflow_uuid LIKE 'cron:%%' AND status = 'SUCCESS'")[0][0]
             >= CRON_HOMES, 2 * CRON_EVERY + 60, f"{CRON_HOMES} cron turns")
    fleet.stop_workers()
    done = time.monotonic()

    problems = check_turns(fleet)
    cron_problems, fired = check_cron(fleet, CRON_EVERY)
    points = Counter(k.point for k in fleet.kills)
    print(f"\nfleet chaos: {len(tokens)} turns, {len(fleet.hooks)} webhook turns, {fired} "
          f"cron turns, kills {dict(points)}, revived {fleet.revived}; "
          f"setup {ready - began:.0f}s, kills {killed - ready:.0f}s, "
          f"rest {done - killed:.0f}s, total {done - began:.0f}s")
    assert not stuck + problems + cron_problems, "\n".join(stuck + problems + cron_problems)
    assert len(fleet.kills) >= 10 and set(points) == {"model", "tool", "pre", "post"}
    assert fired >= CRON_HOMES, f"only {fired} cron due times fired"
