"""A fleet in a box, for the chaos test and bench/fleet.py: a PostgreSQL database, homes as
local bare repositories made from one `agentd init` home, a scripted fake LLM every home
points at, `agentd fleet worker` subprocesses that can be killed (-9, with everything they
started) at a chosen event and restarted, and checkers that read what happened from the
outside: each home's remote git history, the fake LLM's request log, and a log the agent's
own commands and the remotes' git hooks append to.

Kill points are events, never sleeps. Each is armed before the turn reaches it, and the
thing that reaches it waits (at most a minute) for the test to say go:

- a model call: the fake LLM holds its reply (`ScriptedLLM.hold`);
- a tool call: the command the model asked for (`tool.sh`) logs `held` and waits for a file;
- the push: the remote's `pre-receive` hook (before the branch moves) or `post-receive`
  hook (after it moved, before the pusher hears so) logs `held` and waits for a file.
  The worker dies, the remote does not: once let go, receive-pack finishes the update
  (the pusher never hears of it) or, after `pre`, may fail to report to a dead client.

The homes run bash with `[sandbox] mode = "off"`: the commands are the test's own script,
and they must log to a file outside the home (a sandboxed command sees no host folder and
no network). The sandbox itself is tested elsewhere.

The agent's turn (scripted): the task says `chaos:TOKEN steps:N`; the model asks for N bash
calls `sh tool.sh TOKEN K` one after the other (each writes `turns/TOKEN.K` in the home and
logs `start` and `end`), then answers `done TOKEN`. A cron job's task says
`chaos-cron:HOME`; the model answers it at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemonkit import configure, wait_for
from fakellm import FakeLLM, Reply

AGENTD = [sys.executable, "-m", "agentd"]
TOKEN = re.compile(r"chaos:([0-9a-f]{32}) steps:(\d+)")
CRON = re.compile(r"chaos-cron:([a-z0-9._-]+)")
WORKER_PATH = re.compile(r"/workers/([A-Za-z0-9_.-]+)/")

TOOL_SH = """\
#!/bin/sh
# tool.sh TOKEN K: one tool step of a scripted turn (see tests/fleetkit.py)
log={log}; hold={hold}
echo "$(date +%s.%N) start $1 $2 $(pwd)" >> "$log"
if [ -e "$hold/$1.$2" ]; then
  rm -f "$hold/$1.$2"
  echo "$(date +%s.%N) held tool $1.$2 $(pwd)" >> "$log"
  while [ ! -e "$hold/$1.$2.go" ]; do sleep 0.02; done
fi
mkdir -p turns && echo "$1 $2" > "turns/$1.$2"
echo "$(date +%s.%N) end $1 $2 $(pwd)" >> "$log"
"""

HOOK_SH = """\
#!/bin/sh
# a remote's {phase}-receive hook (see tests/fleetkit.py): log, and hold when armed
log={log}; hold={hold}; home={home}
while read old new ref; do
  echo "$(date +%s.%N) push-{phase} $home $new" >> "$log"
  if [ -e "$hold/$home.{phase}" ]; then
    rm -f "$hold/$home.{phase}"
    echo "$(date +%s.%N) held {phase} $home $new" >> "$log"
    while [ ! -e "$hold/$home.{phase}.go" ]; do sleep 0.02; done
  fi
done
"""


def task(token: str, steps: int) -> str:
    return f"Scripted chaos turn chaos:{token} steps:{steps}. Follow the script."


def new_token() -> str:
    return uuid.uuid4().hex


# -- the model -----------------------------------------------------------------------------


@dataclass
class Call:
    """One model request as the scripted model saw it."""

    t: float
    token: str | None  # a scripted turn's token; None for a cron turn
    home: str | None  # a cron turn's home
    k: int  # tool results in the conversation so far: which step this call is
    worker: str | None  # the worker whose clone the system prompt names, when it does


class ScriptedLLM(FakeLLM):
    """The fake LLM in a scripted mode of its own: the reply is computed from the request
    (which turn, which step), so any number of homes and workers can share one server in
    any order, and a recovered turn asking again gets the same answer."""

    def __init__(self, root: Path, delay: float = 0.0):
        super().__init__()
        self.root, self.delay = root, delay
        self.calls: list[Call] = []
        self._holds: dict[tuple[str, int], threading.Event] = {}
        self.held: dict[tuple[str, int], Call] = {}

    def hold(self, token: str, k: int) -> threading.Event:
        """Hold the reply to turn `token`'s call `k` (0: the first) until the returned
        event is set; `self.held` gets the call once it arrives."""
        event = threading.Event()
        with self._lock:
            self._holds[(token, k)] = event
        return event

    def _next_reply(self, protocol: str, body: Any) -> Reply:
        text = json.dumps(body) if isinstance(body, dict) else ""
        msgs = body.get("messages", []) if isinstance(body, dict) else []
        k = sum(1 for m in msgs if isinstance(m, dict) and m.get("role") == "tool")
        worker = m.group(1) if (m := WORKER_PATH.search(text)) else None
        users = " ".join(json.dumps(m.get("content")) for m in msgs
                         if isinstance(m, dict) and m.get("role") == "user")
        found, cron = TOKEN.search(users), CRON.search(users)
        call = Call(time.time(), found.group(1) if found else None,
                    cron.group(1) if cron and not found else None, k, worker)
        reply: Reply
        if found:
            token, steps = found.group(1), int(found.group(2))
            reply = ({"tool_calls": [{"name": "bash", "arguments": {
                "command": f"sh {self.root}/tool.sh {token} {k + 1}"}}]}
                if k < steps else {"text": f"done {token}"})
        else:
            reply = {"text": "cron ok" if cron else "ok"}
        if self.delay:
            reply["delay"] = self.delay
        with self._lock:
            self.calls.append(call)
            if found and (event := self._holds.pop((found.group(1), k), None)):
                self.held[(found.group(1), k)] = call
                reply["hold"] = event
        return reply


# -- the processes -------------------------------------------------------------------------


def slot(worker: str) -> str:
    """The machine a worker ID runs on (see Fleet.start_worker)."""
    return worker.split("-")[0]


def _server_side(pid: int) -> bool:
    """A git receive-pack: the remote's side of a push to a path, which on a real fleet
    runs on the git server, not on the worker's machine."""
    with contextlib.suppress(OSError):
        return b"receive-pack" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (by parent links in /proc, across PID namespaces),
    but for the remote's side of a push and what it runs (its hooks)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children[int(fields[1])].append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if not _server_side(c):
                out.append(c)
                todo.append(c)
    return out


def kill_tree(pid: int) -> None:
    """What a machine dying does to a worker: it and everything it started (git, bash
    commands) stop at once. Stopped first, so nothing forks away meanwhile. A push in
    flight loses its client; the remote's receive-pack lives on, as on a git server, and
    finishes or gives up on its own (killing it would leave the remote's ref locks)."""
    seen: set[int] = set()
    for _ in range(3):
        fresh = [p for p in [pid, *descendants(pid)] if p not in seen]
        for p in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        seen.update(fresh)
    for p in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


@dataclass
class Worker:
    id: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Kill:
    """A worker killed: when, which, and at what point (for the report and the checks)."""

    t: float
    worker: str
    point: str
    token: str | None = None


@dataclass
class Fleet:
    """The box. `Fleet.make(pg_cluster, homes)`; close() kills what is left."""

    root: Path
    db: str  # libpq URL
    fake: ScriptedLLM
    homes: list[str] = field(default_factory=list)
    workers: dict[str, Worker] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    enqueued: dict[str, tuple[str, int]] = field(default_factory=dict)  # token -> home, steps
    wids: dict[str, str] = field(default_factory=dict)  # token -> its workflow ID
    revived: list[str] = field(default_factory=list)  # workers that exited on their own
    hooks: dict[str, tuple[str, str]] = field(default_factory=dict)  # run ID -> home, token
    serve: subprocess.Popen[bytes] | None = None
    serve_url: str = ""
    hook_secret: str = ""
    stopping: bool = False
    _client: Any = None
    _conn: Any = None  # sql()'s connection
    _histories: dict[str, tuple[str, list[Commit]]] = field(default_factory=dict)

    @classmethod
    def make(cls, pg: Any, delay: float = 0.0, template: str | None = None) -> Fleet:
        """A box on a new database: a copy of `template` (conftest's fleet_template: a
        database `agentd fleet init` set up, copied in a fraction of a second) when given,
        else one set up by `agentd fleet init` here (DBOS's migrations: seconds)."""
        root = Path(tempfile.mkdtemp(prefix="agentd-fleet-"))
        os.chmod(root, 0o755)
        for d in ("remotes", "workers", "hold"):
            (root / d).mkdir()
        (root / "chaos.log").touch()
        (root / "tool.sh").write_text(TOOL_SH.format(log=root / "chaos.log",
                                                     hold=root / "hold"))
        if template is None:
            fleet = cls(root, pg.libpq_url(), ScriptedLLM(root, delay))
            fleet.cli("fleet", "init")
        else:
            from fleetfake import copy_db

            fleet = cls(root, copy_db(pg.libpq_url("postgres"), template),
                        ScriptedLLM(root, delay))
        fleet.settings(trust_home_sandbox=True)  # the homes' bash runs unsandboxed (see top)
        return fleet

    # -- running the CLI and the database -------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env |= {"AGENTD_FLEET_DB": self.db, "OPENAI_API_KEY": "sk-test-fleet",
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*AGENTD, *args, "--db", self.db], capture_output=True,
                                text=True, env=self.env(), timeout=timeout)
        assert result.returncode == 0, (f"agentd {' '.join(args)} exited "
                                        f"{result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """One statement on the box's own connection, kept open: the waits ask many times
        a second, and a connection each time is a PostgreSQL backend forked each time.
        A connection lost (the test restarts PostgreSQL) is made again, once."""
        import psycopg

        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.db, autocommit=True)
                cur = self._conn.execute(query, args)
                return cur.fetchall() if cur.description else []
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def settings(self, **values: Any) -> None:
        """Fleet settings (db.settings: dead_after, beat_every, tick_every, …)."""
        from agentd.fleet import db

        conn = db.connect(self.db)
        try:
            for key, value in values.items():
                db.set_setting(conn, key, value)
        finally:
            conn.close()

    # -- homes ----------------------------------------------------------------------------

    def seed(self, cron: str | None) -> Path:
        """An `agentd init` home pointed at the fake model, made once per kind."""
        from agentd.newhome import init_home

        seed = self.root / ("seed-cron" if cron else "seed")
        if seed.exists():
            return seed
        init_home(seed)
        configure(seed, {"model": "openai:test"}, **{
            "sandbox": {"mode": "off"}, "heartbeat": {"every": "24h"},
            "providers.openai": {"base_url": self.fake.openai_url, "max_retries": 1}})
        if cron:
            (seed / "cron" / "tick.md").write_text(
                f"---\n{cron}\n---\nchaos-cron:HOME answer at once.\n")
        _git(seed, "add", "-A")
        _git(seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "chaos home")
        return seed

    def add_homes(self, names: list[str], cron: str | None = None,
                  via_cli: int = 1) -> None:
        """Homes as bare remotes with the hooks, with a cron job `tick` when `cron` is its
        front-matter line (`every: 30s`); the first `via_cli` registered by
        `agentd fleet add`, the rest straight into the table (the CLI costs a second a
        home on two busy cores)."""
        from agentd.fleet import db

        seed = self.seed(cron)
        conn = db.connect(self.db)
        try:
            for i, name in enumerate(names):
                remote = self.root / "remotes" / f"{name}.git"
                _git_at(self.root, "clone", "-q", "--bare", str(seed), str(remote))
                if cron:  # each home's cron task names the home, as its owner would write
                    self._personalise(remote, name)
                for phase in ("pre", "post"):
                    hook = remote / "hooks" / f"{phase}-receive"
                    hook.write_text(HOOK_SH.format(phase=phase, log=self.root / "chaos.log",
                                                   hold=self.root / "hold", home=name))
                    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
                if i < via_cli:
                    self.cli("fleet", "add", name, str(remote))
                else:
                    db.add_home(conn, name, str(remote))
                self.homes.append(name)
        finally:
            conn.close()

    def _personalise(self, remote: Path, name: str) -> None:
        work = self.root / "tmp-clone"
        shutil.rmtree(work, ignore_errors=True)
        _git_at(self.root, "clone", "-q", str(remote), str(work))
        path = work / "cron" / "tick.md"
        path.write_text(path.read_text().replace("chaos-cron:HOME", f"chaos-cron:{name}"))
        _git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "cron")
        _git(work, "push", "-q", "origin", "main")
        shutil.rmtree(work)

    # -- workers --------------------------------------------------------------------------

    def start_worker(self, wid: str, concurrency: int = 4, wait: bool = True) -> Worker:
        """Worker `wid` on machine `slot(wid)`: a worker started under a new ID in place
        of a dead one (`w2-5` for `w2`) reuses that machine's cache, as a replacement
        process on the same disk would."""
        self.stopping = False
        cache = self.root / "workers" / slot(wid) / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        log = self.root / "workers" / f"{wid}.{time.monotonic_ns()}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*AGENTD, "fleet", "worker", "--db", self.db, "--id", wid,
                 "--concurrency", str(concurrency), "--cache", str(cache)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                start_new_session=True)
        worker = Worker(wid, proc, log, time.time())
        self.workers[wid] = worker
        if wait:
            self.wait_worker(worker)
        return worker

    def wait_worker(self, worker: Worker, timeout: float = 90) -> None:
        """Up: it logged that it started (DBOS launched, the queue declared) and its
        liveness row carries its pid: positive events, not a guess."""
        def up() -> bool:
            assert worker.alive, f"worker {worker.id} exited:\n{worker.log.read_text()}"
            return f"{worker.id} started" in worker.log.read_text(errors="replace") and bool(
                self.sql("SELECT 1 FROM agentd_fleet.workers WHERE id = %s AND pid = %s",
                         worker.id, worker.proc.pid))
        wait_for(up, timeout, f"worker {worker.id} to start")

    def revive(self) -> list[str]:
        """Restart (same ID) the workers that exited on their own, as systemd would: one
        declared dead by the others exits on purpose (worker.DECLARED_EXIT). Returns
        their IDs with exit statuses, for the report."""
        revived = []
        for wid, w in list(self.workers.items()):
            if not w.alive and not any(k.worker == wid and k.t >= w.started
                                       for k in self.kills) and not self.stopping:
                revived.append(f"{wid} (exit {w.proc.returncode})")
                self.start_worker(wid, wait=False)
        return revived

    def kill(self, wid: str, point: str, token: str | None = None) -> None:
        worker = self.workers[wid]
        kill_tree(worker.proc.pid)
        worker.proc.wait(30)
        self.kills.append(Kill(time.time(), wid, point, token))

    def stop_workers(self) -> None:
        self.stopping = True
        for w in self.workers.values():
            if w.alive:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers.values():
            try:
                w.proc.wait(60)
            except subprocess.TimeoutExpired:
                kill_tree(w.proc.pid)
                w.proc.wait(10)

    def executor_of(self, workflow_id: str) -> str | None:
        rows = self.sql("SELECT executor_id FROM dbos.workflow_status WHERE workflow_uuid "
                        "= %s", workflow_id)
        return rows[0][0] if rows else None

    # -- turns ----------------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            from agentd.fleet import engine

            self._client = engine.client(self.db)
        return self._client

    def enqueue(self, home: str, steps: int = 2, token: str | None = None) -> str:
        """A scripted turn through the client (as `fleet run` and the bridge do); its
        workflow ID is `run:HOME:TOKEN`."""
        from agentd.fleet import enqueue
        from agentd.turn import TurnRequest

        token = token or new_token()
        self.enqueued[token] = (home, steps)
        self.wids[token] = f"run:{home}:{token}"
        request = TurnRequest(task(token, steps), Path("."), "cli").to_json()
        enqueue.via_client(self.client(), home, request, self.wids[token])
        return token

    def run_cli(self, home: str, steps: int = 2) -> str:
        """A scripted turn through `agentd fleet run` (its workflow ID is its own)."""
        token = new_token()
        self.enqueued[token] = (home, steps)
        self.wids[token] = self.cli("fleet", "run", home, task(token, steps)).stdout.strip()
        return token

    def start_serve(self, wait: bool = True) -> str:
        """`agentd fleet serve` on a free loopback port, webhooks on; its URL (without
        `wait`, "" at once: wait_serve() waits for it, meanwhile the test goes on)."""
        import base64

        key = base64.b64encode(os.urandom(24)).decode()
        self.hook_secret = f"whsec_{key}"
        log = self.root / "serve.log"
        with log.open("wb") as out:
            self.serve = subprocess.Popen(
                [*AGENTD, "fleet", "serve", "--db", self.db, "--port", "0"], stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                env=self.env() | {"AGENTD_FLEET_WEBHOOK_SECRET": self.hook_secret,
                                  "AGENTD_FLEET_TOKEN": "chaos-token-0123456789"})
        return self.wait_serve() if wait else ""

    def wait_serve(self) -> str:
        """The URL of the `fleet serve` start_serve started, once it says it listens."""
        log = self.root / "serve.log"

        def listening() -> str | None:
            assert self.serve is not None and self.serve.poll() is None, log.read_text()
            m = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
            return m.group(1) if m else None
        self.serve_url = wait_for(listening, 90, "fleet serve to listen")
        return self.serve_url

    def webhook(self, home: str, steps: int = 0) -> str:
        """A scripted turn delivered as a signed Standard Webhook (the real library signs
        it); returns its token. The run's ID (from the 202) goes to `self.hooks`."""
        import urllib.request
        from datetime import UTC, datetime

        from standardwebhooks import Webhook

        token = new_token()
        body = json.dumps({"text": task(token, steps)})
        msg_id, now = f"msg_{token}", datetime.now(UTC)
        signature = Webhook(self.hook_secret).sign(msg_id, now, body)
        request = urllib.request.Request(
            f"{self.serve_url}/homes/{home}/hooks/chaos", data=body.encode(), headers={
                "content-type": "application/json", "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202, response.read()
            self.hooks[json.load(response)["id"]] = (home, token)
        return token

    def wait_done(self, tokens: list[str], timeout: float = 120) -> None:
        """Every one of `tokens` (and every webhook run) has its commit in its home's
        remote, or its workflow ended without one (which check_turns reports)."""
        def done() -> bool:
            self.revived += self.revive()
            found, runs = self.committed(), self.runs_committed()
            waiting = [self.wids[t] for t in tokens if t not in found]
            waiting += [w for w in self.hooks if not runs[w]]
            if not waiting:
                return True
            ended = self.sql("SELECT count(*) FROM dbos.workflow_status WHERE status IN "
                             "('SUCCESS', 'ERROR', 'CANCELLED', "
                             "'MAX_RECOVERY_ATTEMPTS_EXCEEDED') AND workflow_uuid = ANY(%s)",
                             waiting)[0][0]
            return ended == len(waiting)  # ended without a commit: check_turns says so
        try:
            wait_for(done, timeout, f"{len(tokens)} turns to commit")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnose(tokens)}") from None

    def diagnose(self, tokens: list[str]) -> str:
        """Why turns are missing: their DBOS rows, and the workers' last log lines."""
        found = self.committed()
        missing = [t for t in tokens if t not in found]
        runs = self.runs_committed()
        lines = [f"{len(missing)} of {len(tokens)} turns not committed; webhook runs not "
                 f"committed: {[w for w in self.hooks if not runs[w]]}"]
        for t in missing[:10]:
            rows = self.sql("SELECT s.workflow_uuid, s.status, s.executor_id, o.error FROM "
                            "dbos.workflow_status s LEFT JOIN dbos.workflow_output o USING "
                            "(workflow_uuid) WHERE s.inputs LIKE %s OR s.workflow_uuid "
                            "LIKE %s", f"%{t}%", f"%{t}")
            lines.append(f"  {t} ({self.enqueued[t][0]}): {rows}")
        for w in self.workers.values():
            tail = w.log.read_text(errors="replace").splitlines()[-8:]
            lines.append(f"--- {w.id} ({'alive' if w.alive else w.proc.returncode}) ---")
            lines += tail
        return "\n".join(lines)

    # -- what happened --------------------------------------------------------------------

    def events(self) -> list[list[str]]:
        """The tool and hook log, split: [time, what, …]."""
        return [line.split() for line in
                (self.root / "chaos.log").read_text().splitlines() if line.strip()]

    def wait_event(self, what: str, key: str, timeout: float = 90) -> list[str]:
        def seen() -> list[str] | None:
            return next((e for e in self.events() if e[1] == what and key in e[2:]), None)
        return wait_for(seen, timeout, f"{what} {key}")

    def release(self, name: str) -> None:
        (self.root / "hold" / f"{name}.go").touch()

    def arm(self, name: str) -> None:
        (self.root / "hold" / name).touch()

    def history(self, home: str) -> list[Commit]:
        """The home's remote history, read again only when its branch moved: the waits
        ask for every home's many times a second, and a `git log` per home per poll
        (50 homes) took the CPU the workers under test need."""
        remote = self.root / "remotes" / f"{home}.git"
        try:  # where git keeps a ref it just updated (a packed one is read every time)
            head = (remote / "refs" / "heads" / "main").read_text().strip()
        except FileNotFoundError:
            return remote_history(remote)
        cached = self._histories.get(home)
        if cached is None or cached[0] != head:
            cached = self._histories[home] = (head, remote_history(remote))
        return cached[1]

    def runs_committed(self) -> Counter[str]:
        """Agentd-Run trailer (the workflow ID) -> how many commits carry it, all homes."""
        out: Counter[str] = Counter()
        for home in self.homes:
            for c in self.history(home):
                if "Agentd-Run" in c.trailers:
                    out[c.trailers["Agentd-Run"]] += 1
        return out

    def committed(self) -> dict[str, list[str]]:
        """token -> the commits (in any home) that added one of its `turns/` markers."""
        out: dict[str, list[str]] = defaultdict(list)
        for home in self.homes:
            for c in self.history(home):
                for token in {Path(f).name.split(".")[0] for f in c.added
                              if f.startswith("turns/")}:
                    out[token].append(c.sha)
        return out

    def close(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.terminate()
            self.serve.wait(30)
        for w in self.workers.values():
            if w.alive:
                kill_tree(w.proc.pid)
                w.proc.wait(10)
        for p in (self.root / "hold").iterdir():  # let any held hook or tool go
            if not p.name.endswith(".go"):
                self.release(p.name)
        self.fake.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.destroy()
        if self._conn is not None:
            self._conn.close()
        if os.environ.get("AGENTD_KEEP_FLEET"):  # to read the logs after a failure
            print(f"fleet kept in {self.root}")
        else:  # ~20,000 files: on a disk mounted with `discard` deleting them took half a
            # minute of waiting on the disk; the test need not wait (`rm` ends on its own)
            subprocess.run(["sh", "-c", 'rm -rf -- "$1" >/dev/null 2>&1 &', "sh",
                            str(self.root)], check=True)


# -- git -----------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return _git_at(repo, *args)


def _git_at(cwd: Path, *args: str) -> str:
    """git on the test's own repositories (seed homes and remotes), not on agent content."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "HOME": str(cwd),
                                 "GIT_CONFIG_NOSYSTEM": "1"})
    assert result.returncode == 0, f"git {args}: {result.stderr}"
    return result.stdout


@dataclass
class Commit:
    sha: str
    parents: list[str]
    subject: str
    trailers: dict[str, str]
    added: list[str]


def remote_history(remote: Path, branch: str = "main") -> list[Commit]:
    """The branch's first-parent history, oldest first, with each commit's trailers and
    the files it added."""
    out = _git_at(remote, "log", "--reverse", "--format=%x1e%H %P%x1f%s%x1f%B%x1f",
                  "--name-status", "--no-renames", branch)
    commits = []
    for chunk in out.split("\x1e")[1:]:
        head, subject, body, files = chunk.split("\x1f")
        sha, *parents = head.split()
        trailers = dict(re.findall(r"^(Agentd-[A-Za-z-]+): (.*)$", body, re.M))
        added = [line.split("\t", 1)[1] for line in files.strip().splitlines()
                 if line.startswith("A\t")]
        commits.append(Commit(sha, parents, subject, trailers, added))
    return commits


# -- the checks ----------------------------------------------------------------------------


@dataclass
class Execution:
    """One run of a tool step, from the log its command wrote."""

    t: float
    worker: str | None
    ended: bool = False


def tool_runs(events: list[list[str]]) -> dict[tuple[str, int], list[Execution]]:
    runs: dict[tuple[str, int], list[Execution]] = defaultdict(list)
    open_: dict[tuple[str, int, str], Execution] = {}
    for e in events:
        if e[1] in ("start", "end"):
            key, where = (e[2], int(e[3])), " ".join(e[4:])
            m = WORKER_PATH.search(where + "/")
            if e[1] == "start":
                run = Execution(float(e[0]), m.group(1) if m else None)
                runs[key].append(run)
                open_[(*key, where)] = run
            elif (run := open_.pop((*key, where), None)) is not None:
                run.ended = True
    return runs


def repeats_explained(name: str, runs: list[tuple[float, str | None]],
                      kills: list[Kill]) -> list[str]:
    """Every run of one step but the last must have been cut short by a kill of its worker
    after it began (it was the step in flight); anything else ran a completed step again."""
    problems = []
    for (t, worker), (t_next, _) in itertools.pairwise(runs):
        if not any(t <= k.t <= t_next and worker in (None, slot(k.worker))
                   for k in kills):
            problems.append(f"{name} ran again at {t_next:.2f} after completing at {t:.2f} "
                            f"on {worker} (no kill of that worker in between)")
    return problems


def check_turns(fleet: Fleet) -> list[str]:
    """The issue's checks for the scripted turns; returns the problems found."""
    problems: list[str] = []
    committed = fleet.committed()
    for token, (home, steps) in fleet.enqueued.items():
        shas = committed.get(token, [])
        if len(shas) != 1:
            status = fleet.sql("SELECT status FROM dbos.workflow_status WHERE "
                               "workflow_uuid = %s", fleet.wids[token])
            problems.append(f"turn {fleet.wids[token]} committed {len(shas)} times "
                            f"(workflow {status[0][0] if status else 'missing'}): {shas}")
            continue
        tree = set(_git_at(fleet.root / "remotes" / f"{home}.git", "ls-tree", "-r",
                           "--name-only", shas[0], "turns/").split())
        missing = [k for k in range(1, steps + 1) if f"turns/{token}.{k}" not in tree]
        if missing:
            problems.append(f"turn {token} of {home}: its commit lacks steps {missing}")
    runs = fleet.runs_committed()
    for wid, (home, token) in fleet.hooks.items():
        if runs[wid] != 1:
            problems.append(f"webhook turn {wid} ({token}) of {home} committed "
                            f"{runs[wid]} times")
    tools = tool_runs(fleet.events())
    for (token, k), runs in tools.items():
        if not runs[-1].ended:
            problems.append(f"tool step {token}.{k}: its last run did not finish")
        problems += repeats_explained(f"tool step {token}.{k}",
                                      [(r.t, r.worker) for r in runs], fleet.kills)
    calls: dict[tuple[str, int], list[Call]] = defaultdict(list)
    for c in fleet.fake.calls:
        if c.token:
            calls[(c.token, c.k)].append(c)
    for (token, k), cs in calls.items():
        problems += repeats_explained(f"model call {token}.{k}",
                                      [(c.t, c.worker) for c in cs], fleet.kills)
    problems += check_overlap(fleet, tools, calls)
    problems += check_budget(fleet, tools, calls)
    return problems


def check_budget(fleet: Fleet, tools: dict[tuple[str, int], list[Execution]],
                 calls: dict[tuple[str, int], list[Call]]) -> list[str]:
    """At most the step in flight when a worker died runs again: per turn, the steps run
    more than once (model calls and tool runs together) are at most the kills of workers
    it was running on."""
    events: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
    repeats: Counter[str] = Counter()
    for (token, _), runs in tools.items():
        events[token] += [(r.t, r.worker) for r in runs]
        repeats[token] += len(runs) - 1
    for (token, _), cs in calls.items():
        events[token] += [(c.t, c.worker) for c in cs]
        repeats[token] += len(cs) - 1
    problems = []
    for token, n in repeats.items():
        if not n:
            continue
        evs = sorted(events[token])
        hits = sum(1 for k in fleet.kills if evs[0][0] <= k.t <= evs[-1][0]
                   and any(t <= k.t and w in (slot(k.worker), None) for t, w in evs))
        if n > hits:
            problems.append(f"turn {token} repeated {n} steps but was hit by {hits} kills")
    return problems


def check_overlap(fleet: Fleet, tools: dict[tuple[str, int], list[Execution]],
                  calls: dict[tuple[str, int], list[Call]]) -> list[str]:
    """No home ran two turns at once: per home, the spans [first event, last event] of its
    turns (model calls and tool runs, across workers) never overlap, and no cron turn's
    model call falls inside another turn's span."""
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    times: dict[str, list[float]] = defaultdict(list)
    for (token, _), cs in calls.items():
        times[token] += [c.t for c in cs]
    for (token, _), runs in tools.items():
        times[token] += [r.t for r in runs]
    for token, ts in times.items():
        if token in fleet.enqueued:
            spans[fleet.enqueued[token][0]].append((min(ts), max(ts), token))
    problems = []
    for home, ss in spans.items():
        ss.sort()
        for a, b in itertools.pairwise(ss):
            if b[0] < a[1]:
                problems.append(f"{home} ran turns {a[2]} and {b[2]} at once "
                                f"({a[0]:.2f}-{a[1]:.2f} and {b[0]:.2f}-{b[1]:.2f})")
        for c in fleet.fake.calls:
            if c.home == home and any(s < c.t < e for s, e, _ in ss):
                problems.append(f"{home} ran a cron turn at {c.t:.2f} inside another turn")
    return problems


CRON_ID = re.compile(r"cron:([^:]+):([^:]+):(.+)\Z")


def check_cron(fleet: Fleet, period: float) -> tuple[list[str], int]:
    """Every cron due time fired exactly once: each finished cron workflow (ID = home,
    job, due time) has exactly one commit; no commit of a cron turn without one; the
    due times of each job follow each other without a gap. Returns (problems, fired)."""
    from datetime import datetime

    rows = fleet.sql("SELECT workflow_uuid, status FROM dbos.workflow_status "
                     "WHERE workflow_uuid LIKE 'cron:%%'")
    problems: list[str] = []
    due: dict[tuple[str, str], list[float]] = defaultdict(list)
    finished = set()
    for wid, status in rows:
        m = CRON_ID.match(wid)
        if not m:
            problems.append(f"cron workflow ID {wid!r} is not cron:HOME:JOB:DUE")
            continue
        due[(m.group(1), m.group(2))].append(
            datetime.fromisoformat(m.group(3).replace("Z", "+00:00")).timestamp())
        if status == "SUCCESS":
            finished.add(wid)
    commits: Counter[str] = Counter()
    for home in fleet.homes:
        for c in fleet.history(home):
            run = c.trailers.get("Agentd-Run", "")
            if run.startswith("cron:"):
                commits[run] += 1
    for wid in finished:
        if commits[wid] != 1:
            problems.append(f"cron turn {wid} committed {commits[wid]} times")
    for wid in commits:
        if wid not in finished:
            problems.append(f"a commit of cron turn {wid} that DBOS does not show finished")
    for (home, job), ts in due.items():
        ts.sort()
        for a, b in itertools.pairwise(ts):
            if abs((b - a) - period) > 0.5:
                problems.append(f"cron {home}/{job}: due times {a} then {b}: a gap or a "
                                "double")
    return problems, len(finished)
