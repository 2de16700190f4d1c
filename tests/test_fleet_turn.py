"""A fleet turn as a DBOS workflow (agentd.fleet.turnflow, agentd.fleet.durable): real
PostgreSQL (tests/pgkit.py), real worker processes, local bare repositories as the homes'
remotes, the real sandbox, the fake LLM (its request log is the model's bill)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakellm import FakeLLM

from agentd.errors import AgentdError
from agentd.fleet import db, engine, enqueue, turnflow, workspace
from agentd.fleet.durable import DurableSteps, StepDrift
from agentd.turn import TurnRequest
from tests.fleetfake import copy_db
from tests.pgkit import PgCluster, requires_postgres

pytestmark = requires_postgres

ROOT = Path(__file__).resolve().parent.parent
HOME = "alpha"

# A worker process: DBOS launched with the turn workflow only (no tick), until killed.
# With "die-after-save", it kills itself (-9) once a turn's save has written the database,
# before DBOS records the step: the window where a turn runs again after its save.
# It launches when the test writes a line ("go"): a worker that takes the place of one to
# be killed is started ahead, and has done its imports (seconds) by the time it is needed.
WORKER = """\
import os, signal, sys
from pathlib import Path
import anthropic  # what a turn's first model call would import (slow on a busy machine)
from agentd.fleet import carry, engine, turnflow
url, cache, me = sys.argv[1:4]
if sys.argv[4:] == ["die-after-save"]:
    save = carry.save
    def dying(*args, **kwargs):
        save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    carry.save = dying
turnflow.configure(url, Path(cache))
sys.stdin.readline()
engine.launch(url, me, 2, poll=0.05, workflows=("agentd.fleet.turnflow",))
print("ready", flush=True)
sys.stdin.read()
"""


def git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_AUTHOR_NAME": "owner",
           "GIT_AUTHOR_EMAIL": "o@example.com", "GIT_COMMITTER_NAME": "owner",
           "GIT_COMMITTER_EMAIL": "o@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          capture_output=True).stdout.decode().strip()


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Worker:
    """One worker process, killed (-9) by `kill()` and at the end of its test."""

    def __init__(self, url: str, cache: Path, me: str, log: Path, *flags: str,
                 go: bool = True):
        self.path, self.log = log, log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(cache), me, *flags], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            env=os.environ | {"PYTHONPATH": str(ROOT)})
        if go:
            self.go()

    def go(self) -> Worker:
        """Launch DBOS in the process (which has imported, or is importing, meanwhile)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # DBOS launched: it dequeues from now on
        assert line == b"ready\n", self.path.read_text(errors="replace")[-3000:]
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


class Fleet:
    """One fleet database with one home (`alpha`), its remote a bare repository holding a
    home whose model is the fake LLM."""

    def __init__(self, cluster: PgCluster, template: str, fake: FakeLLM, tmp: Path,
                 home: Path):
        # a copy of the session's set-up database (conftest's fleet_template): DBOS's
        # migrations on a bare one would cost the worker's launch seconds
        self.tmp, self.url = tmp, copy_db(cluster.libpq_url("postgres"), template)
        text = (home / "agentd.toml").read_text()  # the home fixture's tables, at its end
        text = text.replace("[providers.anthropic]\nmax_retries = 1\n",
                            f'[providers.anthropic]\nmax_retries = 0\n'
                            f'base_url = "{fake.anthropic_url}"\n')
        text += "\n[git]\nmax_file_mb = 1\n"  # a step's patch takes files up to 1 MiB
        (home / "agentd.toml").write_text(text)
        git(home, "commit", "-qam", "the fake LLM")
        self.remote = tmp / "remote.git"
        git(tmp, "clone", "-q", "--bare", str(home), str(self.remote))
        self.base = git(self.remote, "rev-parse", "main")
        with db.connect(self.url) as conn:
            db.init_schema(conn)
            db.add_home(conn, HOME, str(self.remote))
            db.set_setting(conn, "endpoints",  # the operator's, for the worker's key
                           [{"url": fake.anthropic_url, "key_env": "ANTHROPIC_API_KEY"}])
        self.cache = tmp / "cache"
        self.client = engine.client(self.url)
        self.workers: list[Worker] = []

    def worker(self, me: str = "w1", *flags: str, go: bool = True) -> Worker:
        """A worker process; with go=False it only imports, until its `go()`."""
        w = Worker(self.url, self.cache, me, self.tmp / f"{me}-{len(self.workers)}.log",
                   *flags, go=go)
        self.workers.append(w)
        return w

    def enqueue(self, task: str, session: str | None = None) -> str:
        req = TurnRequest(task, Path("/nonexistent"), model="anthropic:fake-model",
                          session=session)
        return enqueue.via_client(self.client, HOME, req.to_json(), enqueue.run_id(HOME))

    def follow(self, wid: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The turn's stream until its end event: (the events before it, the result)."""
        events: list[dict[str, Any]] = []
        for event in self.client.read_stream(wid, "out", polling_interval_sec=0.05,
                                             timeout_seconds=90):
            if event.get("kind") == "end":
                return events, {k: v for k, v in event.items() if k != "kind"}
            events.append(event)
        raise AssertionError(f"the stream of {wid} closed without an end event: {events}")

    def commits(self) -> list[str]:
        """The remote's commits since the base, newest first."""
        return git(self.remote, "rev-list", f"{self.base}..main").split()

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.client.destroy()


@pytest.fixture
def fleet(pg_cluster: PgCluster, fleet_template: str, fake: FakeLLM, tmp_path: Path,
          home: Path) -> Iterator[Fleet]:
    f = Fleet(pg_cluster, fleet_template, fake, tmp_path, home)
    yield f
    f.close()


def bash(command: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}


def write(path: str, content: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "write", "arguments": {"path": path, "content": content}}]}


def test_a_turn_commits_once_and_pushes_and_one_that_cannot_run_says_why(
        fleet: Fleet, fake: FakeLLM) -> None:
    assert turnflow.NAME == enqueue.TURN_WORKFLOW  # what `fleet run` queues is this workflow
    fake.push(bash("echo one > one.txt; head -c 1100000 /dev/zero > big.bin"), {"tool_calls": [
        {"name": "read", "arguments": {"path": "one.txt"}}]}, write("two.txt", "two\n"),
        {"text": "all done: sk-ant-test-KEYVALUE"})  # the worker's key, which never leaves it
    fleet.worker()
    wid = fleet.enqueue("make two files")
    events, result = fleet.follow(wid)
    assert result["status"] == "ok", result
    assert result["text"].startswith("all done: ") and "KEYVALUE" not in result["text"]
    assert result["steps"] == 4 and not result["conflict"]
    assert [e["kind"] for e in events] == ["tool", "tool", "tool", "text"]
    assert "KEYVALUE" not in events[-1]["text"]
    assert events[0]["line"].startswith("▸ bash echo one > one.txt; head")
    # over the home's [git] max_file_mb: in neither the step's checkpoint nor the commit
    assert result["notes"] == ["Not in a step's checkpoint, so not rebuilt if the turn is "
                               "recovered elsewhere (over the 1 MB file limit): big.bin"]
    assert fleet.commits() == [result["commit"]]  # exactly one commit, fast-forward
    sha = result["commit"]
    assert git(fleet.remote, "show", f"{sha}:one.txt") == "one"
    assert git(fleet.remote, "show", f"{sha}:two.txt") == "two"
    assert "big.bin" not in git(fleet.remote, "ls-tree", "--name-only", sha)
    trailers = git(fleet.remote, "log", "-1", "--format=%(trailers)", sha)
    assert f"Agentd-Run: {wid}" in trailers
    assert len(fake.requests) == 4
    assert "one" in _tool_results(fake.requests[2].body)[1]  # the read's result, unsnapshotted
    with db.connect(fleet.url) as conn:
        assert db.homes(conn, HOME)[0].head == sha
    assert fleet.client.retrieve_workflow(wid).get_result(polling_interval_sec=0.05) == result

    # Turns that cannot run, on the same worker: no such home, a request that is not one.
    # Status error and a one-line reason, on the stream and as the workflow's result.
    ghost = enqueue.via_client(fleet.client, "ghost", TurnRequest("hi", Path(".")).to_json(),
                               enqueue.run_id("ghost"))
    broken = enqueue.via_client(fleet.client, HOME, {"task": 5}, enqueue.run_id(HOME))
    for wid, why in ((ghost, "no home named 'ghost'"), (broken, "not a turn request")):
        _, result = fleet.follow(wid)
        assert result["status"] == "error" and why in result["error"], result
        assert "\n" not in result["error"] and result["commit"] is None
        assert fleet.client.retrieve_workflow(wid).get_result() == result
    assert fleet.commits() == [sha]

    # A heartbeat with nothing due in HEARTBEAT.md: no model call, no commit (zero tokens).
    beat = TurnRequest("heartbeat", Path("."), trigger="heartbeat", title="Heartbeat")
    wid = enqueue.via_client(fleet.client, HOME, beat.to_json(), enqueue.run_id(HOME))
    _, result = fleet.follow(wid)
    assert result["status"] == "idle" and result["commit"] is None, result
    assert len(fake.requests) == 4 and fleet.commits() == [sha]

    # A home whose agentd.toml is a symlink (to a device that never ends): refused through
    # homefs, one line, nothing read on the host, nothing spent.
    evil = fleet.tmp / "evil"
    git(fleet.tmp, "clone", "-q", str(fleet.remote), str(evil))
    (evil / "agentd.toml").unlink()
    (evil / "agentd.toml").symlink_to("/dev/zero")
    git(evil, "commit", "-qam", "a symlinked config")
    remote = fleet.tmp / "evil.git"
    git(fleet.tmp, "clone", "-q", "--bare", str(evil), str(remote))
    with db.connect(fleet.url) as conn:
        db.add_home(conn, "evil", str(remote))
    wid = enqueue.via_client(fleet.client, "evil", TurnRequest("hi", Path(".")).to_json(),
                             enqueue.run_id("evil"))
    _, result = fleet.follow(wid)
    assert result["status"] == "error" and "agentd.toml" in result["error"], result
    assert "\n" not in result["error"] and len(fake.requests) == 4


def _tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results an Anthropic request carries, in order."""
    out = []
    for m in body["messages"]:
        for block in m["content"] if isinstance(m["content"], list) else []:
            if block.get("type") == "tool_result":
                content = block["content"]
                out.append(content if isinstance(content, str)
                           else "".join(c.get("text", "") for c in content))
    return out


def test_a_killed_turn_is_recovered_without_repeating_completed_steps(
        fleet: Fleet, fake: FakeLLM, tmp_path: Path) -> None:
    """Killed (-9) during its second model call, after its first tool step; recovered by
    the same executor restarted. The first tool prints a fresh random ID into a file: run
    twice, the file would hold two IDs, or the model would see another one. Recovered, it
    is killed again right after its save wrote the chat's transcript to the database (before
    the step's checkpoint): run a third time, the chat holds each message once."""
    outside = tmp_path / "outside"
    outside.mkdir()
    held = threading.Event()
    fake.push(bash(f"cat /proc/sys/kernel/random/uuid | tee -a first.txt; ln -s {outside} out"),
              {**write("second.txt", "two\n"), "hold": held},  # the worker dies here
              write("second.txt", "two\n"),  # the call in flight, made again
              {"text": "both done"})
    first = fleet.worker()
    # the two that take its place, one after the other, started now to import meanwhile
    second = fleet.worker("w1", "die-after-save", go=False)
    third = fleet.worker("w1", go=False)
    wid = fleet.enqueue("two steps", session="chat-k")
    wait_for("the second model call", lambda: len(fake.requests) == 2)
    first.kill()
    held.set()  # the dead worker's request is answered into a closed socket
    # the same executor ID: DBOS resumes its pending turn at launch; this one dies once the
    # turn's save wrote the database, and the next one runs the turn a third time
    assert second.go().proc.wait(90) == -signal.SIGKILL
    with db.connect(fleet.url) as conn:
        saved = db.load_state(conn, HOME, ["sessions/chat-k.jsonl"])
    assert saved["sessions/chat-k.jsonl"].count(b'"two steps"') == 1
    third.go()
    events, result = fleet.follow(wid)
    assert result["status"] == "ok", result
    assert fleet.commits() == [result["commit"]]
    sha = result["commit"]
    ids = git(fleet.remote, "show", f"{sha}:first.txt").splitlines()
    assert len(ids) == 1  # the first tool ran once; its patch rebuilt the file
    assert git(fleet.remote, "show", f"{sha}:second.txt") == "two"
    # the symlink out of the home came back as a symlink, nothing written through it
    assert git(fleet.remote, "cat-file", "-p", f"{sha}:out") == str(outside)
    assert "120000" in git(fleet.remote, "ls-tree", sha, "out")
    assert not list(outside.iterdir())
    # the model's bill: the completed first call was not made again; only the call in
    # flight was (the same conversation twice), then the last one
    bodies = [r.body for r in fake.requests]
    assert len(bodies) == 4
    assert [len(b["messages"]) for b in bodies] == [1, 3, 3, 5]
    assert bodies[1]["messages"] == bodies[2]["messages"]
    assert all(ids[0] in _tool_results(b)[0] for b in bodies[1:])  # the checkpointed result
    kinds = [e["kind"] for e in events]
    assert kinds.count("tool") >= 2 and kinds[-1] == "text"
    with db.connect(fleet.url) as conn:
        chat = db.load_state(conn, HOME, ["sessions/chat-k.jsonl"])["sessions/chat-k.jsonl"]
    rows = [json.loads(line) for line in chat.splitlines()]
    messages = [r for r in rows if r.get("type") == "message"]
    assert len(messages) == 6 and chat.count(b'"two steps"') == 1  # task, 3 replies, 2 results
    assert chat.count(b"both done") == 1 and [r["type"] for r in rows].count("end") == 1


# -- replaying a recorded step on a clone: hostile or drifted checkpoints ---------------

@pytest.fixture
def clone(fleet: Fleet, tmp_path: Path) -> Path:
    base = workspace.sync_mirror(fleet.cache, HOME, str(fleet.remote), "main")
    return workspace.checkout(fleet.cache, HOME, base, tmp_path / "clone")


def _recorded(before: str, after: str, patch: bytes) -> dict[str, Any]:
    return {"content": "", "is_error": False, "before": before, "after": after,
            "patch": base64.b64encode(patch).decode()}


def test_a_replayed_patch_rebuilds_the_step_and_drift_stops_the_turn(clone: Path) -> None:
    steps = DurableSteps(clone, "run:alpha:x")
    before = workspace.tree_of(clone)
    (clone / "new.txt").write_text("made by a step\n")
    after = workspace.tree_of(clone)
    patch = workspace.diff(clone, before)
    (clone / "new.txt").unlink()
    steps._replay(_recorded(before, after, patch))
    assert (clone / "new.txt").read_text() == "made by a step\n" and steps.replayed == 1
    steps._replay(_recorded(before, after, patch))  # at the tree after already: nothing
    assert steps.replayed == 1
    (clone / "stray.txt").write_text("not from any step\n")
    with pytest.raises(StepDrift, match="neither"):
        steps._replay(_recorded(before, after, patch))


HOOK = b"""\
diff --git a/.git/hooks/post-checkout b/.git/hooks/post-checkout
new file mode 100755
index 0000000..1111111
--- /dev/null
+++ b/.git/hooks/post-checkout
@@ -0,0 +1,2 @@
+#!/bin/sh
+touch /tmp/agentd-fleet-pwned
"""


def through(link: str) -> bytes:
    return (f"diff --git a/{link}/x b/{link}/x\nnew file mode 100644\nindex 0000000..1111111\n"
            f"--- /dev/null\n+++ b/{link}/x\n@@ -0,0 +1 @@\n+escaped\n").encode()


def test_a_hostile_recorded_patch_touches_neither_git_nor_outside(
        clone: Path, tmp_path: Path) -> None:
    """A checkpoint is data from the database: a patch into .git, or through a symlink
    out of the home, is refused; nothing is written, the turn stops with one line."""
    outside = tmp_path / "victim"
    outside.mkdir()
    os.symlink(outside, clone / "link")
    steps = DurableSteps(clone, "run:alpha:x")
    before = workspace.tree_of(clone)
    for patch in (HOOK, through("link")):
        with pytest.raises(AgentdError) as e:
            steps._replay(_recorded(before, "0" * 40, patch))
        assert "\n" not in str(e.value)
    assert not (clone / ".git" / "hooks" / "post-checkout").exists()
    assert not list(outside.iterdir())
    assert workspace.tree_of(clone) == before
