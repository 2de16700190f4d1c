"""Stopping a turn on a signal: SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, systemd) and
SIGHUP (the terminal closed), for `agentd run` and `agentd chat`.

A signal cancels the turn's asyncio task; it is never a KeyboardInterrupt thrown at a
random line, and never Python's default of dying on the spot. The cancellation runs the
turn's own unwinding: the loop gives the interrupted tool call an error result (the
command's process group is killed, its cgroup removed), and the turn still writes its
transcript end and day-log entry and makes its one commit, marked `Agentd-Status:
interrupted`. So the work done so far is the agent's in history, never the next turn's
"Manual edits".

The handlers live on the event loop only while the turn runs. Further signals while it
unwinds are ignored, so the bookkeeping is never cut short; only if the unwinding is still
going UNWIND_GRACE seconds after the first signal does another one end the process at
once (whatever is left, a cgroup or a scratch folder, is removed by the next agentd start:
agentd/tools/leftovers.py). Exit statuses are the shell's: 128 + the signal's number.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from agentd.errors import AgentdError

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
UNWIND_GRACE = 30.0  # seconds after the first signal before another one is obeyed at once


def exit_code(sig: signal.Signals) -> int:
    """130, 143, 129: what a shell reports for a process this signal stopped."""
    return 128 + int(sig)


class Interrupted(AgentdError):
    """The command stops because of `sig`: one `error:` line, then exit 128 + its number.
    Ctrl-C says just "interrupted", as it always has."""

    def __init__(self, sig: signal.Signals):
        self.signal = sig
        super().__init__("interrupted" if sig == signal.SIGINT else f"interrupted by {sig.name}",
                         exit_code(sig))


def _leave_hung_up_terminal(ttys: list[int]) -> None:
    """SIGHUP because the terminal closed: from now on a write to it fails (EIO), and a
    failing write while the turn unwinds (the renderer shows the interrupted tool call)
    would cut its books short. So what was the terminal becomes /dev/null; a terminal
    still there (`kill -HUP`) answers tcgetattr and is kept."""
    for fd in ttys:
        if not os.isatty(fd):  # it was a terminal when the turn started: now hung up
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


async def interruptible(coro: Coroutine[Any, Any, T], goes_on: tuple[signal.Signals, ...] = ()
                        ) -> tuple[T | None, signal.Signals | None]:
    """Await `coro` as a task that SIGINT, SIGTERM or SIGHUP cancels. Returns (its result,
    None), or (None, the signal) when a signal cancelled it, or (its result, the signal)
    when the signal came as it finished: the caller still owes the signal its exit.

    After a signal the process is taken to be ending, so the three stay ignored (nothing
    cuts the exit short), unless it was one of `goes_on` (chat's Ctrl-C): then, as after
    a turn no signal stopped, their handlers are put back."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    fired: list[signal.Signals] = []
    first_at = 0.0
    ttys = [fd for fd in (1, 2) if os.isatty(fd)]

    def on_signal(sig: signal.Signals) -> None:
        nonlocal first_at
        if not fired:
            fired.append(sig)
            first_at = time.monotonic()
            if sig == signal.SIGHUP:
                _leave_hung_up_terminal(ttys)
            task.cancel()
        elif time.monotonic() - first_at > UNWIND_GRACE:
            with contextlib.suppress(OSError):
                os.write(2, f"error: interrupted by {sig.name} again, {UNWIND_GRACE:.0f}s "
                            "into unwinding: stopping now\n".encode())
            os._exit(exit_code(sig))

    installed: dict[signal.Signals, Any] = {}  # signal -> the handler to put back
    for sig in SIGNALS:
        before = signal.getsignal(sig)
        if before == signal.SIG_IGN:  # e.g. SIGHUP under nohup: it stays ignored
            continue
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed[sig] = before
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            pass
    try:
        return await task, (fired[0] if fired else None)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if fired and not (current and current.cancelling()):
            return None, fired[0]
        raise
    finally:
        ending = bool(fired) and fired[0] not in goes_on
        for sig, before in installed.items():
            loop.remove_signal_handler(sig)
            if ending:
                signal.signal(sig, signal.SIG_IGN)
            elif before is not None:
                signal.signal(sig, before)
