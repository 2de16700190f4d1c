"""What a killed daemon leaves behind, put right on the next start (before anything runs).

- A turn in flight (`.agentd/daemon/turn.json` still there, and nobody holding the turn
  lock): its transcript gets an "interrupted" end row, the day log an entry, and whatever
  it changed in the home one recovery commit (`Agentd-Trigger: recovery`), so the next
  turn's "manual edits" commit does not claim the agent's half-done work.
- A stale `.git/index.lock` (a git process killed mid-write): removed by
  agentd.history.clear_stale_locks (also at the start of every turn, whatever triggered
  it) only when no git process is running in the home, under agentd's own git lock.
- Inbox files are never committed (agentd.gitscreen, and `.git/info/exclude`, which
  agentd.gitexec keeps): they are strangers' content, possibly large or binary; the
  transcript keeps what the agent read and outbox/ keeps the answers.
- The command cgroups and scratch folders of dead agentd processes (this daemon's
  predecessor, a killed `agentd run`): agentd.tools.sandbox.sweep_leftovers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agentd import gitexec
from agentd.home import Home
from agentd.jobs import state
from agentd.jobs.log import EventLog
from agentd.tools.sandbox import sweep_leftovers
from agentd.turnlock import TurnLock


def clear_index_lock(home: Path, log: EventLog,
                     min_age: float = gitexec.STALE_LOCK_AGE) -> bool:
    """Remove a stale `.git/index.lock` (and ref locks); True when something was removed."""
    from agentd import history

    removed = history.clear_stale_locks(home, min_age)
    if removed:
        log("recovery", f"removed a stale .git/{', .git/'.join(removed)} (no git process "
            "running)")
    elif (home / ".git" / "index.lock").exists():
        log.warn("recovery", ".git/index.lock is held by a running git process; left alone")
    return bool(removed)


def _session_of(home: Path, marker: dict[str, Any]) -> Path | None:
    """The killed turn's transcript: its continued session, else the newest one opened
    after the turn started for the same task."""
    sessions = Home(home).sessions
    if marker.get("session"):
        p = Home(home).session(marker["session"])
        return p if p.exists() else None
    since = float(marker.get("started") or 0) - 1
    candidates = sorted((p for p in sessions.glob("*.jsonl") if p.stat().st_mtime >= since),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    for p in candidates:
        try:
            with p.open(encoding="utf-8") as f:
                head, first = json.loads(f.readline()), json.loads(f.readline())
        except (OSError, ValueError):
            continue
        if head.get("trigger") == marker.get("trigger") and first.get("text") == marker.get(
                "task"):
            return p
    return None


def _scanner(home: Path) -> Callable[[str], list[str]]:
    """The same secret scan a turn's own commit uses, so a recovery never commits a key."""
    from agentd.config import load_settings
    from agentd.errors import AgentdError
    from agentd.redact import default, from_settings

    try:
        return from_settings(load_settings(home)).find
    except AgentdError:
        return default().find


def recover_turn(home: Path, log: EventLog) -> str | None:
    """Close out a turn the last daemon did not finish; returns the recovery commit's sha."""
    from agentd import history
    from agentd.daylog import append_entry

    marker_path = Home(home).turn_marker
    marker = state.read(marker_path)
    if not isinstance(marker, dict):
        return None
    lock = TurnLock(home)
    if not lock.try_acquire("recovery"):
        return None  # a turn is running right now (`agentd cron run`): not ours to close
    try:
        session = _session_of(home, marker)
        run_id = session.stem if session else "unknown"
        if session:
            with session.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"type": "end", "ts": round(time.time(), 3),
                                    "status": "interrupted",
                                    "error": "the daemon was killed during this turn"}) + "\n")
        scan = _scanner(home)
        changes = history.pending(home, scan)
        files = changes.files
        task = str(marker.get("task") or "")
        stranger = marker.get("profile") != "trusted"  # unknown: fenced, to be safe
        append_entry(home, datetime.now().astimezone(), "recovery", "-", task,
                     "interrupted: the daemon was killed during this turn; its changes were "
                     "committed on the next start", files, list(changes.blocked),
                     source=str(marker.get("trigger")) if stranger else None,
                     held=changes.held)
        files = history.pending(home, scan).files
        sha = history.commit(home, files, f"Recovery: {task}", {
            "Agentd-Run": run_id, "Agentd-Trigger": "recovery"},
            f"Left uncommitted by a {marker.get('kind')} turn ({marker.get('name')}) that "
            "was killed; committed when the daemon started again.")
        marker_path.unlink(missing_ok=True)
    finally:
        lock.release()
    log("recovery", f"an interrupted {marker.get('kind')} turn ({marker.get('name')}) was "
        f"closed out" + (f"; its changes are in commit {sha[:8]}" if sha else ""))
    return sha


def recover(home: Path, log: EventLog) -> None:
    """Everything above, in order: the git lock first, since the commit needs it; and what
    dead agentd processes left on this host (cgroups, scratch folders)."""
    clear_index_lock(home, log)
    recover_turn(home, log)
    if removed := sweep_leftovers():
        log("recovery", f"removed {len(removed)} cgroups and scratch folders of dead agentd "
            "processes")
