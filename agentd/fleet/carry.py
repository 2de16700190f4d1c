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

A turn may run again after its `save` wrote the database (a crash before the step's
checkpoint landed, or after it, before the turn ended): `restore` for that run must give
what the turn started from, or the replayed turn appends its messages to a transcript
that holds them already, and its budget counts its own calls twice. So `save` also
stores who saved (SAVED: the workflow ID and each transcript's length before the turn),
and `restore` for the same workflow cuts the transcripts back to those lengths (they
only grow: agentd.session appends, compaction too) and leaves the turn's own ledger rows
out. The daemon files stay as the turn left them: only a step wrote them (the
heartbeat's gates), and a replayed step does not write them again.

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
from agentd.usage import Row, ledger_line, parse_row

if TYPE_CHECKING:
    import psycopg

DAEMON_FILES = ("daemon/heartbeat.json", "daemon/cron.json")
LEDGER = "usage.jsonl"
META = "fleet-carry.json"  # in .agentd: what `restore` wrote, for `save`
SESSION_CAP = 32 << 20  # bytes of a transcript stored; a larger one stays behind, noted
STATE_CAP = 1 << 20  # bytes of a daemon state file
LEDGER_CAP = 256 << 20  # bytes of the clone's ledger read back
META_CAP = 64 << 10
SAVED = "fleet/saved.json"  # a db.state key, no file: the last turn to save, see above


def carried(request: dict[str, Any]) -> list[str]:
    """The runtime files (relative to `.agentd/`) a turn of `request` carries."""
    paths = list(DAEMON_FILES)
    sid = request.get("session")
    if isinstance(sid, str):
        with contextlib.suppress(AgentdError):  # a bad name: the turn refuses it itself
            paths.append(f"sessions/{session.check_name(sid)}.jsonl")
    return paths


def _ledger_lines(rows: list[tuple[Any, ...]]) -> bytes:
    """db.usage_since rows (a Row's fields, in its order) as agentd.usage ledger lines."""
    return "".join(jsonl.dumps(ledger_line(Row(*r))) + "\n" for r in rows).encode("utf-8")


def _before(files: dict[str, bytes], workflow_id: str) -> dict[str, bytes]:
    """The carried files as they were before the turn `workflow_id` (see the module doc):
    as stored, unless that turn saved them, then its transcripts cut back."""
    saved = files.pop(SAVED, b"")
    try:
        meta = json.loads(saved) if saved and workflow_id else {}
    except ValueError:
        meta = {}
    ours = isinstance(meta, dict) and meta.get("workflow") == workflow_id
    lengths = meta.get("before") if ours else None
    for path, n in lengths.items() if isinstance(lengths, dict) else ():
        if path.startswith("sessions/") and path in files and isinstance(n, int):
            files[path] = files[path][:max(n, 0)]
            if not files[path]:  # the turn began the transcript: none before it
                del files[path]
    return files


def restore(conn: psycopg.Connection[Any], home: str, clone: Path,
            request: dict[str, Any], workflow_id: str = "") -> None:
    """Write the home's carried runtime files and recent ledger rows into the clone, as
    they were before the turn `workflow_id` (when it saved already: a run again)."""
    paths = carried(request)
    files = _before(db.load_state(conn, home, [*paths, SAVED]), workflow_id)
    since = periods(time.time())[2].timestamp() - 86400
    rows = [r for r in db.usage_since(conn, home, since) if not workflow_id
            or r[1] != workflow_id]
    ledger = _ledger_lines(rows)
    with Root(clone) as root:
        for path, data in files.items():
            root.write_bytes(f"{RUNTIME}/{path}", data)
        root.write_bytes(f"{RUNTIME}/{LEDGER}", ledger)
        root.write_bytes(f"{RUNTIME}/{META}", json.dumps(
            {"paths": paths, "ledger": len(ledger),
             "before": {p: len(files.get(p, b"")) for p in paths
                        if p.startswith("sessions/")}}).encode())


def _meta(root: Root) -> tuple[list[str], int, dict[str, int]]:
    """What restore wrote: the carried paths, the ledger's length and each transcript's
    then. Without it (no restore ran), the daemon files and the whole ledger."""
    try:
        meta = json.loads(root.read_bytes(f"{RUNTIME}/{META}", META_CAP))
        paths, offset, before = meta["paths"], meta["ledger"], meta.get("before", {})
        if (isinstance(paths, list) and all(isinstance(p, str) for p in paths)
                and isinstance(offset, int) and offset >= 0 and isinstance(before, dict)):
            paths = [p for p in paths if p in DAEMON_FILES or p.startswith("sessions/")]
            return paths, offset, {p: n for p, n in before.items()
                                   if p in paths and isinstance(n, int)}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return list(DAEMON_FILES), 0, {}


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
        paths, offset, before = _meta(root)
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
    saved = {"workflow": workflow_id, "before": before}
    db.save_state(conn, home, files | {SAVED: json.dumps(saved).encode()})
    return notes
