"""Who sandboxed commands run as when agentd is root, and how they get at their folders.

Why: bwrap's user namespace maps the sandbox's uid 0 to the caller's uid. When agentd runs
as root that is the host's root (kuid 0): every 0600 root file outside the masked folders
(`/etc/shadow`, keys under /opt or /etc) is readable, and whatever the sandbox creates is
owned by root. So as root, the command's process drops to `[sandbox] uid`/`gid` (default
65534, `nobody`) between fork and exec, after the steps that need root (joining the pids
cgroup, entering the allowlist network namespace, setting rlimits, the mounts below), and
bwrap runs unprivileged, exactly as for a normal user. Not root: nothing changes, commands
run as the user's own uid.

The drop (`drop_to`): the capability bounding set is emptied, supplementary groups are
cleared, then setresgid and setresuid (which clears the permitted and effective sets), then
no_new_privs, so nothing exec'd later (a set-uid bwrap included) can gain privileges; bwrap
sets no_new_privs itself anyway before loading the seccomp filter. So bwrap needs
unprivileged user namespaces (a set-uid bwrap gains nothing under no_new_privs): where the
host disables them, the trivial launch fails and bash refuses, as `agentd doctor` says.
As the uid is not root, RLIMIT_NPROC works again (limits.py counts that uid's tasks).

Reaching the home (`reach_plan`, `enter_reach`): bwrap, unprivileged, looks its bind
sources up with the sandbox uid's permissions, so a home under a 0700 root folder (root's
default `/root/.agentd`, pytest's `/tmp/pytest-of-root`, any mkdtemp) would be out of its
reach. So before the drop, in a private mount namespace of the child only, an empty tmpfs
(0755) goes over the topmost folder the uid can't search, and just the sources below it are
bound back in. bwrap's recursive `--ro-bind / /` then sees those paths and nothing else of
that folder. The host's mounts are never touched (the namespace is private), and a home
kept under a 0700 root folder stays out of reach of every *other* process running as the
same uid on the host: the recommended layout.

Writing the home (`hand_over`, called through agentd.tools.sandbox.hand_over): each
writable folder of the profile is handed to the sandbox uid: every entry not owned by it is
lchown'ed (never following a symlink, never crossing into another filesystem, never into
the home's `.git`, `.agentd` or `agentd.toml`, which stay root's and read-only), set-id
bits are stripped, device nodes and multiply-linked files are left alone (a link could
name a file outside). The home folder itself stays owned by root, because git refuses to
work in a repository whose top folder another user owns ("dubious ownership"); its group
becomes the sandbox gid with rwx. A workdir outside the home is the user's own tree: it is
handed over only if its top folder is already owned by the sandbox uid (the user said so
with a chown); otherwise it is bound read-only and the turn says why once.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agentd.tools import SandboxSettings

DEFAULT_UID = 65534
MAX_DEPTH = 64  # hand_over never descends deeper (entries made in the sandbox are its own)
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]

Owner = tuple[int, int]  # (uid, gid)


def resolve_owner(uid: int | str, gid: int | str | None = None) -> Owner:
    """`[sandbox] uid`/`gid` as numbers: a user name or number, and a group name or number
    (default: the user's primary group, or the same number when the uid has no passwd
    entry). Raises ValueError for an unknown name, root, or a number out of range."""
    if isinstance(uid, str) and not uid.isdigit():
        try:
            entry = pwd.getpwnam(uid)
        except KeyError:
            raise ValueError(f"sandbox.uid: no user named {uid!r} on this host") from None
        number, primary = entry.pw_uid, entry.pw_gid
    else:
        number = int(uid)
        try:
            primary = pwd.getpwuid(number).pw_gid
        except KeyError:
            primary = number
    if isinstance(gid, str) and not gid.isdigit():
        try:
            group = grp.getgrnam(gid).gr_gid
        except KeyError:
            raise ValueError(f"sandbox.gid: no group named {gid!r} on this host") from None
    else:
        group = primary if gid is None else int(gid)
    for name, value in (("uid", number), ("gid", group)):
        if value == 0:
            raise ValueError(f"sandbox.{name} must not be 0 (root): the point is to run "
                             "commands unprivileged")
        if not 0 < value <= MAX_ID:
            raise ValueError(f"sandbox.{name} {value} is out of range")
    return number, group


def sandbox_owner(settings: SandboxSettings) -> Owner | None:
    """(uid, gid) that sandboxed commands run as, or None when they keep agentd's own uid:
    agentd is not root, or the sandbox is explicitly off. Host-side code that creates files
    in a writable folder as root should give them to this owner (fchown) so the sandbox can
    change them; the next hand-over does it otherwise."""
    if os.geteuid() != 0 or settings.mode == "off":
        return None
    return resolve_owner(settings.uid, settings.gid)


def describe(owner: Owner) -> str:
    """"uid 65534 (nobody), gid 65534 (nogroup)" for messages."""

    def named(lookup: Callable[[int], tuple[object, ...]], number: int) -> str:
        try:
            return f"{number} ({lookup(number)[0]})"
        except KeyError:
            return str(number)

    return f"uid {named(pwd.getpwuid, owner[0])}, gid {named(grp.getgrgid, owner[1])}"


def can_search(path: Path, owner: Owner) -> bool:
    """Whether `owner` (no supplementary groups) may traverse the folder `path`."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    uid, gid = owner
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def owned_by(path: Path, owner: Owner) -> bool:
    """Whether the folder itself (not followed if a symlink) belongs to the sandbox uid."""
    try:
        return os.lstat(path).st_uid == owner[0]
    except OSError:
        return False


# --- reaching the bind sources ------------------------------------------------------------

Plan = list[tuple[str, list[str]]]  # (folder to cover with a tmpfs, sources to bind back)


def reach_plan(sources: Iterable[Path], owner: Owner) -> Plan:
    """For the bind sources the uid couldn't look up: the topmost folder it can't search
    above each, and the sources to bind back beneath it. Sources inside another source come
    along with it. Empty when everything is reachable (then nothing is mounted at all)."""
    paths = sorted({Path(p) for p in sources}, key=lambda p: len(p.parts))
    tops: list[Path] = []
    for path in paths:
        if not any(path.is_relative_to(t) for t in tops):
            tops.append(path)
    plan: dict[str, list[str]] = {}
    for path in tops:
        for folder in [*reversed(path.parents)][1:]:  # from the top, without "/"
            if not can_search(folder, owner):
                plan.setdefault(str(folder), []).append(str(path))
                break
    return sorted(plan.items())


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_reach(plan: Plan) -> None:
    """In the child, as root: a private mount namespace where each planned folder is an
    empty 0755 tmpfs holding only its sources, bound back. Sources are opened before the
    tmpfs hides them and bound through /proc/self/fd, so the lookup happens once."""
    if not plan:
        return
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    for folder, sources in plan:
        fds = [os.open(src, os.O_PATH | os.O_CLOEXEC) for src in sources]
        try:
            _check(_libc.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                               b"mode=0755,size=1m"), f"tmpfs over {folder}")
            for src, fd in zip(sources, fds, strict=True):
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.makedirs(src, 0o755, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(src), 0o755, exist_ok=True)
                    os.close(os.open(src, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
                _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), src.encode(), None,
                                   MS_BIND | MS_REC, None), f"bind {src}")
        finally:
            for fd in fds:
                os.close(fd)


def cap_last() -> int:
    """The highest capability number this kernel knows (read in the parent, once per spawn)."""
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def drop_to(owner: Owner, last_cap: int) -> None:
    """In the child, last before exec: become `owner` for good, with no capability left and
    none to gain (see the module doc for the order)."""
    uid, gid = owner
    for cap in range(last_cap + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop the bounding set")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def child_steps(plan: Plan, owner: Owner) -> Callable[[], None]:
    """The preexec step that makes the command unprivileged (after the root-only steps)."""
    last = cap_last()

    def child() -> None:
        enter_reach(plan)
        drop_to(owner, last)

    return child


# --- handing the writable folders over ----------------------------------------------------


@dataclass
class HandOver:
    """What one hand-over did: counts for the bench, notes for the model."""

    entries: int = 0
    changed: int = 0
    skipped: list[str] = field(default_factory=list)


def _fix(dfd: int, name: str, st: os.stat_result, owner: Owner, report: HandOver) -> bool:
    """Give one entry to `owner` and strip set-id bits. False for what is left alone."""
    mode = st.st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        report.skipped.append(f"{name}: a device node")
        return False
    if stat.S_ISREG(mode) and st.st_nlink > 1 and st.st_uid != owner[0]:
        report.skipped.append(f"{name}: {st.st_nlink} hard links")
        return False
    if (st.st_uid, st.st_gid) != owner:
        os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
        report.changed += 1
    if mode & 0o6000 and (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        _strip_setid(dfd, name, st)
    return True


def _strip_setid(dfd: int, name: str, st: os.stat_result) -> None:
    """Clear set-uid/set-gid through an fd opened without following links, on the very
    inode that was listed (chown already clears them on most regular files)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dfd)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and now.st_mode & 0o6000:
            os.fchmod(fd, stat.S_IMODE(now.st_mode) & ~0o6000)
    finally:
        os.close(fd)


def _walk(dfd: int, dev: int, owner: Owner, skip: frozenset[str], depth: int,
          report: HandOver) -> None:
    """Hand over everything below the open folder `dfd`, on its filesystem only."""
    with os.scandir(dfd) as it:
        entries = list(it)
    for entry in entries:
        if entry.name in skip:
            continue
        st = entry.stat(follow_symlinks=False)
        report.entries += 1
        if not _fix(dfd, entry.name, st, owner, report) or not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_dev != dev:
            report.skipped.append(f"{entry.name}: another filesystem")
            continue
        if depth >= MAX_DEPTH:
            report.skipped.append(f"{entry.name}: deeper than {MAX_DEPTH} folders")
            continue
        fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dfd)
        try:
            _walk(fd, dev, owner, frozenset(), depth + 1, report)
        finally:
            os.close(fd)


def hand_over_tree(root: Path, owner: Owner, *, keep_root: bool = False,
                   skip: Iterable[str] = (), descend: bool = True,
                   report: HandOver | None = None) -> HandOver:
    """Give the folder `root` and all below it to `owner`. `keep_root`: the folder itself
    stays with its owner, and gets the sandbox gid with group rwx instead (the home, for
    git's ownership check). `skip`: names directly under `root` left untouched.
    `descend=False`: the folder only (a home that is read-only in this turn)."""
    report = report or HandOver()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if keep_root:
            if st.st_gid != owner[1]:
                os.fchown(fd, -1, owner[1])
            wanted = (stat.S_IMODE(st.st_mode) | 0o070) & ~0o6000
        else:
            if (st.st_uid, st.st_gid) != owner:
                os.fchown(fd, *owner)
            wanted = stat.S_IMODE(st.st_mode) & ~0o6000
        if wanted != stat.S_IMODE(st.st_mode):
            os.fchmod(fd, wanted)
        if descend:
            _walk(fd, st.st_dev, owner, frozenset(skip), 1, report)
    finally:
        os.close(fd)
    return report
