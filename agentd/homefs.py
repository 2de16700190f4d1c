"""Confined file access for agentd's own code on trees the agent can write.

Everything under the home's writable parts, the workdir and scratch folders is hostile input
to agentd itself: the agent controls every byte, every inode type (symlinks, FIFOs, devices,
set-id files, hard links) and every name there. agentd runs on the host, often as root, so
its own reads and writes of those trees go through this module and nowhere else:

- A path is opened beneath a directory fd that the runtime chose (a `Root`) and never
  escapes it: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` where the kernel has it
  (Linux 5.6+, called through ctypes: Python has no wrapper), otherwise a component-by-
  component walk with `O_NOFOLLOW` that refuses every symlink.
- Files the runtime owns (memory files, day logs, cron files, skills, inbox/outbox entries)
  are opened with `follow=False`: a symlink anywhere on the way is refused (`Refused`), so a
  `MEMORY.md -> /proc/self/environ` never reaches a prompt and a `daily/today.md -> /etc/x`
  is never appended to. The file tools pass `follow=True`: symlinks are resolved, but only
  beneath the root.
- Only regular files are read: the path is opened `O_PATH` first and checked with fstat, so
  a FIFO (which would hang the host) or a device is never opened for I/O. Reads are capped.
- Writes go to an exclusive temp file in the same directory fd, then `renameat` over the
  name: a symlink, FIFO or hard link at the name is replaced, never written through. No
  set-uid, set-gid or sticky bit is ever written or kept.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

READ_LIMIT = 1 << 20  # default cap for a runtime read (prompt files, cron files, skills)
MODE_BITS = 0o777  # all a written file keeps: never set-uid, set-gid or sticky

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
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


class Root:
    """A directory the runtime chose (the home, the workdir, a scratch folder), held open.

    The root itself is trusted (the runtime resolved it); everything beneath is not.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    @classmethod
    def from_fd(cls, fd: int) -> Root:
        """A Root over a directory fd the caller already holds (the Root takes it over and
        closes it). For a folder found beneath another root, or a root opened without
        following symlinks: its name is never looked up again, so a swap can't redirect it."""
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        root = cls.__new__(cls)
        root.fd, root.path = fd, fd_path(fd)
        return root

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()

    # -- looking -----------------------------------------------------------------------------

    def lstat(self, rel: str | Path) -> os.stat_result:
        """stat of `rel` itself (a symlink is reported as one), beneath the root."""
        parts = split(rel)
        if not parts:
            return os.fstat(self.fd)
        with self.dir("/".join(parts[:-1]), follow=False) as d:
            return os.stat(parts[-1], dir_fd=d, follow_symlinks=False)

    def exists(self, rel: str | Path) -> bool:
        try:
            self.lstat(rel)
        except (OSError, Refused):
            return False
        return True

    @contextmanager
    def dir(self, rel: str | Path = "", follow: bool = False) -> Iterator[int]:
        """An O_PATH fd of a folder beneath the root (for *at() calls), closed afterwards."""
        fd = open_beneath(self.fd, rel, os.O_PATH | os.O_DIRECTORY, follow=follow)
        try:
            yield fd
        finally:
            os.close(fd)

    def listdir(self, rel: str | Path = "", follow: bool = False) -> list[tuple[str, str]]:
        """(name, kind) of a folder's entries, sorted; kind is "file", "dir", "link" or
        "other" (FIFO, socket, device), from lstat: nothing is followed."""
        fd = open_beneath(self.fd, rel, os.O_RDONLY | os.O_DIRECTORY, follow=follow)
        out = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        m = e.stat(follow_symlinks=False).st_mode
                    except OSError:
                        continue
                    kind = ("link" if stat.S_ISLNK(m) else "dir" if stat.S_ISDIR(m)
                            else "file" if stat.S_ISREG(m) else "other")
                    out.append((e.name, kind))
        finally:
            os.close(fd)
        return sorted(out)

    # -- reading -----------------------------------------------------------------------------

    @contextmanager
    def open_regular(self, rel: str | Path, follow: bool = False) -> Iterator[tuple[int,
                                                                                 os.stat_result]]:
        """(fd opened for reading, its stat) of a regular file; anything else is refused
        before it is opened for I/O (an O_PATH fd is checked, then reopened)."""
        shown = os.fspath(rel)
        pfd = open_beneath(self.fd, rel, os.O_PATH, follow=follow)
        try:
            st = os.fstat(pfd)
            if stat.S_ISDIR(st.st_mode):
                raise Refused(errno.EISDIR, f"{shown} is a folder, not a file")
            if not stat.S_ISREG(st.st_mode):
                raise Refused(errno.EINVAL, f"{shown} is not a regular file (a FIFO, socket "
                              "or device); agentd reads only regular files")
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        finally:
            os.close(pfd)
        try:
            yield fd, os.fstat(fd)
        finally:
            os.close(fd)

    def read_bytes(self, rel: str | Path, limit: int = READ_LIMIT, follow: bool = False,
                   tail: bool = False) -> bytes:
        """At most `limit` bytes of a regular file: its head, or its tail when `tail`."""
        with self.open_regular(rel, follow) as (fd, st):
            if tail and st.st_size > limit:
                os.lseek(fd, st.st_size - limit, os.SEEK_SET)
            chunks, left = [], limit
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

    def read_text(self, rel: str | Path, limit: int = READ_LIMIT, follow: bool = False,
                  tail: bool = False) -> str:
        """`read_bytes` decoded as UTF-8 (a cut multi-byte character is dropped, not an
        error); raises UnicodeDecodeError for text that is not UTF-8."""
        data = self.read_bytes(rel, limit, follow, tail)
        if len(data) < limit:
            return data.decode("utf-8")
        return _decode_tail(data) if tail else _decode_cut(data)

    def read_ends(self, rel: str | Path, limit: int = READ_LIMIT,
                  follow: bool = False) -> tuple[str, int, str]:
        """(head, bytes skipped, tail) of a regular file, each end at most `limit` bytes,
        from one open: a prompt file is clipped to its head and tail, and the host reads
        no more of a huge one than it shows. A file of at most 2×`limit` bytes comes whole,
        as (text, 0, "")."""
        with self.open_regular(rel, follow) as (fd, st):
            if st.st_size <= 2 * limit:
                data = _pread(fd, 2 * limit, 0)  # capped again: it may have grown since
                return (_decode_cut(data) if len(data) == 2 * limit
                        else data.decode("utf-8")), 0, ""
            head, tail = _pread(fd, limit, 0), _pread(fd, limit, st.st_size - limit)
            return _decode_cut(head), st.st_size - 2 * limit, _decode_tail(tail)

    # -- writing -----------------------------------------------------------------------------

    def makedirs(self, rel: str | Path, follow: bool = False, owner: tuple[int, int] | None
                 = None) -> None:
        """Create the folders of `rel` beneath the root. A component that exists but is not a
        real folder (a symlink, a file) is refused when `follow` is False."""
        parts = split(rel)
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            try:
                with self.dir(sub, follow=follow):
                    continue
            except FileNotFoundError:
                pass
            with self.dir("/".join(parts[: i - 1]), follow=follow) as parent:
                try:
                    os.mkdir(parts[i - 1], 0o777 & ~_UMASK, dir_fd=parent)
                except FileExistsError:
                    pass  # a racing creator, or a symlink: the next open decides
                else:
                    if owner:
                        os.chown(parts[i - 1], *owner, dir_fd=parent, follow_symlinks=False)
            with self.dir(sub, follow=follow):
                pass

    def write_bytes(self, rel: str | Path, data: bytes, *, follow: bool = False,
                    mode: int | None = None, owner: tuple[int, int] | None = None,
                    exclusive: bool = False) -> None:
        """Atomically replace (or create) the file `rel` with `data`.

        The folders on the way are created. The new file keeps the permission bits of a
        regular file it replaces (never set-id or sticky), else honours the umask; `owner`
        (uid, gid) is set on it before it appears. Whatever was at the name (a symlink, a
        FIFO, a hard link) is replaced, not written through. `exclusive`: refuse when
        something is already there.
        """
        parts = split(rel)
        if not parts:
            raise Refused(errno.EISDIR, "no file name given")
        parent_rel, name = "/".join(parts[:-1]), parts[-1]
        if parent_rel:
            self.makedirs(parent_rel, follow=follow, owner=owner)
        with self.dir(parent_rel, follow=follow) as dfd:
            old = _lstat_at(dfd, name)
            if old is not None and (exclusive or stat.S_ISDIR(old.st_mode)):
                kind = "a folder" if stat.S_ISDIR(old.st_mode) else "already there"
                raise Refused(errno.EEXIST, f"{os.fspath(rel)} is {kind}; choose another name")
            if mode is None:
                mode = (old.st_mode if old is not None and stat.S_ISREG(old.st_mode)
                        else 0o666 & ~_UMASK)
            _replace_at(dfd, name, data, mode & MODE_BITS, owner, exclusive)

    def write_text(self, rel: str | Path, text: str, **kw: object) -> None:
        self.write_bytes(rel, text.encode("utf-8"), **kw)  # type: ignore[arg-type]

    def append_text(self, rel: str | Path, text: str, header: str = "",
                    owner: tuple[int, int] | None = None) -> str | None:
        """Append to a runtime-owned log (the day log), creating it with `header`.

        Only a plain regular file of ours is appended to (no symlink on the way, one link, no
        set-id bits). Anything else at the name is replaced by a fresh file, never written
        through; returns a note saying so (else None).
        """
        parts = split(rel)
        parent_rel, name = "/".join(parts[:-1]), parts[-1]
        self.makedirs(parent_rel, owner=owner)
        with self.dir(parent_rel) as dfd:
            old = _lstat_at(dfd, name)
            if old is None:
                _replace_at(dfd, name, (header + text).encode(), 0o666 & ~_UMASK & MODE_BITS,
                            owner, exclusive=True)
                return None
            if (stat.S_ISREG(old.st_mode) and old.st_nlink == 1
                    and not old.st_mode & (stat.S_ISUID | stat.S_ISGID)):
                fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
                             | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    st = os.fstat(fd)
                    if (st.st_ino, st.st_dev) == (old.st_ino, old.st_dev):
                        _write_all(fd, text.encode())
                        return None
                finally:
                    os.close(fd)
            kind = _kind(old.st_mode)
            _replace_at(dfd, name, (header + text).encode(), 0o666 & ~_UMASK & MODE_BITS,
                        owner, exclusive=False)
            return (f"{os.fspath(rel)} was {kind}; agentd replaced it with a new file "
                    "instead of writing through it")

    def ensure_dir(self, rel: str | Path, owner: tuple[int, int] | None = None) -> str | None:
        """Make `rel` a real folder of the runtime's (e.g. `inbox/.done`, `outbox`). A symlink
        or other non-folder there is removed first (its target is untouched); returns a note
        when that happened."""
        parts = split(rel)
        parent_rel, name = "/".join(parts[:-1]), parts[-1]
        self.makedirs(parent_rel, owner=owner)
        with self.dir(parent_rel) as dfd:
            old = _lstat_at(dfd, name)
            if old is not None and stat.S_ISDIR(old.st_mode):
                return None
            note = None
            if old is not None:
                os.unlink(name, dir_fd=dfd)
                note = (f"{os.fspath(rel)} was {_kind(old.st_mode)}; agentd replaced it with "
                        "a real folder")
            with suppress(FileExistsError):
                os.mkdir(name, 0o777 & ~_UMASK, dir_fd=dfd)
                if owner:
                    os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
            return note

    def rename(self, src: str | Path, dst: str | Path, replace: bool = False) -> None:
        """Move `src` to `dst`, both beneath the root, following no symlink on either side.
        Without `replace`, an existing `dst` is refused (renameat2 RENAME_NOREPLACE)."""
        sp, dp = split(src), split(dst)
        if not sp or not dp:
            raise Refused(errno.EINVAL, "rename needs two file names")
        with self.dir("/".join(sp[:-1])) as sfd, self.dir("/".join(dp[:-1])) as dfd:
            if replace:
                os.rename(sp[-1], dp[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
            else:
                _rename_noreplace(sfd, sp[-1], dfd, dp[-1])

    def unlink(self, rel: str | Path, missing_ok: bool = True) -> None:
        """Remove a file or symlink (never what a symlink points to)."""
        parts = split(rel)
        try:
            with self.dir("/".join(parts[:-1])) as dfd:
                os.unlink(parts[-1], dir_fd=dfd)
        except FileNotFoundError:
            if not missing_ok:
                raise


def _decode_cut(data: bytes) -> str:
    """Decode a capped read whose last character may be cut in the middle."""
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(data) - 4:
                raise
    return data.decode("utf-8")


def _decode_tail(data: bytes) -> str:
    """Decode a capped read of a file's tail: a character cut at the start is dropped."""
    while data and (data[0] & 0xC0) == 0x80:
        data = data[1:]
    return data.decode("utf-8")


def _pread(fd: int, size: int, offset: int) -> bytes:
    """Up to `size` bytes at `offset`, however many short reads it takes."""
    chunks, left = [], size
    while left > 0:
        chunk = os.pread(fd, min(left, 1 << 16), offset + size - left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISREG(mode):
        return "a file with other names (hard links) or set-id bits"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def _lstat_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _replace_at(dfd: int, name: str, data: bytes, mode: int, owner: tuple[int, int] | None,
                exclusive: bool) -> None:
    """Exclusive temp file in `dfd`, written, synced, chmod'ed, then renamed over `name`."""
    short = os.fsencode(name)[:200].decode("utf-8", "ignore")  # NAME_MAX counts bytes
    tmp = f".{short}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            if owner:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode & MODE_BITS)  # after chown, which may clear bits
        finally:
            os.close(fd)
        if exclusive:
            _rename_noreplace(dfd, tmp, dfd, name)
        else:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


_RENAME_NOREPLACE = 1
SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}.get(os.uname().machine)


def _rename_noreplace(sfd: int, src: str, dfd: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): atomic 'move unless taken'; link+unlink without it."""
    if SYS_RENAMEAT2 is not None:
        r = _libc.syscall(SYS_RENAMEAT2, sfd, os.fsencode(src), dfd, os.fsencode(dst),
                          _RENAME_NOREPLACE)
        if r == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
    os.unlink(src, dir_fd=sfd)
