"""The worker's cache folder: every home's mirror and the running turns' clones, so it
must be the worker's alone (`agentd fleet worker --cache`, and the turn's configure)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from agentd.errors import AgentdError

__all__ = ["private_cache"]


def private_cache(cache: Path) -> Path:
    """The worker's cache folder, made (0700) if missing, resolved; else one line, exit 1.

    It holds every home's mirror and the running turns' clones: readable by others, one
    home's turn (or another host user) reads another home's; writable by others, what they
    planted there (a mirror whose config runs a command, a `turns` symlink) runs or lands
    as the worker. So an existing folder must be the worker's own, not a symlink (its
    target is someone's choice), and no one else's to write, nor in a parent others may
    rename it out of (world-writable without the sticky bit); if only others' to read,
    it is made 0700 here. Opened without following a link, so what is checked is what is
    chmodded."""
    path = Path(cache).expanduser().absolute()

    def refuse(why: str) -> AgentdError:
        return AgentdError(f"cannot use --cache {path}: {why}", 1)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        parent = path.parent.stat()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if path.is_symlink():
            raise refuse("a symlink (give the folder itself)") from None
        raise refuse(e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise refuse(f"owned by uid {st.st_uid}, not by the worker's ({os.geteuid()})")
        if st.st_mode & 0o022:
            raise refuse(f"others may write it (mode {stat.S_IMODE(st.st_mode):o}): use a "
                         "new folder, not one whose contents others could have planted")
        if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
            raise refuse("its parent is writable by everyone, without the sticky bit")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path.resolve()
