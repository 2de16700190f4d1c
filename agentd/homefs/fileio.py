"""Byte-level helpers of agentd.homefs.Root: capped reads decoded without splitting a
character, and the atomic replace (exclusive temp file, fsync, chmod, rename) every write of
the runtime into the agent's tree goes through."""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import suppress

from agentd.homefs.beneath import rename_noreplace

MODE_BITS = 0o777  # all a written file keeps: never set-uid, set-gid or sticky


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def decode_cut(data: bytes) -> str:
    """Decode a capped read whose last character may be cut in the middle."""
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(data) - 4:
                raise
    return data.decode("utf-8")


def decode_tail(data: bytes) -> str:
    """Decode a capped read of a file's tail: a character cut at the start is dropped."""
    while data and (data[0] & 0xC0) == 0x80:
        data = data[1:]
    return data.decode("utf-8")


def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to `size` bytes at `offset`, however many short reads it takes."""
    chunks, left = [], size
    while left > 0:
        chunk = os.pread(fd, min(left, 1 << 16), offset + size - left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISREG(mode):
        return "a file with other names (hard links) or set-id bits"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def lstat_at(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def replace_at(dfd: int, name: str, data: bytes, mode: int, owner: tuple[int, int] | None,
                exclusive: bool) -> None:
    """Exclusive temp file in `dfd`, written, synced, chmod'ed, then renamed over `name`."""
    short = os.fsencode(name)[:200].decode("utf-8", "ignore")  # NAME_MAX counts bytes
    tmp = f".{short}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dfd)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
            if owner:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode & MODE_BITS)  # after chown, which may clear bits
        finally:
            os.close(fd)
        if exclusive:
            rename_noreplace(dfd, tmp, dfd, name)
        else:
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise

