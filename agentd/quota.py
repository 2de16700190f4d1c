"""The disk quota of untrusted turns (webhooks, inbox files, non-owner chat senders).

An untrusted turn may write only `<home>/outbox/` and its scratch folder
(agentd/tools/sandbox.py). Without a cap one such turn filled a home with 1.2 GB, half of it
committed into git history. `[quota]` in agentd.toml bounds it:

- `home_mb`: a home already over it refuses untrusted turns before they start (one line
  saying why). It counts everything under the home, `.git` included: history is disk too.
- `untrusted_outbox_mb` / `untrusted_outbox_files`, per turn: what the turn created or
  changed under outbox/ and the scratch folder. A changed file counts whole, since that is
  what the turn's commit adds to history. The byte budget also shrinks to the room left
  under `home_mb`.
- After every tool call of the turn (agentd/turn.py's books see each result) the runtime
  measures that, and when it is over, removes the newest of the turn's files until it is
  not, and appends to the tool result what it removed, so the model knows. The `write`
  tool refuses up front a write that would go over. A last check runs before the turn's
  commit, so the excess is never committed.

Measuring never follows a link: directories are opened with O_NOFOLLOW beneath a directory
fd and every entry is lstat'ed, so a symlink planted in outbox/ is counted as a link and
never walked into, and removals happen beneath the same fds. Sizes count the larger of the
apparent size and the allocated blocks, so a sparse 1 TB file (cheap on disk, dear for git)
counts as 1 TB. Directories deeper than MAX_DEPTH are not walked: a new one is removed
whole.

0 disables a limit. The checks run while no sandboxed command is running (bwrap's pid
namespace leaves no survivor), so nothing changes the tree under them.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config import QuotaSettings
    from agentd.tools import ToolContext

MB = 1024 * 1024
MAX_DEPTH = 48  # directory levels walked below outbox/ or scratch (one fd open per level)
SHOWN = 8  # removed names listed in a note; the rest are counted
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One thing under a measured folder, as lstat saw it."""

    mode: int
    ino: int
    size: int
    mtime_ns: int
    bytes: int  # what it costs: max(apparent size, allocated blocks)
    deep: bool = False  # a directory at MAX_DEPTH, not walked

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def same(self, other: Entry) -> bool:
        return (self.mode, self.ino, self.size, self.mtime_ns) == (
            other.mode, other.ino, other.size, other.mtime_ns)


def entry_of(st: os.stat_result, deep: bool = False) -> Entry:
    return Entry(st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, cost(st), deep)


def cost(st: os.stat_result) -> int:
    """Bytes a file costs: its allocated blocks, or its apparent size if larger (git reads
    and stores a sparse file whole)."""
    used = st.st_blocks * 512
    return max(st.st_size, used) if stat.S_ISREG(st.st_mode) else used


# -- walking beneath a directory fd -----------------------------------------------------------


def _open_root(root: Path) -> int | None:
    """An fd on `root` when it is a real directory (not a link), else None."""
    try:
        return os.open(root, DIR_FLAGS)
    except OSError:
        return None


def walk(root: Path) -> Iterator[tuple[str, os.stat_result, bool]]:
    """(relative path, lstat, too deep to walk) of everything under `root`, depth first.

    One fd per level is open at a time; each subdirectory is opened beneath its parent's fd
    with O_NOFOLLOW, so a link is never walked into, whatever it points at."""
    top = _open_root(root)
    if top is None:
        return
    stack: list[tuple[int, str, list[str]]] = []
    try:
        found, subdirs = _list(top, "", 1)
        stack.append((top, "", subdirs))
        yield from found
        while stack:
            fd, rel, subdirs = stack[-1]
            if not subdirs:
                os.close(fd)
                stack.pop()
                continue
            name = subdirs.pop()
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            path = f"{rel}/{name}" if rel else name
            found, below = _list(child, path, len(stack) + 1)
            stack.append((child, path, below))
            yield from found
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _list(fd: int, rel: str, depth: int
          ) -> tuple[list[tuple[str, os.stat_result, bool]], list[str]]:
    """The entries of the directory `fd` (at `depth` below the root), and the names of its
    subdirectories to walk: none at MAX_DEPTH, those are reported as too deep instead."""
    found: list[tuple[str, os.stat_result, bool]] = []
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                deep = is_dir and depth >= MAX_DEPTH
                found.append((f"{rel}/{e.name}" if rel else e.name, st, deep))
                if is_dir and not deep:
                    subdirs.append(e.name)
    except OSError:
        pass
    return found, subdirs


def snapshot(root: Path | None) -> dict[str, Entry]:
    """Everything under `root` now, by relative path ({} for None or a non-directory)."""
    if root is None:
        return {}
    return {rel: entry_of(st, deep) for rel, st, deep in walk(root)}


def tree_bytes(root: Path) -> int:
    """What everything under `root` costs on disk (links not followed; hard links once)."""
    seen: set[int] = set()
    total = 0
    for _, st, _ in walk(root):
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
        total += cost(st)
    return total


def remove(root: Path, rel: str, entry: Entry) -> bool:
    """Remove `rel` beneath `root`, opening each parent with O_NOFOLLOW: a directory, only
    if empty, unless it is too deep to have been walked (then with all it holds)."""
    parts = rel.split("/")
    fd = _open_root(root)
    if fd is None:
        return False
    try:
        for part in parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        name = parts[-1]
        if entry.deep:
            shutil.rmtree(name, dir_fd=fd)
        elif entry.is_dir:
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)
        return True
    except (OSError, RecursionError):
        return False
    finally:
        os.close(fd)


# -- the home-wide cap ------------------------------------------------------------------------


def check_home(home: Path, settings: QuotaSettings) -> int:
    """Raise AgentdError when the home is over `home_mb` (an untrusted turn is then
    refused); else return what it uses, in bytes, for the turn's budget."""
    cap = settings.home_mb * MB
    if not cap:
        return 0
    used = tree_bytes(home)
    if used >= cap:
        raise AgentdError(
            f"untrusted turn refused: the home is over its disk cap ({_mb(used)} of "
            f"{settings.home_mb} MB, [quota] home_mb); free space in outbox/ or raise the cap")
    return used


# -- the per-turn quota -----------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """Something this turn created or changed, in one of the measured folders."""

    root: Path
    rel: str
    label: str  # what the model is shown: outbox/x or the scratch path
    entry: Entry


class TurnQuota:
    """The quota of one untrusted turn: a snapshot of outbox/ and the scratch folder taken
    when the turn starts, and the limits it is measured against."""

    def __init__(self, ctx: ToolContext, settings: QuotaSettings, home_used: int = 0):
        self.ctx = ctx
        self.settings = settings
        inf = float("inf")
        self.max_bytes: float = settings.untrusted_outbox_mb * MB or inf
        self.max_files: float = settings.untrusted_outbox_files or inf
        self.home_room: float = inf
        if settings.home_mb:
            self.home_room = max(0, settings.home_mb * MB - home_used)
            self.max_bytes = min(self.max_bytes, self.home_room)
        self.base = {str(root): snapshot(root) for root, _ in self.roots()}
        self.removed: list[str] = []

    def roots(self) -> list[tuple[Path, str]]:
        """(folder, how its files are named to the model): outbox/ and the scratch folder
        (made on first use, so it may appear after the turn started)."""
        found = [(self.ctx.home / "outbox", "outbox")]
        if self.ctx.scratch is not None:
            found.append((self.ctx.scratch, str(self.ctx.scratch)))
        return found

    def items(self) -> list[Item]:
        """What this turn created or changed so far (unchanged files are not its own)."""
        out = []
        for root, label in self.roots():
            base = self.base.get(str(root), {})
            for rel, st, deep in walk(root):
                e = entry_of(st, deep)
                before = base.get(rel)
                if before is not None and (e.is_dir or before.same(e)):
                    continue  # there before the turn; a directory's mtime moves by itself
                out.append(Item(root, rel, f"{label}/{rel}", e))
        return out

    def over(self, total: float, count: int) -> bool:
        return total > self.max_bytes or count > self.max_files

    def enforce(self) -> str | None:
        """Remove the newest of the turn's files until it is within its quota; return the
        note for the model (None when it already was)."""
        items = self.items()
        total, count = sum(i.entry.bytes for i in items), len(items)
        if not self.over(total, count) and not any(i.entry.deep for i in items):
            return None
        removed: list[Item] = []
        busy: list[Item] = []  # folders not empty yet when their turn came
        failed = 0
        for item in _removal_order(items):
            if not item.entry.deep and not self.over(total, count):
                break
            if remove(item.root, item.rel, item.entry):
                total, count = total - item.entry.bytes, count - 1
                removed.append(item)
            elif item.entry.is_dir:
                busy.append(item)
            else:
                failed += 1
        for item in sorted(busy, key=lambda i: i.rel.count("/"), reverse=True):
            if not self.over(total, count):
                break
            if remove(item.root, item.rel, item.entry):
                total, count = total - item.entry.bytes, count - 1
                removed.append(item)
            else:
                failed += 1
        self.removed += [i.label for i in removed]
        freed = sum(i.entry.bytes for i in removed)
        return self._note([i.label for i in removed], freed, failed, total, count)

    def refuse_write(self, target: Path, size: int) -> str | None:
        """Why a `write` of `size` bytes to `target` (a resolved path) would go over the
        quota, or None when it fits or is not in a measured folder."""
        where = next(((root, label) for root, label in self.roots()
                      if target.is_relative_to(root)), None)
        if where is None:
            return None
        root, label = where
        rel = str(target.relative_to(root))
        items = [i for i in self.items() if not (i.root == root and i.rel == rel)]
        new_dirs = sum(1 for p in target.parents if p.is_relative_to(root) and p != root
                       and not p.exists())
        total = sum(i.entry.bytes for i in items) + size
        count = len(items) + 1 + new_dirs
        if total <= self.max_bytes and count <= self.max_files:
            return None
        return (f"write refused: {label}/{rel} ({_mb(size)}) would take this turn over "
                f"{self.describe()}; it has used {_mb(total - size)} in "
                f"{len(items)} file{'s' * (len(items) != 1)}. Write less, or fewer files.")

    def describe(self) -> str:
        """"the untrusted disk quota (20 MB, 100 files per turn)", plus the room left under
        the home's cap when that binds first."""
        s = self.settings
        parts = [f"{s.untrusted_outbox_mb} MB" if s.untrusted_outbox_mb else "no byte limit",
                 f"{s.untrusted_outbox_files} files per turn" if s.untrusted_outbox_files
                 else "no file limit"]
        text = f"the untrusted disk quota ({', '.join(parts)}"
        if self.home_room < (s.untrusted_outbox_mb * MB or float("inf")):
            text += f"; {_mb(self.home_room)} left under the home's {s.home_mb} MB cap"
        return text + ")"

    def _note(self, removed: list[str], freed: int, failed: int, total: float,
              count: int) -> str:
        shown = ", ".join(_printable(x) for x in removed[:SHOWN]) or "nothing"
        more = f" and {len(removed) - SHOWN} more" if len(removed) > SHOWN else ""
        note = (f"over {self.describe()}: removed {shown}{more} ({len(removed)} "
                f"file{'s' * (len(removed) != 1)}, {_mb(freed)}). This turn keeps "
                f"{count} file{'s' * (count != 1)}, {_mb(total)}; write less under outbox/ "
                "and the scratch folder.")
        if failed:
            note += f" {failed} could not be removed."
        return note


def _removal_order(items: list[Item]) -> list[Item]:
    """Too-deep directories first (never measured), then everything newest first; on a
    tie the deeper first, so a file goes before the folder it was just made in."""
    return sorted(items, key=lambda i: (i.entry.deep, i.entry.mtime_ns, i.rel.count("/"),
                                        i.label), reverse=True)


def _mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


def _printable(name: str) -> str:
    """A file name as one line: the agent chose it, newlines and escapes included."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
