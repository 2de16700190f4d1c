"""Runtime state travelling with the home: what a single home keeps in its git-ignored
`.agentd/` and a fleet turn needs on whichever worker runs it.

Git carries the home's files (agentd.fleet.workspace); these are not in git, so they live in
the fleet database (db.state, db.usage) between turns and are written into the turn's fresh
clone before it runs (`restore`) and read back after (`save`):

- the request's session transcript (`.agentd/sessions/NAME.jsonl`), so a chat continues on
  any worker; a session-less turn's transcript is its own and stays behind with the clone
  (its commit and day-log entry are the record);
- the daemon's heartbeat and cron state (`.agentd/daemon/heartbeat.json`, `cron.json`);
- the usage ledger: `restore` writes the home's fleet-wide rows of the budget windows (this
  month, and a day before it, as agentd.usage.offset_since reads), so the turn's budget
  checks (agentd.budget) count what every worker spent for this home; `save` books the
  rows the turn appended, keyed (workflow ID, n-th call of the turn), so a turn recovered
  on another worker, which books its replayed calls again, counts nothing twice.

The clone is the agent's home, so its files are hostile: all reads and writes go through
agentd.homefs (no symlink followed, only regular files, capped), and a file over its cap is
left behind with a note rather than stored.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd import jsonl, session
from agentd.budget import periods
from agentd.errors import AgentdError
from agentd.fleet import db
from agentd.home import RUNTIME
from agentd.homefs import Root
from agentd.usage import parse_row

if TYPE_CHECKING:
    import psycopg

DAEMON_FILES = ("daemon/heartbeat.json", "daemon/cron.json")
LEDGER = "usage.jsonl"
META = "fleet-carry.json"  # in .agentd: what `restore` wrote, for `save`
SESSION_CAP = 32 << 20  # bytes of a transcript stored; a larger one stays behind, noted
STATE_CAP = 1 << 20  # bytes of a daemon state file
LEDGER_CAP = 256 << 20  # bytes of the clone's ledger read back
META_CAP = 64 << 10


def carried(request: dict[str, Any]) -> list[str]:
    """The runtime files (relative to `.agentd/`) a turn of `request` carries."""
    paths = list(DAEMON_FILES)
    sid = request.get("session")
    if isinstance(sid, str):
        with contextlib.suppress(AgentdError):  # a bad name: the turn refuses it itself
            paths.append(f"sessions/{session.check_name(sid)}.jsonl")
    return paths


def _ledger_lines(rows: list[tuple[Any, ...]]) -> bytes:
    """db.usage_since rows as agentd.usage ledger lines (the fields append_ledger writes)."""
    out = []
    for ts, run, model, trigger, inp, outp, cread, cwrite, usd in rows:
        out.append(jsonl.dumps({"ts": round(ts, 3), "run": run, "model": model,
                                "trigger": trigger, "input": inp, "output": outp,
                                "cache_read": cread, "cache_write": cwrite, "cost": usd}))
    return "".join(line + "\n" for line in out).encode("utf-8")


def restore(conn: psycopg.Connection[Any], home: str, clone: Path,
            request: dict[str, Any]) -> None:
    """Write the home's carried runtime files and recent ledger rows into the clone."""
    paths = carried(request)
    files = db.load_state(conn, home, paths)
    since = periods(time.time())[2].timestamp() - 86400
    ledger = _ledger_lines(db.usage_since(conn, home, since))
    with Root(clone) as root:
        for path, data in files.items():
            root.write_bytes(f"{RUNTIME}/{path}", data)
        root.write_bytes(f"{RUNTIME}/{LEDGER}", ledger)
        root.write_bytes(f"{RUNTIME}/{META}", json.dumps(
            {"paths": paths, "ledger": len(ledger)}).encode())


def _meta(root: Root) -> tuple[list[str], int]:
    """What restore wrote: the carried paths and the ledger's length then. Without it (no
    restore ran), the daemon files and the whole ledger."""
    try:
        meta = json.loads(root.read_bytes(f"{RUNTIME}/{META}", META_CAP))
        paths, offset = meta["paths"], meta["ledger"]
        if (isinstance(paths, list) and all(isinstance(p, str) for p in paths)
                and isinstance(offset, int) and offset >= 0):
            return [p for p in paths if p in carried({}) or p.startswith("sessions/")], offset
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return list(DAEMON_FILES), 0


def _new_rows(root: Root, offset: int) -> list[dict[str, Any]]:
    """The ledger rows the turn appended after what restore wrote (complete lines only)."""
    try:
        data = root.read_bytes(f"{RUNTIME}/{LEDGER}", LEDGER_CAP)
    except OSError:
        return []
    tail = data[offset:] if len(data) >= offset else data
    tail = tail[: tail.rfind(b"\n") + 1]
    rows = [parse_row(line) for line in tail.split(b"\n") if line.strip()]
    return [{"model": r.model, "trigger": r.trigger, "input_tokens": r.input,
             "output_tokens": r.output, "cache_read": r.cache_read,
             "cache_write": r.cache_write, "cost": r.cost} for r in rows if r is not None]


def save(conn: psycopg.Connection[Any], home: str, clone: Path,
         workflow_id: str) -> list[str]:
    """Store the clone's carried runtime files and book the turn's ledger rows. Returns
    notes (a file left behind: too large, or not a regular file)."""
    notes: list[str] = []
    files: dict[str, bytes] = {}
    with Root(clone) as root:
        paths, offset = _meta(root)
        for path in paths:
            cap = SESSION_CAP if path.startswith("sessions/") else STATE_CAP
            try:
                data = root.read_bytes(f"{RUNTIME}/{path}", cap + 1)
            except FileNotFoundError:
                continue
            except OSError as e:
                notes.append(f"{RUNTIME}/{path} not carried: {e}")
                continue
            if len(data) > cap:
                notes.append(f"{RUNTIME}/{path} not carried: over {cap >> 20} MiB")
                continue
            files[path] = data
        rows = _new_rows(root, offset)
    db.record_usage(conn, [{"workflow_id": workflow_id, "seq": i, "home": home, **r}
                           for i, r in enumerate(rows)])
    db.save_state(conn, home, files)
    return notes
