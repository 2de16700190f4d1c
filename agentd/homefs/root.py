"""`Root`: a directory the runtime chose, held open; every look, read and write of
agentd's own beneath it goes through the resolver (agentd.homefs.beneath), so a path never
leaves it and nothing planted there (a symlink, a FIFO, a hard link) is followed, read or
written through. See agentd.homefs for the rules."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from agentd.homefs.beneath import Refused, fd_path, open_beneath, rename_noreplace, split
from agentd.homefs.fileio import (
    MODE_BITS,
    UMASK,
    decode_cut,
    decode_tail,
    kind_of,
    lstat_at,
    pread,
    replace_at,
    write_all,
)

READ_LIMIT = 1 << 20  # default cap for a runtime read (prompt files, cron files, skills)


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
        return decode_tail(data) if tail else decode_cut(data)

    def read_ends(self, rel: str | Path, limit: int = READ_LIMIT,
                  follow: bool = False) -> tuple[str, int, str]:
        """(head, bytes skipped, tail) of a regular file, each end at most `limit` bytes,
        from one open: a prompt file is clipped to its head and tail, and the host reads
        no more of a huge one than it shows. A file of at most 2×`limit` bytes comes whole,
        as (text, 0, "")."""
        with self.open_regular(rel, follow) as (fd, st):
            if st.st_size <= 2 * limit:
                data = pread(fd, 2 * limit, 0)  # capped again: it may have grown since
                return (decode_cut(data) if len(data) == 2 * limit
                        else data.decode("utf-8")), 0, ""
            head, tail = pread(fd, limit, 0), pread(fd, limit, st.st_size - limit)
            return decode_cut(head), st.st_size - 2 * limit, decode_tail(tail)

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
                    os.mkdir(parts[i - 1], 0o777 & ~UMASK, dir_fd=parent)
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
            old = lstat_at(dfd, name)
            if old is not None and (exclusive or stat.S_ISDIR(old.st_mode)):
                kind = "a folder" if stat.S_ISDIR(old.st_mode) else "already there"
                raise Refused(errno.EEXIST, f"{os.fspath(rel)} is {kind}; choose another name")
            if mode is None:
                mode = (old.st_mode if old is not None and stat.S_ISREG(old.st_mode)
                        else 0o666 & ~UMASK)
            replace_at(dfd, name, data, mode & MODE_BITS, owner, exclusive)

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
            old = lstat_at(dfd, name)
            if old is None:
                try:
                    replace_at(dfd, name, (header + text).encode(),
                               0o666 & ~UMASK & MODE_BITS, owner, exclusive=True)
                    return None
                except FileExistsError:  # another process created it first: append to it
                    old = lstat_at(dfd, name)
                    if old is None:
                        raise
            if (stat.S_ISREG(old.st_mode) and old.st_nlink == 1
                    and not old.st_mode & (stat.S_ISUID | stat.S_ISGID)):
                fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
                             | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    st = os.fstat(fd)
                    if (st.st_ino, st.st_dev) == (old.st_ino, old.st_dev):
                        write_all(fd, text.encode())
                        return None
                finally:
                    os.close(fd)
            kind = kind_of(old.st_mode)
            replace_at(dfd, name, (header + text).encode(), 0o666 & ~UMASK & MODE_BITS,
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
            old = lstat_at(dfd, name)
            if old is not None and stat.S_ISDIR(old.st_mode):
                return None
            note = None
            if old is not None:
                os.unlink(name, dir_fd=dfd)
                note = (f"{os.fspath(rel)} was {kind_of(old.st_mode)}; agentd replaced it with "
                        "a real folder")
            with suppress(FileExistsError):
                os.mkdir(name, 0o777 & ~UMASK, dir_fd=dfd)
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
                rename_noreplace(sfd, sp[-1], dfd, dp[-1])

    def unlink(self, rel: str | Path, missing_ok: bool = True) -> None:
        """Remove a file or symlink (never what a symlink points to)."""
        parts = split(rel)
        try:
            with self.dir("/".join(parts[:-1])) as dfd:
                os.unlink(parts[-1], dir_fd=dfd)
        except FileNotFoundError:
            if not missing_ok:
                raise
