"""The home: an agent's folder of state. Its layout (`Home`), finding it, creating it, and
writing the runtime's own files into it safely."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agentd.config import CONFIG_NAME
from agentd.errors import AgentdError

RUNTIME = ".agentd"  # the runtime's bookkeeping: git-ignored, never writable by the sandbox
# The names in a home that the runtime owns: the sandbox mounts them read-only and the file
# tools refuse to write them (agentd/tools/bwrap.py, agentd/tools/places.py).
PROTECTED_NAMES = (".git", CONFIG_NAME, RUNTIME)
PROTECTED_DIRS = (".git", RUNTIME)
# What `agentd init` copies into a new home (memory/, skills/): package data, so a wheel
# installed anywhere (pip, pipx, uv tool) makes the same home as a checkout.
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Home:
    """Where each thing lives in a home, spelled here and nowhere else.

    A folder property (`runtime`, `sessions`, `daemon`, `bridge`) makes the folder when
    asked: whoever asks for a folder is about to use it, and
    all of them live under the git-ignored `.agentd/`. A file property is a path only, so
    a reader (`agentd status`, `agentd usage`) creates nothing.
    """

    path: Path

    @property
    def config(self) -> Path:
        """`agentd.toml`: the settings (agentd/config/)."""
        return self.path / CONFIG_NAME

    @property
    def runtime(self) -> Path:
        """`.agentd/`: sessions, the ledger, locks and daemon state."""
        return _made(self.path / RUNTIME)

    @property
    def ledger(self) -> Path:
        """`.agentd/usage.jsonl`: one line per model call (agentd/usage.py)."""
        return self.path / RUNTIME / "usage.jsonl"

    @property
    def sessions(self) -> Path:
        """`.agentd/sessions/`: one transcript per session (agentd/session.py)."""
        return _made(self.path / RUNTIME / "sessions")

    def session(self, session_id: str) -> Path:
        """`.agentd/sessions/<id>.jsonl`; it exists once the session has begun."""
        return self.sessions / f"{session_id}.jsonl"

    @property
    def cooldowns(self) -> Path:
        """`.agentd/cooldowns.json`: throttled models every turn skips for a while."""
        return self.path / RUNTIME / "cooldowns.json"

    @property
    def git_lock(self) -> Path:
        """`.agentd/git.lock`: serialises git work on the home across processes."""
        return self.path / RUNTIME / "git.lock"

    @property
    def daemon(self) -> Path:
        """`.agentd/daemon/`: the daemon's state files, the turn lock and its run log."""
        return _made(self.path / RUNTIME / "daemon")

    @property
    def pid_file(self) -> Path:
        """`.agentd/daemon.pid`: flock-held by the one daemon of this home."""
        return self.path / RUNTIME / "daemon.pid"

    @property
    def daemon_log(self) -> Path:
        """`.agentd/daemon.log`: the log of a daemon started in the background."""
        return self.path / RUNTIME / "daemon.log"

    @property
    def daemon_status(self) -> Path:
        """`.agentd/daemon/status.json`: what the running daemon is doing."""
        return self.path / RUNTIME / "daemon" / "status.json"

    @property
    def runs_log(self) -> Path:
        """`.agentd/daemon/runs.jsonl`: one line per finished daemon turn."""
        return self.path / RUNTIME / "daemon" / "runs.jsonl"

    @property
    def turn_marker(self) -> Path:
        """`.agentd/daemon/turn.json`: the turn in flight, for recovery after a kill."""
        return self.path / RUNTIME / "daemon" / "turn.json"

    @property
    def bridge(self) -> Path:
        """`.agentd/bridge/`: the bridge's delivery ids, runs and lock."""
        return _made(self.path / RUNTIME / "bridge")


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, data: bytes | str, durable: bool = True) -> None:
    """Write a runtime-private file so a reader (or a crash) never sees it half-written.

    Only for folders the agent cannot write: files under `.agentd/` (read-only inside the
    sandbox) and generated unit files. Trees the agent can write (its notes, the outbox,
    the inbox, the workdir) are hostile to the host and go through agentd/homefs/, which
    resolves every path beneath a held folder fd.

    Writes an exclusive temporary file beside the target, fsyncs it (unless not `durable`:
    a status file rewritten several times a second, whose loss in a power cut costs
    nothing), then renames it over the target, so a symlink at the name is replaced, never
    followed. Keeps the permission bits of a regular file it replaces, set-uid, set-gid
    and sticky bits never (lstat, so a link's target is not consulted); else honours the
    umask.
    """
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.lstat(path)
    except FileNotFoundError:
        old = None
    keep = old is not None and stat.S_ISREG(old.st_mode)
    mode = stat.S_IMODE(old.st_mode) & 0o777 if old and keep else 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)  # on the fd: the temp name is never looked up again
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


DEFAULT_HOME = "~/.agentd"  # the home when none is named or found


def is_home(path: Path) -> bool:
    return Home(path).config.is_file()


def locate_home(explicit: str | None, cwd: Path) -> Path | None:
    """The home to use, creating nothing: --home, else $AGENTD_HOME (either returned even
    when it is not a home, for the caller to say so), else the nearest parent holding
    agentd.toml, else ~/.agentd if it is a home; None when there is none."""
    given = explicit or os.environ.get("AGENTD_HOME")
    if given:
        return Path(given).expanduser().resolve()
    for folder in (cwd, *cwd.parents):
        if is_home(folder):
            return folder.resolve()
    default = Path(DEFAULT_HOME).expanduser().resolve()
    return default if is_home(default) else None


def open_private(path: Path, flags: int = os.O_RDWR) -> int:
    """Open (creating) a file of the runtime's own in `.agentd/` (a lock, the pid file, the
    daemon's log; `flags` say how, O_RDWR by default): never through a symlink and never
    anything but a regular file. Bash can write `.agentd/` when the sandbox is off, so a
    planted link (to /etc/nologin, say, which the host would create, or to a file it would
    truncate) or FIFO there is removed and the file made anew: only agentd writes there,
    so such a thing is debris, not someone's file (flock is only taken on regular files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(3):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise AgentdError(f"cannot open {path}: {e.strerror}") from None
            _remove_debris(path)
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        _remove_debris(path)
    raise AgentdError(f"{path} is not a regular file and could not be replaced; "
                      "remove it by hand")


def _remove_debris(path: Path) -> None:
    """Remove a non-regular thing at a runtime file's path (a directory only if empty)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise AgentdError(f"{path} is not a regular file ({e.strerror}); remove it by "
                          "hand") from None
