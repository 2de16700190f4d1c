"""The turn in flight: a marker written when a turn starts and removed when it ends, so a
turn killed outright (`kill -9`, the OOM killer, a power cut) is closed out by the next turn
of the home, whatever triggers it, or by the daemon's next start.

Closing out means what the turn would have done itself: its transcript gets an
"interrupted" end row, the day log an entry, and whatever it changed in the home one commit
credited to the agent (`Agentd-Trigger: recovery`, `Agentd-Status: killed`), so the next
turn's "Manual edits" commit never claims the agent's half-done work as the person's.

Only ever called under the home's turn lock (agentd/turnlock.py): a marker found then
belongs to a turn that is no longer running.

The marker's session is a session name by the one rule (agentd/session.py `check_name`):
`begin` refuses a turn whose transcript has no such name, and `close_out` touches no
transcript for a marker naming anything else, and appends its row the confined way
(SessionLog), so a marker or a transcript link planted by an unsandboxed agent steers no
write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agentd import history, state
from agentd.daylog import append_entry
from agentd.errors import AgentdError
from agentd.home import Home
from agentd.session import SessionLog, check_name


def begin(home: Path, *, run_id: str, trigger: str, task: str, profile: str,
          session: Path) -> None:
    """Mark the turn as running (before it changes anything); AgentdError when its
    transcript's name is no session name (every trigger's names are checked before, so
    this is the last line, in the one place every turn passes)."""
    layout = Home(home)
    sid = check_name(session.name)
    if layout.session(sid) != session:  # "../x" has a good name and the wrong folder
        raise AgentdError(f"{str(session)!r} is not a session's transcript "
                          "(.agentd/sessions/<session name>.jsonl)")
    state.write(layout.turn_marker, {
        "run": run_id, "trigger": trigger, "task": task, "profile": profile,
        "session": sid, "started": time.time(), "pid": os.getpid()})


def end(home: Path) -> None:
    """The turn ended its own way (committed, or failed before changing anything)."""
    Home(home).turn_marker.unlink(missing_ok=True)


def close_out(home: Path, scan: Callable[[str], list[str]] | None) -> dict[str, Any] | None:
    """Close out a killed turn's leftovers, if a marker says there is one; returns the
    marker (with the recovery commit's sha as "commit") or None. The caller holds the
    turn lock."""
    layout = Home(home)
    marker = state.read(layout.turn_marker)
    if not isinstance(marker, dict):
        end(home)  # unreadable: nothing to close out, and it must not stay
        return None
    task = str(marker.get("task") or "")
    trigger = str(marker.get("trigger") or "unknown")
    try:
        transcript: Path | None = layout.session(check_name(str(marker.get("session") or "")))
    except AgentdError:
        transcript = None  # not a session's name: no file is touched
    if transcript is not None and os.path.lexists(transcript):
        SessionLog(transcript, None).end(run=marker.get("run"), status="interrupted",
                                         error="agentd was killed during this turn")
    changes = history.pending(home, scan)
    stranger = marker.get("profile") != "trusted"  # unknown: fenced, to be safe
    append_entry(home, datetime.now().astimezone(), "recovery", "-", task,
                 f"interrupted: agentd was killed during this {trigger} turn; its changes "
                 "were committed by the next one", changes.files, list(changes.blocked),
                 source=trigger if stranger else None, held=changes.held)
    files = history.pending(home, scan).files
    marker["commit"] = history.commit(
        home, files, f"Recovery: {task}",
        {"Agentd-Run": str(marker.get("run") or "unknown"), "Agentd-Trigger": "recovery",
         "Agentd-Status": "killed"},
        f"Left uncommitted by a {trigger} turn that was killed; committed by the next turn.")
    end(home)
    return marker
