"""Per-command resource limits: rlimits set on the launched process, and a pids cgroup.

Why both: rlimits (CPU time, address space, file size, open files, no core dumps) are
inherited by everything the command starts and work everywhere, but RLIMIT_NPROC is ignored
for root (verified here, even with capabilities dropped inside bwrap) and counts every
process of the user, not of the command. So the process limit uses a per-command pids
cgroup when this host lets us create one (cgroup v1 `pids`, or a v2 hierarchy where pids is
delegated to our children), and RLIMIT_NPROC only as the non-root fallback.
`limits_status()` says which of these hold here; `agentd doctor` prints it.

The launched process joins its cgroup from `preexec_fn`, between fork and exec, so not one
of its descendants can be created outside the cgroup (moving it after the spawn would race
a fork bomb). The child only calls setrlimit and write(2) on an fd opened beforehand.

A cgroup is named `agentd-<pid>-<start time>-<n>` after the agentd process that made it
(agentd/tools/leftovers.py): the command's end removes it, and `sweep_cgroups()` removes
those a killed agentd left, with whatever still runs in them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentd.tools import SandboxSettings, leftovers

MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")
_seq = itertools.count(1)
_base: list[Path | None] = []  # cached pids_base() result, probed once per process


def _capped(res: int, value: int) -> int:
    """Never above the current hard limit: raising it needs privileges and would fail."""
    hard = resource.getrlimit(res)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def rlimits(s: SandboxSettings, *, cgroup: bool, uid: int | None = None
            ) -> list[tuple[int, int]]:
    """(resource, limit) pairs for a command; a setting of 0 means no limit of that kind.
    `uid`: the user the command will run as when it is not ours (agentd is root and drops
    to the sandbox uid), so RLIMIT_NPROC applies and counts that user's tasks."""
    out = [(resource.RLIMIT_CORE, 0)]
    for res, value, scale in (
        (resource.RLIMIT_CPU, s.cpu_seconds, 1),
        (resource.RLIMIT_AS, s.memory_mb, MIB),
        (resource.RLIMIT_FSIZE, s.file_size_mb, MIB),
        (resource.RLIMIT_NOFILE, s.open_files, 1),
    ):
        if value > 0:
            out.append((res, _capped(res, value * scale)))
    runs_as = os.geteuid() if uid is None else uid
    if s.processes > 0 and not cgroup and runs_as != 0:
        # RLIMIT_NPROC counts all of this user's tasks: allow `processes` more than now.
        out.append((resource.RLIMIT_NPROC,
                    _capped(resource.RLIMIT_NPROC, s.processes + _user_tasks(runs_as))))
    return out


def _user_tasks(uid: int | None = None) -> int:
    """Threads of processes owned by `uid` (default: our real uid): what RLIMIT_NPROC
    counts."""
    uid_text, total = str(os.getuid() if uid is None else uid), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":", 1) for line in Path(entry.path, "status").read_text().splitlines()
                if ":" in line
            )
            if fields.get("Uid", "").split()[:1] == [uid_text]:
                total += int(fields.get("Threads", "1"))
    return total


def preexec(limits: list[tuple[int, int]], procs_fd: int | None) -> Callable[[], None]:
    """What the child runs between fork and exec: set the limits, then join the cgroup
    (writing "0" to cgroup.procs moves the writer). An exception aborts the spawn."""

    def child() -> None:
        for res, value in limits:
            resource.setrlimit(res, (value, value))
        if procs_fd is not None:
            os.write(procs_fd, b"0")

    return child


def _own_cgroup(hierarchy: str) -> str | None:
    """Our path in a v1 hierarchy ("pids") or in v2 (""), from /proc/self/cgroup."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (hierarchy and hierarchy in controllers.split(",")) or (
                not hierarchy and not controllers
            ):
                return path
    return None


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fstype, _, opts = [*right.split(), "", "", ""][:3]
            if fstype in ("cgroup", "cgroup2"):
                out.append((left.split()[4], fstype, opts.split(",")))
    return out


def pids_base() -> Path | None:
    """The cgroup under which we may create per-command pids cgroups, or None. Probed once
    (mkdir + rmdir of a test child), since permissions don't change under a running agentd."""
    if not _base:
        _base.append(_find_base())
    return _base[0]


def _find_base() -> Path | None:
    candidates: list[Path] = []
    for mount, fstype, opts in _mounts():
        if fstype == "cgroup" and "pids" in opts:
            own = _own_cgroup("pids")
        elif fstype == "cgroup2":
            own = _own_cgroup("")
            if own is not None:
                ctl = Path(mount) / own.lstrip("/") / "cgroup.subtree_control"
                with contextlib.suppress(OSError):
                    if "pids" not in ctl.read_text().split():
                        own = None
        else:
            continue
        if own is not None:
            candidates.append(Path(mount) / own.lstrip("/"))
    for base in candidates:
        probe = base / f"agentd-probe-{leftovers.tag()}"
        try:
            probe.mkdir()
            ok = (probe / "pids.max").exists()
            probe.rmdir()
        except OSError:
            continue
        if ok:
            return base
    return None


class PidsCgroup:
    """One command's pids cgroup: created before the spawn, emptied and removed after."""

    def __init__(self, base: Path, max_pids: int):
        self.path = base / f"agentd-{leftovers.tag()}-{next(_seq)}"
        self.path.mkdir()
        try:
            (self.path / "pids.max").write_text(str(max_pids))
            self.procs_fd: int | None = os.open(self.path / "cgroup.procs",
                                                os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.rmdir()
            raise

    def pids(self) -> list[int]:
        return _pids(self.path)

    def close(self, wait: float = 2.0) -> None:
        """SIGKILL whatever is left in the cgroup and remove it: after this returns, no
        process the command started is alive (normally bwrap's pid namespace saw to it)."""
        if self.procs_fd is not None:
            os.close(self.procs_fd)
            self.procs_fd = None
        _remove(self.path, wait)


def _pids(path: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    return []


def _remove(path: Path, wait: float) -> bool:
    """SIGKILL the processes in the cgroup at `path`, then remove it; False when it is
    still there after `wait` seconds (never hang a turn over it)."""
    deadline = time.monotonic() + wait
    while True:
        for pid in _pids(path):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def sweep_cgroups(base: Path | None = None) -> list[Path]:
    """Remove the command cgroups (and probes) of agentd processes that are dead, killing
    what still runs in them (a command of a `kill -9`ed agentd with the sandbox off).
    Returns what it removed. A live agentd's cgroups are never touched, nor one holding a
    process from another pid namespace (it lists as pid 0 here: not ours to judge)."""
    base = base or pids_base()
    if base is None:
        return []
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            owner = _owner(entry.name)
            path = Path(entry.path)
            if (owner is not None and entry.is_dir(follow_symlinks=False)
                    and leftovers.owner_dead(owner) and 0 not in _pids(path)
                    and _remove(path, 2.0)):
                removed.append(path)
    return removed


def _owner(name: str) -> str | None:
    """Whose cgroup this is, if agentd made it: `agentd-<pid>-<start>-<n>` and
    `agentd-probe-<pid>-<start>`, or from an older agentd `agentd-<pid>-<n>` and
    `agentd-probe-<pid>` (no start time)."""
    if not name.startswith("agentd-"):
        return None
    rest = name.removeprefix("agentd-")
    probe = rest.startswith("probe-")
    nums = rest.removeprefix("probe-").split("-")
    if not all(n.isdigit() for n in nums):
        return None
    if probe and len(nums) in (1, 2):
        return "-".join(nums)
    if not probe and len(nums) in (2, 3):
        return "-".join(nums[:-1])
    return None


def open_cgroup(s: SandboxSettings) -> PidsCgroup | None:
    """A pids cgroup for one command when the host offers one and a limit is set."""
    base = pids_base() if s.processes > 0 else None
    return PidsCgroup(base, s.processes) if base else None


@dataclass
class LimitStatus:
    name: str
    enforced: bool
    how: str


def limits_status(s: SandboxSettings | None = None) -> list[LimitStatus]:
    """What is and is not enforced on this host, for `agentd doctor`."""
    from agentd.tools.owner import sandbox_owner

    s = s or SandboxSettings()
    base = pids_base()
    try:
        who = sandbox_owner(s)
    except ValueError:
        who = None
    root = os.geteuid() == 0 and who is None

    def rl(name: str, value: int, unit: str, how: str) -> LimitStatus:
        if value <= 0:
            return LimitStatus(name, False, "no limit (set to 0 in agentd.toml)")
        return LimitStatus(name, True, f"{value} {unit} ({how})")

    if s.processes <= 0:
        procs = LimitStatus("processes", False, "no limit (set to 0 in agentd.toml)")
    elif base:
        procs = LimitStatus("processes", True, f"{s.processes} (pids cgroup under {base})")
    elif not root:
        user = f"uid {who[0]}" if who else "the user"
        procs = LimitStatus("processes", True, f"{s.processes} more than {user} runs now "
                            "(RLIMIT_NPROC)")
    else:
        procs = LimitStatus("processes", False, "NOT enforced: running as root, where "
                            "RLIMIT_NPROC is ignored, and no writable pids cgroup")
    return [
        LimitStatus("wall time", s.timeout > 0, f"{s.timeout:g} s, then the process tree "
                    "is killed"),
        rl("cpu time", s.cpu_seconds, "s per process", "RLIMIT_CPU"),
        rl("memory", s.memory_mb, "MiB address space per process", "RLIMIT_AS"),
        rl("file size", s.file_size_mb, "MiB per file", "RLIMIT_FSIZE"),
        rl("open files", s.open_files, "per process", "RLIMIT_NOFILE"),
        procs,
        LimitStatus("core dumps", True, "off (RLIMIT_CORE = 0)"),
        LimitStatus("output", True, f"{s.output_limit} chars shown; killed past 8 MiB"),
        LimitStatus("/tmp size", True, f"{s.tmp_size_mb} MiB (tmpfs; the same cap for "
                    "/dev/shm and each masked folder)"),
    ]
