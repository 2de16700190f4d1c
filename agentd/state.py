"""Small JSON state files in `.agentd/daemon/` (git-ignored, never visible to the sandbox as
writable): per-item heartbeat times, cron last results, inbox claims, the turn in flight.

Writes are atomic (temp file + rename), so a crash leaves the old or the new state, never a
torn one; read-modify-write goes through `update`, under a file lock, because `agentd cron
run` in a terminal and the daemon may record a result at the same moment.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentd import jsonl
from agentd.home import atomic_write, open_private
from agentd.surrogates import replace_surrogates

TAIL_BYTES = 64 * 1024


def read(path: Path, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when it is missing or unreadable (a state file is a
    cache of what happened, so losing one must never stop the daemon)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write(path: Path, data: Any, durable: bool = True) -> None:
    """Write `data` as JSON (atomically; fsynced when `durable`); a lone surrogate in it (a
    task typed with bytes that are not UTF-8) is written as U+FFFD rather than failing."""
    text = json.dumps(data, indent=1, ensure_ascii=False, default=str)
    atomic_write(path, replace_surrogates(text) + "\n", durable)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock`, across processes."""
    with open(open_private(path.with_name(path.name + ".lock")), "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def update(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read the JSON object in `path`, apply `change` to it in place, write it back."""
    with locked(path):
        data = read(path, {})
        if not isinstance(data, dict):
            data = {}
        change(data)
        write(path, data)
        return data


def append_line(path: Path, row: dict[str, Any]) -> None:
    """Append `row` to a JSONL file (runs.jsonl) as an agentd.jsonl line."""
    jsonl.append(path, row, default=str)


def tail_lines(path: Path, n: int) -> list[dict[str, Any]]:
    """The last `n` JSON rows of a JSONL file (reads at most its last 64 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            chunk = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    rows = []
    for line in jsonl.split(chunk)[-n - 1:]:
        try:
            row = jsonl.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows[-n:]
