"""The fleet's own tables (schema `agentd_fleet`), beside DBOS's in the same database.

DBOS keeps the workflows, steps and queue; these keep what DBOS does not know about:
which homes exist and where their git lives, which workers are alive, the usage ledger
(one row per model call, so budgets hold per home and sums are fleet-wide), and the
runtime files a home's turns carry from machine to machine (transcripts, heartbeat and
cron state), which live outside git in a single home.

psycopg 3, autocommit: each function is one statement or one short transaction.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from agentd.errors import AgentdError
from agentd.fleet.engine import libpq_url

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")
BACKOFF_CAP = 10.0  # seconds between a turn's tries to reach a lost database (retrying)
_log = logging.getLogger("agentd.fleet")

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS agentd_fleet;
CREATE TABLE IF NOT EXISTS agentd_fleet.homes (
  name text PRIMARY KEY, git_url text NOT NULL, branch text NOT NULL DEFAULT 'main',
  head text, schedule jsonb, schedule_head text, schedule_at timestamptz,
  added_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS agentd_fleet.workers (
  id text PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,
  concurrency integer NOT NULL, started_at timestamptz NOT NULL DEFAULT now(),
  last_seen timestamptz NOT NULL DEFAULT now(), recovered_at timestamptz,
  recovered_by text);
CREATE TABLE IF NOT EXISTS agentd_fleet.usage (
  workflow_id text NOT NULL, seq integer NOT NULL, home text NOT NULL,
  at timestamptz NOT NULL DEFAULT now(), model text NOT NULL, trigger text NOT NULL,
  input_tokens bigint NOT NULL DEFAULT 0, output_tokens bigint NOT NULL DEFAULT 0,
  cache_read bigint NOT NULL DEFAULT 0, cache_write bigint NOT NULL DEFAULT 0,
  cost double precision, PRIMARY KEY (workflow_id, seq));
CREATE INDEX IF NOT EXISTS usage_home_at ON agentd_fleet.usage (home, at);
CREATE TABLE IF NOT EXISTS agentd_fleet.state (
  home text NOT NULL, path text NOT NULL, data bytea NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (home, path));
CREATE TABLE IF NOT EXISTS agentd_fleet.settings (key text PRIMARY KEY, value jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS agentd_fleet.conversations (
  home text NOT NULL, session text NOT NULL, last text NOT NULL, tail jsonb NOT NULL,
  at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (home, session));
CREATE INDEX IF NOT EXISTS conversations_last ON agentd_fleet.conversations (home, last, at);
CREATE INDEX IF NOT EXISTS conversations_at ON agentd_fleet.conversations (home, at);
"""

DEFAULTS: dict[str, Any] = {"dead_after": 30.0, "beat_every": 5.0, "tick_every": 60.0,
                            "heartbeat_every": 1800.0,
                            "refresh_every": 30.0, "stop_grace": 60.0,  # worker.py
                            "trust_home_sandbox": False,  # turnflow.py: homes may loosen it
                            "endpoints": [],  # endpoints.py: base URLs homes may call
                            "sandbox_limits": {},  # ceilings.py: the homes' sandbox limits
                            # fleet serve: requests per second per client address, and the
                            # burst (before auth, then 429; read as `fleet serve` starts)
                            "bridge_ip_rate": 20.0, "bridge_ip_burst": 200.0}


def check_name(name: str) -> str:
    """A home's name: it becomes a queue partition, a workflow ID part and a folder name."""
    if not NAME.match(name):
        raise AgentdError(f"bad home name {name!r}: use 1-63 lowercase letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit")
    return name


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection (see the module doc); Unreachable, in one line, when the
    database does not answer within 10 s."""
    import psycopg

    try:
        return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise Unreachable(f"cannot reach the fleet database: {first_line(e)}; check --db "
                          "(or AGENTD_FLEET_DB) and that PostgreSQL is running") from None


def first_line(e: BaseException) -> str:
    """What an error says, in one line of at most 300 characters: psycopg's messages run
    to several, and SQLAlchemy's wrapper (as DBOS raises it) holds psycopg's error in
    `orig` and appends a background link to its own text. The fleet's one way to put a
    database's, git's or a turn's error in a log line or a result."""
    lines = str(getattr(e, "orig", None) or e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


class Unreachable(AgentdError):
    """db.connect could not reach the database."""


def lost(e: BaseException) -> bool:
    """Whether `e` means the database is out of reach (down, restarting, the connection
    cut), not that a statement is wrong: connect's own failure, psycopg's client-side
    errors (no SQLSTATE: the server never answered), and the server's connection
    exceptions (08…) and operator interventions (57P…: shutting down, starting up)."""
    import psycopg

    if isinstance(e, Unreachable | psycopg.InterfaceError):
        return True
    if not isinstance(e, psycopg.OperationalError):
        return False
    state = e.sqlstate or ""
    return not state or state.startswith(("08", "57P"))


def retrying(url: str, fn: Callable[..., T], *args: Any) -> T:
    """`fn(conn, *args)` on a fresh connection, run again while the database is out of
    reach (db.lost), with a backoff (0.5 s doubling up to BACKOFF_CAP), until it is back.

    For a turn's own statements (carry, the home's head), which must ride out a
    PostgreSQL restart as DBOS's own writes do: DBOS blocks a workflow's checkpoint
    writes until the database is back (its db_retry: "trading off availability for
    correctness"), so a turn waits there anyway, and a turn failed by a deadline here
    would be a turn lost (DBOS 3.4 cannot resume a workflow that ended ERROR). Only
    connection errors are retried: a wrong statement fails at once. `fn` must be safe to
    run twice (each of the turn's is an upsert, an insert that ignores duplicates, or a
    read)."""
    wait = 0.5
    while True:
        try:
            with connect(url) as conn:
                return fn(conn, *args)
        except Exception as e:
            if not lost(e):
                raise
            if wait == 0.5:  # the outage's first retry: once, not every time
                _log.warning("the fleet database is out of reach (%s); waiting for it",
                             first_line(e))
        time.sleep(wait)
        wait = min(wait * 2, BACKOFF_CAP)


def init_schema(conn: psycopg.Connection[Any]) -> None:
    conn.execute(SCHEMA)
    for key, value in DEFAULTS.items():
        conn.execute("INSERT INTO agentd_fleet.settings VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (key, json.dumps(value)))


def settings(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The fleet's settings over DEFAULTS, so a setting added by a later release needs no
    migration of an existing database."""
    rows = conn.execute("SELECT key, value FROM agentd_fleet.settings").fetchall()
    return DEFAULTS | {k: v for k, v in rows}


def set_setting(conn: psycopg.Connection[Any], key: str, value: Any) -> None:
    conn.execute("INSERT INTO agentd_fleet.settings VALUES (%s, %s) ON CONFLICT (key) "
                 "DO UPDATE SET value = EXCLUDED.value", (key, json.dumps(value)))


@dataclass
class HomeRow:
    name: str
    git_url: str
    branch: str
    head: str | None  # the branch's head as last seen (after a turn's push, or a refresh)
    schedule: dict[str, Any] | None
    schedule_head: str | None  # the head `schedule` was read at; != head: stale


def add_home(conn: psycopg.Connection[Any], name: str, git_url: str,
             branch: str = "main") -> bool:
    """False when a home of that name exists already (nothing changed)."""
    cur = conn.execute("INSERT INTO agentd_fleet.homes (name, git_url, branch) "
                       "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                       (check_name(name), git_url, branch))
    return cur.rowcount == 1


def homes(conn: psycopg.Connection[Any], name: str | None = None) -> list[HomeRow]:
    sql = ("SELECT name, git_url, branch, head, schedule, schedule_head "
           "FROM agentd_fleet.homes")
    rows = (conn.execute(sql + " WHERE name = %s", (name,)) if name
            else conn.execute(sql + " ORDER BY name")).fetchall()
    return [HomeRow(*r) for r in rows]


def set_head(conn: psycopg.Connection[Any], name: str, head: str) -> None:
    """The home's branch moved (a turn pushed, or a refresh saw the owner's push); its
    schedule is stale until `set_schedule` reads it at this head."""
    conn.execute("UPDATE agentd_fleet.homes SET head = %s WHERE name = %s", (head, name))


def set_schedule(conn: psycopg.Connection[Any], name: str, head: str,
                 schedule: dict[str, Any]) -> None:
    """What the tick needs of a home (its cron jobs and heartbeat), read at `head`."""
    conn.execute("UPDATE agentd_fleet.homes SET schedule = %s, schedule_head = %s, "
                 "schedule_at = now() WHERE name = %s", (json.dumps(schedule), head, name))


def beat(conn: psycopg.Connection[Any], worker: str, host: str, pid: int,
         concurrency: int) -> None:
    """A worker is alive: upsert its row (a restarted worker of the same ID is alive again,
    and its turns are its own again)."""
    conn.execute(
        "INSERT INTO agentd_fleet.workers (id, host, pid, concurrency) VALUES (%s,%s,%s,%s) "
        "ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, "
        "concurrency = EXCLUDED.concurrency, last_seen = now(), recovered_at = NULL, "
        "recovered_by = NULL", (worker, host, pid, concurrency))


def beat_again(conn: psycopg.Connection[Any], worker: str) -> str | None:
    """A running worker's beat: one UPDATE, conditional on its not being claimed, so a
    claim cannot slip between check and beat. None when recorded; else who claimed it
    ("" when nobody did: its row is gone, `beat` writes it again)."""
    cur = conn.execute("UPDATE agentd_fleet.workers SET last_seen = now() "
                       "WHERE id = %s AND recovered_at IS NULL", (worker,))
    if cur.rowcount == 1:
        return None
    row = conn.execute("SELECT recovered_by FROM agentd_fleet.workers WHERE id = %s",
                       (worker,)).fetchone()
    return (row[0] or "") if row else ""


def claim_dead(conn: psycopg.Connection[Any], me: str, dead_after: float) -> list[str]:
    """Workers silent for longer than `dead_after` seconds, claimed by `me` in one
    statement, so exactly one live worker recovers each dead one's turns."""
    rows = conn.execute(
        "UPDATE agentd_fleet.workers SET recovered_at = now(), recovered_by = %s "
        "WHERE id <> %s AND recovered_at IS NULL "
        "AND last_seen < now() - make_interval(secs => %s) RETURNING id",
        (me, me, dead_after)).fetchall()
    return [r[0] for r in rows]


def claimed_by(conn: psycopg.Connection[Any], claimers: list[str]) -> list[str]:
    """The workers that any of `claimers` had claimed."""
    rows = conn.execute("SELECT id FROM agentd_fleet.workers WHERE recovered_by = ANY(%s)",
                        (claimers,)).fetchall()
    return [r[0] for r in rows]


def workers(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(id, host, pid, concurrency, started_at, last_seen, seconds silent, recovered_by)."""
    return conn.execute(
        "SELECT id, host, pid, concurrency, started_at, last_seen, "
        "extract(epoch FROM now() - last_seen), recovered_by FROM agentd_fleet.workers "
        "ORDER BY id").fetchall()


def alive(worker: tuple[Any, ...], dead_after: float) -> bool:
    """Whether a `workers` row is of a live worker: heard from within `dead_after` seconds
    and not claimed (a claimed worker's turns are another's, whatever its last beat says).
    The one rule for `fleet status` and for the workers that share the fleet's slots."""
    return worker[6] is not None and float(worker[6]) < dead_after and worker[7] is None


def live_workers(conn: psycopg.Connection[Any], dead_after: float) -> list[tuple[Any, ...]]:
    """The `workers` rows of those alive now (see `alive`)."""
    return [w for w in workers(conn) if alive(w, dead_after)]


def record_usage(conn: psycopg.Connection[Any], rows: Iterable[dict[str, Any]]) -> None:
    """Ledger rows keyed (workflow_id, seq): a recovered turn books its calls again with
    the same keys, which are ignored, so nothing is counted twice."""
    with conn.transaction():
        for r in rows:
            conn.execute(
                "INSERT INTO agentd_fleet.usage (workflow_id, seq, home, model, trigger, "
                "input_tokens, output_tokens, cache_read, cache_write, cost) VALUES "
                "(%(workflow_id)s, %(seq)s, %(home)s, %(model)s, %(trigger)s, "
                "%(input_tokens)s, %(output_tokens)s, %(cache_read)s, %(cache_write)s, "
                "%(cost)s) ON CONFLICT DO NOTHING", r)


def usage_totals(conn: psycopg.Connection[Any], home: str | None = None
                 ) -> list[tuple[Any, ...]]:
    """(home, calls, input, output, cost) per home, or for one home."""
    where, args = ("WHERE home = %s", (home,)) if home else ("", ())
    return conn.execute(
        "SELECT home, count(*), sum(input_tokens), sum(output_tokens), sum(cost) "
        f"FROM agentd_fleet.usage {where} GROUP BY home ORDER BY home", args).fetchall()


def load_state(conn: psycopg.Connection[Any], home: str,
               paths: Iterable[str] | None = None) -> dict[str, bytes]:
    """A home's runtime files, or only those of `paths` (a turn needs its own session's
    transcript, not every session's)."""
    if paths is None:
        rows = conn.execute("SELECT path, data FROM agentd_fleet.state WHERE home = %s",
                            (home,)).fetchall()
    else:
        rows = conn.execute("SELECT path, data FROM agentd_fleet.state WHERE home = %s "
                            "AND path = ANY(%s)", (home, list(paths))).fetchall()
    return {p: bytes(d) for p, d in rows}


def usage_since(conn: psycopg.Connection[Any], home: str, since: float
                ) -> list[tuple[Any, ...]]:
    """A home's ledger rows from `since` (epoch seconds) on, oldest first: (epoch, workflow
    ID, model, trigger, input, output, cache read, cache write, cost)."""
    return conn.execute(
        "SELECT extract(epoch FROM at)::float8, workflow_id, model, trigger, input_tokens, "
        "output_tokens, cache_read, cache_write, cost FROM agentd_fleet.usage "
        "WHERE home = %s AND at >= to_timestamp(%s) ORDER BY at, workflow_id, seq",
        (home, since)).fetchall()


def save_state(conn: psycopg.Connection[Any], home: str, files: dict[str, bytes]) -> None:
    with conn.transaction():
        for path, data in files.items():
            conn.execute(
                "INSERT INTO agentd_fleet.state (home, path, data) VALUES (%s, %s, %s) "
                "ON CONFLICT (home, path) DO UPDATE SET data = EXCLUDED.data, "
                "updated_at = now()", (home, path, data))


def conversations_ending(conn: psycopg.Connection[Any], home: str, last: str
                         ) -> list[tuple[str, list[str]]]:
    """(session, tail) of a home's chat sessions whose latest item is `last`, the one that
    answered last first (agentd/fleet/chats.py)."""
    return conn.execute(
        "SELECT session, tail FROM agentd_fleet.conversations WHERE home = %s AND last = %s "
        "ORDER BY at DESC LIMIT 50", (home, last)).fetchall()


def conversation_tail(conn: psycopg.Connection[Any], home: str, session: str) -> list[str]:
    row = conn.execute("SELECT tail FROM agentd_fleet.conversations WHERE home = %s AND "
                       "session = %s", (home, session)).fetchone()
    return list(row[0]) if row else []


def save_conversation(conn: psycopg.Connection[Any], home: str, session: str,
                      tail: list[str]) -> None:
    conn.execute(
        "INSERT INTO agentd_fleet.conversations (home, session, last, tail) VALUES "
        "(%s, %s, %s, %s) ON CONFLICT (home, session) DO UPDATE SET last = EXCLUDED.last, "
        "tail = EXCLUDED.tail, at = now()", (home, session, tail[-1], json.dumps(tail)))


def prune_conversations(conn: psycopg.Connection[Any], home: str, keep: int) -> None:
    """Forget all but the `keep` sessions of `home` that answered last (one DELETE over
    the (home, at) index)."""
    conn.execute(
        "DELETE FROM agentd_fleet.conversations WHERE home = %s AND at < (SELECT at FROM "
        "agentd_fleet.conversations WHERE home = %s ORDER BY at DESC OFFSET %s LIMIT 1)",
        (home, home, keep - 1))
