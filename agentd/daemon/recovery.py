"""What a killed daemon leaves behind, put right on the next start (before anything runs).

- A turn in flight (its marker still there, and nobody holding the turn lock) is closed
  out by agentd/inflight.py: an "interrupted" end row, a day-log entry and one recovery
  commit credited to the agent. Any next turn would do the same; the daemon does it at
  once so that its log says so.
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

from collections.abc import Callable
from pathlib import Path

from agentd import gitexec
from agentd.home import Home
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
    """Close out a turn a killed process did not finish; returns the recovery commit's sha."""
    if not Home(home).turn_marker.exists():
        return None
    from agentd import inflight  # git and the day log: not loaded by a daemon with no marker

    lock = TurnLock(home)
    if not lock.try_acquire("recovery"):
        return None  # a turn is running right now (`agentd cron run`): not ours to close
    try:
        marker = inflight.close_out(home, _scanner(home))
    finally:
        lock.release()
    if marker is None:
        return None
    sha = marker.get("commit")
    log("recovery", f"an interrupted {marker.get('trigger')} turn was closed out"
        + (f"; its changes are in commit {sha[:8]}" if sha else ""))
    return sha


def recover(home: Path, log: EventLog) -> None:
    """Everything above, in order: the git lock first, since the commit needs it; and what
    dead agentd processes left on this host (cgroups, scratch folders)."""
    clear_index_lock(home, log)
    recover_turn(home, log)
    if removed := sweep_leftovers():
        log("recovery", f"removed {len(removed)} cgroups and scratch folders of dead agentd "
            "processes")
