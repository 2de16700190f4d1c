"""The home: an agent's folder of state. Its layout (`Home`), finding it, creating it, and
writing the runtime's own files into it safely."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import suppress
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
    a reader (`agentd status`, `agentd usage`) creates nothing. Either way the folders on
    the way are checked (`private_dir`): a planted `.agentd` is refused, not used.
    """

    path: Path

    @property
    def config(self) -> Path:
        """`agentd.toml`: the settings (agentd/config/)."""
        return self.path / CONFIG_NAME

    @property
    def runtime(self) -> Path:
        """`.agentd/`: sessions, the ledger, locks and daemon state."""
        return private_dir(self.path / RUNTIME)

    @property
    def ledger(self) -> Path:
        """`.agentd/usage.jsonl`: one line per model call (agentd/usage.py)."""
        return self._file("usage.jsonl")

    @property
    def sessions(self) -> Path:
        """`.agentd/sessions/`: one transcript per session (agentd/session.py)."""
        return private_dir(self.path / RUNTIME / "sessions")

    def session(self, session_id: str) -> Path:
        """`.agentd/sessions/<id>.jsonl`; it exists once the session has begun."""
        return self.sessions / f"{session_id}.jsonl"

    @property
    def cooldowns(self) -> Path:
        """`.agentd/cooldowns.json`: throttled models every turn skips for a while."""
        return self._file("cooldowns.json")

    @property
    def git_lock(self) -> Path:
        """`.agentd/git.lock`: serialises git work on the home across processes."""
        return self._file("git.lock")

    @property
    def daemon(self) -> Path:
        """`.agentd/daemon/`: the daemon's state files, the turn lock and its run log."""
        return private_dir(self.path / RUNTIME / "daemon")

    @property
    def pid_file(self) -> Path:
        """`.agentd/daemon.pid`: flock-held by the one daemon of this home."""
        return self._file("daemon.pid")

    @property
    def daemon_log(self) -> Path:
        """`.agentd/daemon.log`: the log of a daemon started in the background."""
        return self._file("daemon.log")

    @property
    def daemon_status(self) -> Path:
        """`.agentd/daemon/status.json`: what the running daemon is doing."""
        return self._file("daemon", "status.json")

    @property
    def runs_log(self) -> Path:
        """`.agentd/daemon/runs.jsonl`: one line per finished daemon turn."""
        return self._file("daemon", "runs.jsonl")

    @property
    def turn_marker(self) -> Path:
        """`.agentd/daemon/turn.json`: the turn in flight, for recovery after a kill."""
        return self._file("daemon", "turn.json")

    @property
    def bridge(self) -> Path:
        """`.agentd/bridge/`: the bridge's delivery ids, runs and lock."""
        return private_dir(self.path / RUNTIME / "bridge")

    def _file(self, *parts: str) -> Path:
        """A runtime file's path, its folders checked (not made): see `private_dir`."""
        return private_dir(self.path.joinpath(RUNTIME, *parts[:-1]), create=False) / parts[-1]


def private_dir(folder: Path, create: bool = True) -> Path:
    """`folder`, made (with its parents) when `create`, and checked when it lies in a
    home's `.agentd/`: every folder from `.agentd` down to it must be a real folder (not a
    symlink, FIFO or file), owned by us (or root) and writable by no one else.

    `.agentd/` itself is hostile input: the agent can replace it with the sandbox off, a
    git checkout can bring one, another user can plant it. A link there (to /etc, to
    /root/.ssh, to another home) would make every lock, pid file, log, ledger, transcript
    and state file below land in, truncate or read the link's target; a FIFO would hang
    us. So the host checks the folders (lstat, nothing followed) right before each use,
    in this one place: every writer of runtime files (`atomic_write`, `open_private`,
    agentd.jsonl `append`, the Home folders) makes its folder here. A bad one is an
    AgentdError naming it and saying what to do; nothing is written there."""
    runtime = next((p for p in (folder, *folder.parents)
                    if p.name == RUNTIME and is_home(p.parent)), None)
    if runtime is None:  # not a runtime folder (a unit file's, the home's own)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        return folder
    chain = [runtime]
    for part in folder.relative_to(runtime).parts:
        chain.append(chain[-1] / part)
    for sub in chain:
        _check_private(sub, create)
    return folder


def _check_private(folder: Path, create: bool) -> None:
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        if not create:
            return
        with suppress(FileExistsError):
            os.mkdir(folder, 0o755)  # never group- or world-writable, whatever the umask
        st = os.lstat(folder)
    if stat.S_ISDIR(st.st_mode) and st.st_uid in (os.geteuid(), 0) and not st.st_mode & 0o022:
        return
    if not stat.S_ISDIR(st.st_mode):
        kind = ("a symlink" if stat.S_ISLNK(st.st_mode) else "a FIFO"
                if stat.S_ISFIFO(st.st_mode) else "a file" if stat.S_ISREG(st.st_mode)
                else "a special file")
        why, fix = f"is {kind}, not a folder", "remove it"
    elif st.st_uid not in (os.geteuid(), 0):
        why, fix = f"belongs to uid {st.st_uid}, not to you", "remove it (or chown it)"
    else:
        why, fix = "is writable by others", f"run `chmod go-w {folder}`"
    raise AgentdError(f"{folder} {why}; agentd keeps its own state there and will not use "
                      f"it: {fix} and run agentd again")


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
    private_dir(path.parent)
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
    so such a thing is debris, not someone's file (flock is only taken on regular files).
    A planted `.agentd` folder itself is refused (`private_dir`)."""
    private_dir(path.parent)
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
