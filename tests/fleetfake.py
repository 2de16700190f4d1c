"""A DBOS worker whose turn workflow is a script, for the tests of what talks to workers
(`agentd fleet run --wait`, `agentd fleet serve`): it registers the turn workflow under
its real name (enqueue.TURN_WORKFLOW) and writes the real "out" stream and ledger rows, so
the CLI and the bridge are driven exactly as a real worker drives them, without git, a
model or a sandbox (those are tested in test_fleet_turn.py and test_fleet_chaos.py).

The task says what the turn does: `say:TEXT` answers TEXT after one tool event;
`fail:WHY` ends with status "error"; `crash` raises (the workflow ends ERROR without an
"end" event); `hold:NAME` writes HOLD/NAME.held and waits for HOLD/NAME.go before
answering; anything else answers "done: TASK". Every request is appended to
HOLD/requests.jsonl; each finished turn books one ledger row (100 in, 7 out).

As a script (`python tests/fleetfake.py DB_URL WORKER_ID HOLD_DIR`) it is the worker;
imported, it gives the tests their database and worker fixtures' helpers. The workflow is
registered only in the script, never in the test process (DBOS is a process singleton).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def register(url: str, hold: Path) -> None:
    from dbos import DBOS

    from agentd.fleet import db

    def end(home: str, result: dict[str, Any]) -> dict[str, Any]:
        with db.connect(url) as conn:
            db.record_usage(conn, [{"workflow_id": DBOS.workflow_id, "seq": 0, "home": home,
                                    "model": "fake:m", "trigger": "t", "input_tokens": 100,
                                    "output_tokens": 7, "cache_read": 0, "cache_write": 0,
                                    "cost": 0.0012}])
        DBOS.write_stream("out", {"kind": "end", **result})
        DBOS.close_stream("out")
        return result

    @DBOS.workflow(name="agentd.fleet.turn")
    def fleet_turn(home: str, request: dict[str, Any]) -> dict[str, Any]:
        task = str(request.get("task", ""))
        with (hold / "requests.jsonl").open("a") as f:
            f.write(json.dumps({"home": home, "request": request,
                                "workflow_id": DBOS.workflow_id}) + "\n")
        result = {"status": "ok", "text": "", "error": None, "steps": 2,
                  "commit": "c0ffee" * 6 + "c0ff", "cost": 0.0012, "conflict": None}
        DBOS.write_stream("out", {"kind": "tool", "line": f"bash echo {home}"})
        if task.startswith("hold:"):
            name = task[5:].split()[0]
            (hold / f"{name}.held").write_text("")
            while not (hold / f"{name}.go").exists():
                time.sleep(0.02)
            task = f"say:released {name}"
        if task == "crash":
            raise RuntimeError("the scripted turn crashed")
        if task.startswith("fail:"):
            return end(home, {**result, "status": "error", "error": task[5:], "commit": None})
        text = task[4:] if task.startswith("say:") else f"done: {task}"
        DBOS.write_stream("out", {"kind": "text", "text": text})
        return end(home, {**result, "text": text})


def copy_db(libpq_url: str, template: str) -> str:
    """A new database copied from `template` (a set-up fleet database: copying takes a
    fraction of a second, DBOS's migrations take seconds); its URL."""
    import psycopg

    name = f"f_{os.urandom(6).hex()}"
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return libpq_url.replace("/postgres?", f"/{name}?", 1)


def start_worker(url: str, tmp: Path, wid: str = "w1") -> tuple[subprocess.Popen[bytes], Path]:
    """The scripted worker, started and ready: (its process, its hold folder)."""
    from daemonkit import wait_for

    hold = tmp / "hold"
    hold.mkdir(exist_ok=True)
    with (tmp / f"worker-{wid}.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, __file__, url, wid, str(hold)],
                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: (hold / f"worker-{wid}.ready").exists() or proc.poll() is not None,
                 180, "the worker to start")
        assert proc.poll() is None, (tmp / f"worker-{wid}.log").read_text()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, hold


if __name__ == "__main__":
    import signal

    from agentd.fleet import engine

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait
    register(sys.argv[1], Path(sys.argv[3]))
    engine.launch(sys.argv[1], sys.argv[2], 4, poll=0.05, workflows=())
    (Path(sys.argv[3]) / f"worker-{sys.argv[2]}.ready").write_text("")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    os._exit(0)  # a scripted turn left holding must not keep the process alive
