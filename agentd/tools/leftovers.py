"""What agentd leaves on the host while a command runs, and how to tell whose it is.

Each bash command gets a pids cgroup (agentd/tools/limits.py) and each untrusted turn a
scratch folder under the host's temp dir (agentd/tools/sandbox.py). The normal exit paths
remove them, a signal included (agentd/interrupt.py); a `kill -9`, an OOM kill or a power
cut does not. So their names carry their owner, `<pid>-<start time>`, and every agentd
start (a run, a chat, the daemon, `agentd stop --now`) removes those whose owner is dead:
`sandbox.sweep_leftovers()`.

The start time (clock ticks after boot, /proc/<pid>/stat) is what makes this safe: a pid
alone may have been reused by an unrelated process by then, and what a live agentd owns is
never touched. A name without a start time (made by an older agentd) counts as dead only
when no process has its pid at all.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

_OWNED = re.compile(r"(\d+)(?:-(\d+))?")
_tag: list[str] = []


def start_time(pid: int) -> str | None:
    """The process's start time as /proc/<pid>/stat gives it; None when there is no such
    process or only its zombie (dead, not yet reaped: it owns nothing any more)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2:].split()  # the name may hold spaces and ")"
        if fields[0] not in ("Z", "X"):
            return fields[19]
    return None


def tag() -> str:
    """This process's `<pid>-<start time>`, put into the names of what it leaves around."""
    if not _tag or not _tag[0].startswith(f"{os.getpid()}-"):  # recomputed after a fork
        _tag[:] = [f"{os.getpid()}-{start_time(os.getpid()) or 0}"]
    return _tag[0]


def owner_dead(owner: str) -> bool:
    """Whether the process named by `owner` (`<pid>-<start time>`, or a bare `<pid>` from
    an older agentd) is gone. Anything unparsable counts as alive: never ours to remove."""
    m = _OWNED.fullmatch(owner)
    if m is None:
        return False
    now = start_time(int(m.group(1)))
    return now is None or (m.group(2) is not None and now != m.group(2))
