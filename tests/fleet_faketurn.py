"""A stand-in for the real turn in the worker tests (tests/test_fleet_worker.py), which are
about processes: who runs a turn, when it is recovered, that a due time fires once. It is
a real DBOS workflow under the real turn's name with two steps: `begin` (held open while
the task says [hold] and the release file is missing, so a test can kill a worker in the
middle of a turn) and `publish` (one commit per turn, carrying `Agentd-Run: <workflow
ID>`, pushed to the home's remote; skipped when that commit is there already, as the
real publish does after a crash). Each step appends a line to LOG: `STEP WID WORKER`.
tests/fleet_workerproc.py runs a worker with it in place of agentd.fleet.turnflow.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from dbos import DBOS

from agentd.fleet import db

_db_url: str | None = None
DIR = Path(os.environ.get("FAKETURN_DIR", "/nonexistent"))  # LOG and the release file


def configure(db_url: str, cache: Path) -> None:
    global _db_url
    _db_url = db_url


def note(step: str, wid: str) -> None:
    with open(DIR / "log", "a") as f:
        f.write(f"{step} {wid} {os.environ.get('FAKETURN_WORKER', '?')}\n")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


@DBOS.step(name="fake.begin")
def begin(wid: str, task: str) -> str:
    note("begin", wid)
    while "[hold]" in task and not (DIR / "release").exists():
        time.sleep(0.05)
    return "begun"


@DBOS.step(name="fake.publish")
def publish(home: str, wid: str) -> str:
    assert _db_url is not None
    with db.connect(_db_url) as conn:
        row = db.homes(conn, home)[0]
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "c"
        git("clone", "-q", "-b", row.branch, row.git_url, str(clone))
        for _ in range(20):
            found = git("log", "--format=%H", f"--grep=Agentd-Run: {wid}$", cwd=clone)
            if found:
                return found.splitlines()[0]  # pushed before a crash: not twice
            note("publish", wid)
            (clone / "turns").mkdir(exist_ok=True)
            (clone / "turns" / wid.replace(":", "_")).write_text(wid + "\n")
            git("add", "-A", cwd=clone)
            git("commit", "-q", "-m", f"turn {wid}\n\nAgentd-Run: {wid}", cwd=clone)
            try:
                git("push", "-q", "origin", f"HEAD:{row.branch}", cwd=clone)
                return git("rev-parse", "HEAD", cwd=clone)
            except subprocess.CalledProcessError:
                git("fetch", "-q", "origin", cwd=clone)
                git("reset", "-q", "--hard", f"origin/{row.branch}", cwd=clone)
    raise RuntimeError("push kept failing")


@DBOS.workflow(name="agentd.fleet.turn")
def fleet_turn(home: str, request: dict[str, Any]) -> dict[str, Any]:
    wid = DBOS.workflow_id
    assert wid is not None
    begin(wid, request["task"])
    sha = publish(home, wid)
    note("end", wid)
    return {"status": "ok", "text": "", "error": None, "steps": 2, "commit": sha,
            "cost": 0.0, "conflict": None}
