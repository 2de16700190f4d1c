"""The wire between `agentd run` and a running daemon of the same home (the warm path:
agentd/warm.py is the client, agentd/daemon/warm.py the server).

One unix stream socket, `.agentd/daemon/warm.sock` (mode 0600; `.agentd/` is read-only
inside the sandbox, so the agent cannot plant one there). Frames are JSON objects, one per
line, ASCII-only (`ensure_ascii`: a lone surrogate in a task survives the trip), each at
most FRAME_LIMIT bytes: a longer, truncated or non-object line is malformed, and either
side then gives up on the connection (the client falls back to running the turn itself
while nothing has started).

client -> daemon: the request (`{"v": 1, "task": ...}`), then at most `{"t": "cancel"}`.
daemon -> client: `wait` (another turn holds the home; `holder` says who), `start` (the
turn holds the lock), `text`, `call`, `result` (the turn's events, tool calls redacted),
`alive` (every KEEPALIVE seconds, so a silent daemon is told from a long command), then
one of `end` (the report, or `interrupted`), `refused` (the turn did not start: `error`,
`exit_code`) or `cold` (the daemon cannot run this request as the CLI would: `why`).

Everything here is stdlib and cheap to import: the client is on the path of every
`agentd run`.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

VERSION = 1
SOCKET_NAME = "warm.sock"
FRAME_LIMIT = 16 * 1024 * 1024  # bytes per line: a 1 MB stdin, JSON-escaped, fits
KEEPALIVE = 5.0  # seconds between the daemon's `alive` frames while a turn waits or runs
SILENCE = 30.0  # seconds of no frame at all after which the client stops waiting
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Malformed(ValueError):
    """A frame that is not one JSON object on one line of at most FRAME_LIMIT bytes."""


def runtime_dir(home: Path) -> Path:
    """`<home>/.agentd/daemon`, where the socket lives; spelled out here instead of through
    agentd.home.Home, whose folder properties create the folder (the client must not)."""
    return home / ".agentd" / "daemon"


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One frame from one line (its newline included); Malformed when it is not one."""
    if not line.endswith(b"\n"):
        raise Malformed("a truncated frame" if line else "the connection closed")
    try:
        frame = json.loads(line)
    except (ValueError, RecursionError):
        raise Malformed("a frame that is not JSON") from None
    if not isinstance(frame, dict):
        raise Malformed("a frame that is not a JSON object")
    return frame


def peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel recorded them when it
    connected or listened (SO_PEERCRED): nothing the peer says about itself."""
    pid, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               _CRED.size))
    return pid, uid


def in_dir(dir_fd: int, name: str) -> str:
    """A path to `name` inside the folder open at `dir_fd`: through /proc/self/fd, so it
    is short (a socket path is limited to 107 bytes, a home's path is not) and no
    component of the folder's own path is looked up again."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def open_dir(folder: Path) -> int | None:
    """The folder open for lookups (never through a symlink), or None."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


def is_socket_at(dir_fd: int, name: str) -> bool:
    """Is `name` in the folder a socket itself (not a symlink, not a file)?"""
    try:
        return stat.S_ISSOCK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def file_id(path: Path) -> list[int]:
    """[st_dev, st_ino]: both ends compare these to know they see the same folder."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
