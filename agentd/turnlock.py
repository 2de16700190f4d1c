"""The home's turn lock: one turn at a time in a home, whatever triggered it.

`agentd run`, every `agentd chat` turn, the daemon's queue worker (heartbeat, cron, inbox,
bridge turns), `agentd serve`'s worker, `agentd cron run` and crash recovery all take
`.agentd/daemon/turn.lock`. Two turns overlapping in one home would interleave their
commits and let one turn's tools race the other's (a symlink swapped under the `write` tool
of the other turn put writes outside the home), so a second turn waits.

- The lock is an `flock` on a file that only agentd writes (`.agentd/` is read-only inside
  the sandbox). The kernel drops it when the holder dies, even by `kill -9`: there is never a
  stale lock to clear by hand.
- Who holds it is recorded beside it in `turn.holder.json` (pid, trigger, what), written
  after the lock is taken and removed before it is released, so a waiter can say whom it
  waits for. That file is a hint, never the lock: a missing, torn, foreign or hostile one
  (a FIFO, a symlink, a huge file) or one naming a dead pid makes the message say "holder
  unknown" and changes nothing else.
- Re-entrant within one chain of tasks, never across them: whoever takes the lock with
  `turn_lock`/`TurnLock.hold` marks it in a context variable, so `run_turn` called under
  the queue worker (or under a chat turn that took it) sees it already held and does not
  wait for itself, while an unrelated task in the same process waits like another process.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from agentd.home import Home, open_private

LOCK_NAME = "turn.lock"
HOLDER_NAME = "turn.holder.json"
POLL = 0.2  # seconds between tries while another turn runs
HOLDER_MAX = 4096  # bytes of the holder file read, at most
UNKNOWN = "holder unknown"
HOLDER_WAIT_POLLS = 5  # polls to wait for the holder to name itself before saying "unknown"

OnWait = Callable[[str], None]
T = TypeVar("T")

# The lock this chain of tasks holds, if any (see the module doc: re-entrancy).
_HELD: contextvars.ContextVar[TurnLock | None] = contextvars.ContextVar("agentd_turn_lock",
                                                                        default=None)


class TurnLock:
    """`<home>/.agentd/daemon/turn.lock` plus the holder note beside it."""

    def __init__(self, home: Path):
        self.key = os.path.realpath(home)  # the same home however it was spelled
        folder = Home(home).daemon
        self.path = folder / LOCK_NAME
        self.holder_path = folder / HOLDER_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self, trigger: str = "", what: str = "") -> bool:
        """Take the lock if it is free; record who holds it. Never blocks."""
        if self._fd is not None:
            return True
        fd = open_private(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        _write_holder(self.holder_path, trigger, what)
        return True

    async def acquire(self, on_wait: OnWait | None = None, trigger: str = "",
                      what: str = "") -> None:
        """Wait for the lock without blocking the event loop; cancellable (Ctrl-C).

        `on_wait` is called once, with who holds the lock ("pid 4242, trigger cron: digest"
        or "holder unknown"), when this turn has to wait at all."""
        polls = 0
        told = on_wait is None
        while not self.try_acquire(trigger, what):
            if not told:
                holder = self.holder()
                if holder != UNKNOWN or polls >= HOLDER_WAIT_POLLS:
                    on_wait(holder)  # type: ignore[misc]  (told is False only with one)
                    told = True
            polls += 1
            await asyncio.sleep(POLL)

    def release(self) -> None:
        """Drop the holder note, then the lock (in that order: a note never outlives it)."""
        if self._fd is None:
            return
        with suppress(OSError):
            os.unlink(self.holder_path)
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str:
        """Who holds the lock, for a waiting message; UNKNOWN when the note is missing,
        unreadable, not ours, or names a process that is gone."""
        return describe_holder(read_holder(self.holder_path))

    @asynccontextmanager
    async def hold(self, trigger: str = "", what: str = "",
                   on_wait: OnWait | None = None) -> AsyncIterator[TurnLock]:
        """Hold the lock for the `async with` block, marked as held for this chain of tasks
        (so `run_turn` inside does not wait for it again)."""
        if self.held:  # already ours: this is a nested use
            yield self
            return
        await self.acquire(on_wait, trigger, what)
        token = _HELD.set(self)
        try:
            yield self
        finally:
            _HELD.reset(token)
            self.release()



def held_here(home: Path) -> TurnLock | None:
    """The lock of `home` if this chain of tasks holds it, else None."""
    lock = _HELD.get()
    if lock is not None and lock.held and lock.key == os.path.realpath(home):
        return lock
    return None


@asynccontextmanager
async def turn_lock(home: Path, trigger: str, what: str = "",
                    on_wait: OnWait | None = None) -> AsyncIterator[TurnLock]:
    """Hold `home`'s turn lock for the block: at once when this chain of tasks already
    holds it (the daemon's worker, a chat turn), else after the running turn ends."""
    mine = held_here(home)
    if mine is not None:
        yield mine
        return
    async with TurnLock(home).hold(trigger, what, on_wait) as lock:
        yield lock


def run_locked(home: Path, trigger: str, work: Callable[[], T],
               on_wait: OnWait | None = None) -> T:
    """`work()` (blocking: git, files) under the turn lock, from synchronous code such as
    `agentd undo` or chat's `/undo`: changing the home while a turn runs is as unsafe for
    them as for a second turn."""

    async def locked() -> T:
        async with turn_lock(home, trigger, on_wait=on_wait):
            return await asyncio.to_thread(work)

    return asyncio.run(locked())


def waiting_message(holder: str) -> str:
    """The one line a turn prints when it has to wait."""
    return f"another turn is running in this home ({holder}); waiting…"


# -- the lock file and the holder note ------------------------------------------------------


def _write_holder(path: Path, trigger: str, what: str) -> None:
    """Record who holds the lock: a temp file created exclusively beside it, then renamed
    over the note (rename replaces a planted link itself, never its target)."""
    note = {"pid": os.getpid(), "trigger": trigger, "what": what,
            "host": socket.gethostname(), "since": round(time.time(), 3)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(note))
        os.replace(tmp, path)
    except OSError:
        pass  # the note is a courtesy for waiters; the lock itself is held


def read_holder(path: Path) -> dict[str, Any] | None:
    """The holder note as a dict, or None when it is missing or not a small regular file
    holding a JSON object (read with O_NOFOLLOW|O_NONBLOCK: a FIFO or a link planted there
    neither hangs nor redirects the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > HOLDER_MAX:
            return None
        data = os.read(fd, HOLDER_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        note = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return note if isinstance(note, dict) else None


def describe_holder(note: dict[str, Any] | None) -> str:
    """"pid 4242, trigger cron: digest" for a live holder on this host, else UNKNOWN."""
    if note is None:
        return UNKNOWN
    pid, trigger, what = note.get("pid"), note.get("trigger"), note.get("what")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return UNKNOWN
    if note.get("host") not in (None, socket.gethostname()) or not _alive(pid):
        return UNKNOWN
    text = f"pid {pid}"
    if isinstance(trigger, str) and trigger:
        text += f", trigger {_clean(trigger)}"
        if isinstance(what, str) and what and what != trigger:
            text += f": {_clean(what)}"
    return text


def _clean(text: str, limit: int = 80) -> str:
    """One short line: a note is only ever written by agentd, but a foreign one must not
    put control characters on the user's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
