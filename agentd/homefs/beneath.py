"""The resolver layer of agentd.homefs: open a path beneath a held directory fd and never
outside it, with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` where the kernel has it
(Linux 5.6+, called through ctypes: Python has no wrapper), otherwise a component-by-component
walk with `O_NOFOLLOW` that refuses every symlink; and renameat2(RENAME_NOREPLACE)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

# openat2(2): linux/openat2.h. The syscall number is the same on every architecture
# that postdates it (x86_64, aarch64, riscv64 …).
SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class Refused(OSError):
    """A path the confined layer will not use; `str()` is one line saying why and what to do."""

    def __str__(self) -> str:
        return str(self.strerror or (self.args[0] if self.args else "refused"))


_have_openat2: bool | None = None  # probed on first use; tests set False to force the walk


def openat2_available() -> bool:
    global _have_openat2
    if _have_openat2 is None:
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH)
        fd = _libc.syscall(SYS_OPENAT2, -100, b".", ctypes.byref(how), ctypes.sizeof(how))
        _have_openat2 = fd >= 0
        if fd >= 0:
            os.close(fd)
    return _have_openat2


def split(rel: str | Path) -> list[str]:
    """The components of a relative path; refuses absolute paths, `..`, NUL and empties."""
    text = os.fspath(rel)
    if "\0" in text:
        raise Refused(f"{text!r} contains a NUL byte")
    if text.startswith("/"):
        raise Refused(f"{text} is absolute; give a path inside the folder")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(f"{text} contains '..'; give a path inside the folder")
    return parts


def _why(err: int, rel: str, follow: bool) -> str:
    if err == errno.ELOOP and not follow:
        return (f"{rel} is (or goes through) a symlink, which agentd does not follow in "
                "its own files; replace it with a regular file or folder")
    if err in (errno.EXDEV, errno.ELOOP):
        return f"{rel} resolves outside its folder (through a symlink); use a real path"
    return f"{rel}: {os.strerror(err)}"


def _openat2(dirfd: int, rel: str, flags: int, mode: int, follow: bool) -> int:
    resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (0 if follow else RESOLVE_NO_SYMLINKS)
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    while True:
        fd = _libc.syscall(SYS_OPENAT2, dirfd, os.fsencode(rel), ctypes.byref(how),
                           ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise Refused(err, _why(err, rel, follow)) if err in (
                errno.EXDEV, errno.ELOOP) else OSError(err, os.strerror(err), rel)


def _walk(dirfd: int, parts: list[str], flags: int, mode: int) -> int:
    """The fallback without openat2: every component opened with O_NOFOLLOW beneath the
    previous one, so no symlink is ever followed (stricter than openat2's in-root links)."""
    cur = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=cur)
            os.close(cur)
            cur = nxt
        last = parts[-1] if parts else "."
        fd = os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
        if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH opens the link
            os.close(fd)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        return fd
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link_on_way(dirfd, parts):
            raise Refused(errno.ELOOP, _why(errno.ELOOP, "/".join(parts), False)) from None
        raise
    finally:
        os.close(cur)


def _is_link_on_way(dirfd: int, parts: list[str]) -> bool:
    for i in range(len(parts)):
        try:
            st = os.stat("/".join(parts[: i + 1]), dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return True
    return False


def open_beneath(dirfd: int, rel: str | Path, flags: int, mode: int = 0o600,
                 follow: bool = False) -> int:
    """An fd for `rel` beneath `dirfd`, never outside it. `follow=False`: no symlink at all."""
    parts = split(rel)
    text = "/".join(parts) or "."
    if openat2_available():
        return _openat2(dirfd, text, flags, mode, follow)
    return _walk(dirfd, parts, flags, mode)


def fd_path(fd: int) -> Path:
    """Where an open fd really is (for messages and containment checks on a held fd)."""
    return Path(os.readlink(f"/proc/self/fd/{fd}"))

RENAME_NOREPLACE = 1
SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}.get(os.uname().machine)


def rename_noreplace(sfd: int, src: str, dfd: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): atomic 'move unless taken'; link+unlink without it."""
    if SYS_RENAMEAT2 is not None:
        r = _libc.syscall(SYS_RENAMEAT2, sfd, os.fsencode(src), dfd, os.fsencode(dst),
                          RENAME_NOREPLACE)
        if r == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
    os.unlink(src, dir_fd=sfd)
