"""A DBOS worker whose turn workflow is a script, for the tests of what talks to workers
(`agentd fleet run --wait`, `agentd fleet serve`): it registers the turn workflow under
its real name (enqueue.TURN_WORKFLOW) and writes the real "out" stream, so the CLI and the
bridge are driven exactly as a real worker drives them, without git, a model or a sandbox
(those are tested in test_fleet_turn.py and test_fleet_chaos.py).

The task says what the turn does: `say:TEXT` answers TEXT after one tool event;
`fail:WHY` ends with status "error"; `crash` raises (the workflow ends ERROR without an
"end" event); `hold:NAME` writes HOLD/NAME.held and waits for HOLD/NAME.go before
answering. Every request is appended to HOLD/requests.jsonl.

Run: python tests/fleetfake.py DB_URL WORKER_ID HOLD_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from dbos import DBOS

HOLD = Path(sys.argv[3]) if __name__ == "__main__" else Path("/nonexistent")


def _end(result: dict[str, Any]) -> dict[str, Any]:
    DBOS.write_stream("out", {"kind": "end", **result})
    DBOS.close_stream("out")
    return result


@DBOS.workflow(name="agentd.fleet.turn")
def fleet_turn(home: str, request: dict[str, Any]) -> dict[str, Any]:
    task = str(request.get("task", ""))
    with (HOLD / "requests.jsonl").open("a") as f:
        f.write(json.dumps({"home": home, "request": request,
                            "workflow_id": DBOS.workflow_id}) + "\n")
    result = {"status": "ok", "text": "", "error": None, "steps": 2, "commit": "c0ffee" * 6
              + "c0ff", "cost": 0.0012, "conflict": None}
    DBOS.write_stream("out", {"kind": "tool", "line": f"bash echo {home}"})
    if task.startswith("hold:"):
        name = task[5:].split()[0]
        (HOLD / f"{name}.held").write_text("")
        while not (HOLD / f"{name}.go").exists():
            time.sleep(0.02)
        task = f"say:released {name}"
    if task == "crash":
        raise RuntimeError("the scripted turn crashed")
    if task.startswith("fail:"):
        return _end({**result, "status": "error", "error": task[5:], "commit": None})
    text = task[4:] if task.startswith("say:") else f"done: {task}"
    DBOS.write_stream("out", {"kind": "text", "text": text})
    return _end({**result, "text": text})


if __name__ == "__main__":
    import signal

    from agentd.fleet import engine

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait
    engine.launch(sys.argv[1], sys.argv[2], 4, poll=0.05, workflows=())
    (HOLD / f"worker-{sys.argv[2]}.ready").write_text("")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    DBOS.destroy(workflow_completion_timeout_sec=1)
