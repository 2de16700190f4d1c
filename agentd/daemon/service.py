"""The daemon as a process: one per home, started and stopped (its systemd units are
agentd/daemon/units.py).

One daemon per home is enforced with an flock on `.agentd/daemon.pid`, held for the
daemon's whole life. `agentd start` takes the lock itself and hands the locked file to the
child it spawns (`--lock-fd`), so of two `agentd start`s at the same instant exactly one
wins and the other says who did. A pid file whose lock nobody holds is stale (its daemon
died, even by SIGKILL: the kernel drops the lock) and is simply overwritten. The file is
removed on stop, but only by a holder of its exclusive lock, and whoever locks it checks
afterwards that the path still names the file it locked (else it locks the new one), so
two starters can never hold two different files.

`agentd stop` sends SIGTERM: the daemon stops scheduling, lets the running turn finish and
commit, and exits. If that takes longer than the timeout, a second SIGTERM interrupts the
turn (which still commits what it did), and after 15 more seconds SIGKILL; `--now` sends
SIGKILL at once, and the next start commits the leftovers as a recovery commit. After a
SIGKILL, `stop` removes the command cgroup and scratch folder the daemon left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agentd import state
from agentd.errors import AgentdError
from agentd.home import Home, open_private, private_dir
from agentd.tools import leftovers

LOG_ROTATE_BYTES = 10 * 1024 * 1024
READY_TIMEOUT = 20.0


def pid_path(home: Path) -> Path:
    """`.agentd/daemon.pid`, its folder made: the daemon creates the file."""
    path = Home(home).pid_file
    private_dir(path.parent)
    return path


def log_path(home: Path) -> Path:
    """`.agentd/daemon.log`, its folder made: `agentd start` points stderr at it."""
    path = Home(home).daemon_log
    private_dir(path.parent)
    return path


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(raw) if raw.isdigit() else None


def _try_lock(fd: int, kind: int, patience: float = 0.0) -> bool:
    """flock without blocking; `patience` rides out another command's momentary probe."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def running_pid(home: Path) -> int | None:
    """The running daemon's pid (0 if it is still starting), or None when none runs. Probes
    with a shared lock, so it never blocks a daemon from starting for long; creates
    nothing (no pid file: none runs)."""
    try:
        fd = os.open(Home(home).pid_file,
                     os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # missing, or a planted link (a daemon's pid file is never one)
        return None
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return None
        return _read_pid(fd) or 0
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Does `path` still name the file open at `fd` (not removed, not replaced)?"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fs = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fs.st_dev, fs.st_ino)


def _lock_pid_file(home: Path) -> tuple[int, bool]:
    """Open the pid file (made if missing) and lock it exclusively. Returns (fd, locked).
    A file removed by a stopping daemon between our open and our lock is left for the new
    one at its path, so every holder holds the file the path names."""
    path = pid_path(home)
    while True:
        fd = open_private(path)  # a link planted there is not truncated through
        if not _try_lock(fd, fcntl.LOCK_EX, patience=0.5):
            return fd, False
        if _same_file(fd, path):
            return fd, True
        os.close(fd)


def remove_stale(home: Path) -> None:
    """Remove the pid file if no daemon holds it (after a SIGKILL, or a daemon that died
    before it could): taken under its exclusive lock, as every remover must."""
    path = Home(home).pid_file
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # missing, or a planted link: not a daemon's, not ours to open
        return
    try:
        if _try_lock(fd, fcntl.LOCK_EX) and _same_file(fd, path):
            path.unlink()
    finally:
        os.close(fd)


def acquire(home: Path, inherited: int | None = None) -> tuple[int, int | None]:
    """Lock the pid file for this process and write our pid. Returns (fd, the stale pid it
    replaced or None). Raises AgentdError when another daemon runs for this home."""
    if inherited is not None:
        fd, locked = inherited, _try_lock(inherited, fcntl.LOCK_EX, patience=0.5)
    else:
        fd, locked = _lock_pid_file(home)
    if not locked:
        pid = _read_pid(fd)
        os.close(fd)
        raise AgentdError(f"agentd is already running for {home} (pid {pid or '?'}); "
                          "`agentd status` shows what it does, `agentd stop` stops it", 1)
    old = _read_pid(fd)
    os.set_inheritable(fd, False)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, old if old not in (None, os.getpid()) else None


def release(fd: int, home: Path | None = None) -> None:
    """Give up the pid lock; with `home`, remove the pid file first (still holding the
    lock, and only if it is still ours), so a stopped daemon leaves none behind."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        if home is not None and _same_file(fd, Home(home).pid_file):
            Home(home).pid_file.unlink()
    with contextlib.suppress(OSError):
        os.close(fd)


def _rotate_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_suffix(".log.1"))


def start(home: Path, json_logs: bool = False) -> int:
    """Start the daemon in the background; returns its pid once it is up."""
    fd, locked = _lock_pid_file(home)
    if not locked:
        pid = _read_pid(fd)
        os.close(fd)
        raise AgentdError(f"agentd is already running for {home} (pid {pid or '?'})", 1)
    log = log_path(home)
    _rotate_log(log)
    status = Home(home).daemon_status
    status.unlink(missing_ok=True)
    os.set_inheritable(fd, True)
    cmd = [sys.executable, "-m", "agentd", "daemon", "--home", str(home), "--lock-fd", str(fd)]
    with open(open_private(log, os.O_WRONLY | os.O_APPEND), "ab") as out:
        before = out.seek(0, os.SEEK_END)  # a failure quotes only what this start wrote
        child = subprocess.Popen(cmd + (["--json-logs"] if json_logs else []), cwd=home,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 pass_fds=(fd,), start_new_session=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{child.pid}\n".encode(), 0)
    os.close(fd)  # the child's copy keeps the lock
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        info = state.read(status, {})
        if isinstance(info, dict) and info.get("pid") == child.pid:
            return child.pid
        code = child.poll()
        if code is not None:
            remove_stale(home)
            raise AgentdError(f"the daemon exited at start (status {code}): "
                              + " / ".join(_written_since(log, before)[-3:]), 1)
        time.sleep(0.05)
    raise AgentdError(f"the daemon (pid {child.pid}) did not report ready within "
                      f"{READY_TIMEOUT:.0f}s; see {log}", 1)


def _written_since(log: Path, offset: int) -> list[str]:
    """The log's lines from `offset` on (what this start's daemon wrote)."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read(64 * 1024).decode(errors="replace").strip()
    return text.splitlines() or ["(it wrote nothing to its log)"]


def _wait_gone(home: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if running_pid(home) is None:
            return True
        time.sleep(0.05)
    return running_pid(home) is None


def stop(home: Path, timeout: float, now: bool = False,
         say: Callable[[str], None] = lambda msg: None) -> int | None:
    """Stop the daemon (see the module); returns the pid it stopped, None if none ran."""
    pid = running_pid(home)
    if pid is None:
        return None
    if not pid:
        raise AgentdError("the daemon is still starting; try again in a moment", 1)
    if now:
        os.kill(pid, signal.SIGKILL)
        _killed(home, pid)
        return pid
    os.kill(pid, signal.SIGTERM)
    info = state.read(Home(home).daemon_status, {})
    running = (info.get("queue") or {}).get("running") if isinstance(info, dict) else None
    if running:
        say(f"waiting for the running {running.get('kind')} turn ({running.get('name')}) to "
            f"finish and commit (up to {timeout:.0f}s)…")
    if _wait_gone(home, timeout):
        return pid
    say("still busy: interrupting the turn (it commits what it did)…")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(home, 15):
        return pid
    say("not stopping: killing it (the next start commits its leftovers)")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _killed(home, pid)
    return pid


def _killed(home: Path, pid: int) -> None:
    """After a SIGKILL: wait for the daemon to be gone (its pid file unlocked, then the
    process itself: the lock goes a moment before), then remove the cgroups and scratch
    folders it had no chance to (its turn's leftovers are committed by the next start)."""
    from agentd.tools.sandbox import sweep_leftovers  # heavy: only on this rare path

    _wait_gone(home, 10)
    deadline = time.monotonic() + 5
    while leftovers.start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    sweep_leftovers()
    remove_stale(home)
