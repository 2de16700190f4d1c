"""What the `agentd fleet` commands do that is not a turn: set the database up, check and
register a home, and read back the fleet's state (homes, queue, workers, usage).

The command-line side (agentd/cli_fleet.py) only parses and prints; every refusal here is
an AgentdError with exit status 1 and one line that says what to do.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError
from agentd.fleet import db
from agentd.fleet.engine import QUEUE, sqlalchemy_url

if TYPE_CHECKING:
    import psycopg
    from dbos import DBOSClient

SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
GIT_TIMEOUT = 60.0  # seconds for ls-remote and the shallow fetch of `fleet add`
REMOTE_PROTOCOLS = "file:git:http:https:ssh"  # never ext:: (it runs a command) or fd::
MAX_URL = 2000
CONFIG = "agentd.toml"


def fail(message: str) -> AgentdError:
    return AgentdError(message, 1)


def check_url(url: str | None) -> str:
    """The --db URL: PostgreSQL in libpq or SQLAlchemy form, nothing else."""
    if not url:
        raise fail("no fleet database: give --db postgresql://USER@HOST/DB or set "
                   "AGENTD_FLEET_DB")
    if not url.startswith(SCHEMES) or any(c in url for c in "\r\n\0"):
        raise fail("--db must be a PostgreSQL URL (postgresql://USER[:PASSWORD]@HOST"
                   "[:PORT]/DB[?host=SOCKET_DIR])")
    return url


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection to an initialised fleet database (`fleet init` done)."""
    try:
        conn = db.connect(check_url(url))
    except AgentdError as e:
        raise fail(str(e)) from None
    row = conn.execute("SELECT to_regclass('agentd_fleet.homes') IS NOT NULL, "
                       "to_regclass('dbos.workflow_status') IS NOT NULL").fetchone()
    if not row or not all(row):
        conn.close()
        raise fail("the fleet database is not set up: run `agentd fleet init --db URL` once")
    return conn


def quiet_dbos() -> None:
    """DBOS's own log lines (warnings while it retries, info on migrations) are not for a
    command's terminal: its failures reach the user as our one-line errors."""
    import logging

    logger = logging.getLogger("dbos")
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False


def client(url: str) -> DBOSClient:
    from agentd.fleet.engine import client as make

    quiet_dbos()
    try:
        return make(url)
    except Exception as e:  # sqlalchemy's OperationalError, and whatever psycopg raises
        raise fail(f"cannot reach the fleet database: {db.first_line(e)}") from None


def init(url: str) -> None:
    """DBOS's system tables (created, or migrated to this dbos's version, the way `dbos
    migrate` does: no worker is launched; the database itself is created if missing), then
    ours. Both steps are idempotent."""
    from dbos import DBOS

    check_url(url)
    quiet_dbos()
    try:
        DBOS.migrate(sqlalchemy_url(url))
    except Exception as e:
        raise fail(f"cannot reach the fleet database: {db.first_line(e)}; check --db (or "
                   "AGENTD_FLEET_DB) and that PostgreSQL is running") from None
    try:
        conn = db.connect(url)
    except AgentdError as e:
        raise fail(str(e)) from None
    with conn:
        db.init_schema(conn)


def set_setting(conn: psycopg.Connection[Any], key: str, text: str) -> Any:
    """Fleet setting `key` (one of db.DEFAULTS) set to `text`, a JSON value of the
    default's type (`endpoints`: a list of endpoints, agentd.fleet.endpoints;
    `sandbox_limits`: an object of limits, agentd.fleet.ceilings); the value stored. Workers
    read the settings as they go (a turn, a beat), most with no restart (see set_cmd)."""
    import json

    from agentd.fleet import ceilings, endpoints

    if key not in db.DEFAULTS:
        raise fail(f"no fleet setting {key!r} (known: {', '.join(sorted(db.DEFAULTS))})")
    default = db.DEFAULTS[key]
    try:
        value = json.loads(text)
    except ValueError:
        raise fail(f"{key}: {text!r} is not JSON (e.g. 30, true, "
                   "'[\"https://llm.example.com/v1\"]')") from None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    else:
        check = ceilings.check_setting if isinstance(default, dict) else endpoints.check_setting
        try:
            ok, value = True, check(value)
        except AgentdError as e:
            raise fail(str(e)) from None
    if not ok:
        kind = "true or false" if isinstance(default, bool) else "a number > 0"
        raise fail(f"{key} is {kind}, not {text!r}")
    db.set_setting(conn, key, value)
    return value


# -- homes ---------------------------------------------------------------------------------

def _git_env(git_dir: Path) -> dict[str, str]:
    """The operator's environment (their ssh keys and credential helpers reach the remote)
    minus every GIT_* variable, plus: this probe's repository, no hooks, no prompts, and
    only transports that do not run a command of the URL's choosing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_DIR=str(git_dir), GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=REMOTE_PROTOCOLS,
               GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_COUNT="2",
               GIT_CONFIG_KEY_0="core.hooksPath", GIT_CONFIG_VALUE_0="/dev/null",
               GIT_CONFIG_KEY_1="core.fsmonitor", GIT_CONFIG_VALUE_1="false", LC_ALL="C")
    return env


def _git(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], env=env, capture_output=True, text=True,
                              errors="replace", timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise fail(f"git {args[0]} took over {GIT_TIMEOUT:.0f}s: is the URL reachable?") \
            from None
    except FileNotFoundError:
        raise fail("git is not installed") from None


def normal_git_url(git_url: str) -> str:
    """A local path made absolute (workers resolve it from anywhere); URLs as given."""
    if (not git_url or len(git_url) > MAX_URL or git_url.startswith("-")
            or any(ord(c) < 32 for c in git_url)):
        raise fail("GIT_URL must be a repository path or URL (not starting with '-', no "
                   f"control characters, at most {MAX_URL} characters)")
    if "://" not in git_url and not re.match(r"[\w.-]+@[\w.-]+:", git_url):
        path = Path(git_url).expanduser()
        if path.exists():
            return str(path.resolve())
    return git_url


def probe(git_url: str, branch: str) -> str:
    """The sha of `branch` at `git_url`, once it is known to hold an agentd home
    (agentd.toml at its root). A shallow fetch into a throwaway bare repository: no
    checkout, no hooks, nothing of the remote's config is read."""
    if not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", branch) or branch.startswith(("-", "/")) \
            or ".." in branch or branch.endswith((".lock", "/")):
        raise fail(f"bad branch name {branch!r}")
    with tempfile.TemporaryDirectory(prefix="agentd-fleet-probe-") as tmp:
        env = _git_env(Path(tmp))
        made = _git(env, "init", "--bare", "-q", tmp)
        if made.returncode:
            raise fail(f"git init failed: {made.stderr.strip()[:200]}")
        ref = f"refs/heads/{branch}"
        listed = _git(env, "ls-remote", "--heads", "--", git_url, ref)
        if listed.returncode:
            raise fail(f"cannot read {git_url}: {_git_says(listed.stderr)}")
        if not listed.stdout.strip():
            raise fail(f"{git_url} has no branch {branch!r} (--branch names another)")
        fetched = _git(env, "fetch", "-q", "--depth", "1", "--no-tags", "--", git_url,
                       f"+{ref}:refs/probe")
        if fetched.returncode:
            raise fail(f"cannot fetch {branch} from {git_url}: {_git_says(fetched.stderr)}")
        kind = _git(env, "cat-file", "-t", f"refs/probe:{CONFIG}")
        if kind.returncode or kind.stdout.strip() != "blob":
            raise fail(f"{git_url} ({branch}) is not an agentd home: no {CONFIG} at its "
                       "root (make one with `agentd init`, commit, push)")
        return _git(env, "rev-parse", "refs/probe").stdout.strip()


def _git_says(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if ln.startswith(("fatal:", "error:"))] or lines
    return (useful[0] if useful else "git failed")[:300]


def add(conn: psycopg.Connection[Any], name: str, git_url: str, branch: str) -> str:
    """Register a home after checking it; returns its head. Duplicate names refuse."""
    try:
        db.check_name(name)
    except AgentdError as e:
        raise fail(str(e)) from None
    if db.homes(conn, name):
        raise fail(f"a home named {name!r} exists already (`agentd fleet status` lists them)")
    git_url = normal_git_url(git_url)
    head = probe(git_url, branch)
    if not db.add_home(conn, name, git_url, branch):
        raise fail(f"a home named {name!r} exists already (`agentd fleet status` lists them)")
    db.set_head(conn, name, head)
    return head


def home(conn: psycopg.Connection[Any], name: str) -> db.HomeRow:
    try:
        db.check_name(name)
    except AgentdError as e:
        raise fail(str(e)) from None
    found = db.homes(conn, name)
    if not found:
        raise fail(f"no home named {name!r} (`agentd fleet add NAME GIT_URL` registers one)")
    return found[0]


# -- reading the fleet back ----------------------------------------------------------------

def status(conn: psycopg.Connection[Any], dbos: DBOSClient) -> dict[str, Any]:
    """Homes with their queued and running turns, and workers with their liveness."""
    live = dbos.list_queued_workflows(queue_name=QUEUE, status=["ENQUEUED", "PENDING"],
                                      load_input=False, load_output=False)
    queued: dict[str, int] = {}
    running: dict[str, list[str]] = {}
    by_worker: dict[str, int] = {}
    for w in live:
        key = w.queue_partition_key or "?"
        if w.status == "ENQUEUED":
            queued[key] = queued.get(key, 0) + 1
        else:
            running.setdefault(key, []).append(w.workflow_id)
            by_worker[w.executor_id or "?"] = by_worker.get(w.executor_id or "?", 0) + 1
    dead_after = float(db.settings(conn)["dead_after"])
    homes = [{"name": h.name, "git_url": h.git_url, "branch": h.branch,
              "head": h.head, "queued": queued.get(h.name, 0),
              "running": running.get(h.name, [])} for h in db.homes(conn)]
    workers = []
    for row in db.workers(conn):
        wid, host, pid, conc, _started, _seen, silent, recovered_by = row
        workers.append({"id": wid, "host": host, "pid": pid, "concurrency": conc,
                        "last_seen_s": round(float(silent), 1),
                        "alive": db.alive(row, dead_after),
                        "recovered_by": recovered_by, "running": by_worker.get(wid, 0)})
    return {"homes": homes, "workers": workers, "dead_after_s": dead_after,
            "queued": sum(queued.values()), "running": sum(map(len, running.values()))}


def usage(conn: psycopg.Connection[Any], name: str | None) -> dict[str, Any]:
    """The ledger summed per home, and over them all."""
    if name:
        home(conn, name)
    rows = [{"home": h, "calls": int(calls), "input_tokens": int(i or 0),
             "output_tokens": int(o or 0), "cost": None if cost is None else float(cost)}
            for h, calls, i, o, cost in db.usage_totals(conn, name)]
    costs = [r["cost"] for r in rows if r["cost"] is not None]
    total = {"calls": sum(r["calls"] for r in rows),
             "input_tokens": sum(r["input_tokens"] for r in rows),
             "output_tokens": sum(r["output_tokens"] for r in rows),
             "cost": round(sum(costs), 6) if costs else None}
    return {"homes": rows, "total": total}


def follow(dbos: DBOSClient, workflow_id: str,
           show: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Wait for a turn, passing each event of its "out" stream to `show` (tool lines,
    text), and return its result ({"status", "text", "error", "steps", "commit", "cost",
    "conflict"}). A turn that ended without its "end" event (the workflow failed or was
    cancelled) gets a result built from its DBOS status."""
    for event in dbos.read_stream(workflow_id, "out", polling_interval_sec=0.1):
        if not isinstance(event, dict):
            continue
        if event.get("kind") == "end":
            return {k: v for k, v in event.items() if k != "kind"}
        if show is not None:
            show(event)
    return ended(dbos.retrieve_workflow(workflow_id).get_status())


def ended(status: Any) -> dict[str, Any]:
    """The result of a turn whose stream closed without its "end" event, from its DBOS
    WorkflowStatus: the workflow's own output, else an error saying how it ended."""
    if status.status == "SUCCESS" and isinstance(status.output, dict):
        return dict(status.output)
    error = status.error
    why = db.first_line(error) if isinstance(error, BaseException) else str(error or "")
    return {"status": "error", "text": "", "steps": 0, "commit": None, "cost": None,
            "conflict": None, "error": f"the turn's workflow ended {status.status}"
                                       + (f": {why}" if why else "")}
