"""What a hostile agent leaves in its home for agentd's host-side code to trip on (symlinks
out, to /proc/self/environ, FIFOs, hard links), and running that code with a deadline: a
FIFO opened for reading would hang it, and a test must fail then, not hang."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
SECRET = "TOP-SECRET-HOST-FILE-7f3a"
KINDS = ("symlink", "environ", "fifo")


def environ_sample() -> str:
    """One `NAME=value` of this process's /proc/self/environ (what a link to it would leak)."""
    entries = Path("/proc/self/environ").read_bytes().split(b"\0")
    return max(entries, key=len).decode(errors="replace")


def secret_file(folder: Path) -> Path:
    """A root-only file outside the home, holding SECRET."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret.txt"
    path.write_text(f"{SECRET}\n")
    path.chmod(0o600)
    return path


def plant(path: Path, kind: str, secret: Path) -> None:
    """Put a hostile `kind` at `path` (replacing what is there): "symlink" (to the secret),
    "environ" (a symlink to /proc/self/environ), "fifo" or "hardlink" (to the secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if kind == "symlink":
        path.symlink_to(secret)
    elif kind == "environ":
        path.symlink_to("/proc/self/environ")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "hardlink":
        os.link(secret, path)
    else:
        raise ValueError(kind)


def bounded(fn: Callable[[], T], fifos: Sequence[Path] = (), timeout: float = 20.0) -> T:
    """fn() in a thread, waited for on an event with a deadline. On timeout the FIFOs are
    opened for writing (so a reader stuck in them gets EOF and the thread ends) and the
    test fails."""
    done = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test's thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(timeout):
        for fifo in fifos:
            fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
            os.close(fd)
        done.wait(timeout)
        pytest.fail(f"host-side code hung for {timeout}s (read a FIFO?)")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
