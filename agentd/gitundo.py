"""Undo: revert a turn's commit as a new commit. git only ever writes `.git` (it runs with the
home read-only, agentd.gitexec); the reverted files are written by agentd through
agentd.homefs, like every other write of the runtime into the agent's tree:

1. the home must hold no committable change (held-back files don't count), and no file the
   undo would bring back may already be on disk (it would be overwritten);
2. the reverse patch is applied to the index only (`git apply --cached`), atomically: on a
   conflict nothing changes;
3. the worktree is made to match the index for the reverted paths: blobs read with
   `git cat-file --batch`, written beneath the home's folder fd (no symlink followed, no
   set-id bit, owned by the sandbox uid when agentd is root), deleted files unlinked;
4. the index is committed (`Agentd-Trigger: undo`).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from agentd import gitexec
from agentd.errors import AgentdError
from agentd.gitscreen import Limits, display, screen
from agentd.homefs import Root
from agentd.tools.owner import sandbox_owner

DAY_FILE = re.compile(r"\d{4}-\d{2}-\d{2}\.md")  # agentd.daylog.day_rel's names

REGULAR = {"100644": 0o644, "100755": 0o755}
SYMLINK = "120000"


def _must(result: gitexec.Result, what: str) -> bytes:
    if not result.ok:
        raise AgentdError(f"git {what} failed: {result.why()}")
    return result.out


def _paths(out: bytes) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]


def changed_files(home: Path, sha: str, keep: str) -> list[str]:
    """What commit `sha` changed, but the day logs in `keep` (memory/daily/YYYY-MM-DD.md):
    any other file there is work like any other, and `undo` takes it away."""
    out = _must(gitexec.run(home, "diff", "--name-only", "-z", "--no-renames", sha + "^", sha),
                "diff")
    return [f for f in _paths(out) if not is_day_log(f, keep)]


def is_day_log(path: str, keep: str) -> bool:
    name = path.removeprefix(keep + "/")
    return name != path and DAY_FILE.fullmatch(name) is not None


def check_clean(home: Path, changed: list[str], keep: str, files: list[str]) -> None:
    """Refuse when the home has committable changes, or when a file the undo brings back is
    on disk untracked (a held-back file at that name would be overwritten)."""
    if [p for p in screen(home, changed, Limits.of(home))[0] if not is_day_log(p, keep)]:
        raise AgentdError("the home has uncommitted changes: run a turn or commit them first, "
                          "then undo")
    tracked = set(_paths(_must(gitexec.run(home, "ls-files", "-z", "--", *files), "ls-files")))
    there = [f for f in files if f not in tracked and os.path.lexists(home / f)]
    if there:
        raise AgentdError(f"cannot undo: {', '.join(display(f) for f in there)} would be "
                          "overwritten (on disk, not committed); move it away first")


def apply_reverse(home: Path, sha: str, files: list[str]) -> None:
    """The reverse of `sha` for `files`, applied to the index only; nothing changes on a
    conflict."""
    patch = _must(gitexec.run(home, "diff", "--binary", "--no-ext-diff", "--no-textconv",
                              "--no-renames", sha, sha + "^", "--", *files), "diff")
    if not gitexec.run(home, "apply", "--cached", "-", stdin=patch).ok:
        raise AgentdError(f"cannot undo {sha[:8]}: later changes touch the same lines "
                          f"({', '.join(display(f) for f in files)}); nothing changed")


def _staged(home: Path, files: list[str]) -> dict[str, tuple[str, str]]:
    """path -> (mode, blob sha) in the index, for those of `files` it holds."""
    out = _must(gitexec.run(home, "ls-files", "-s", "-z", "--", *files), "ls-files")
    entries = {}
    for record in out.split(b"\0"):
        if record:
            meta, path = record.split(b"\t", 1)
            mode, blob, _stage = meta.decode().split()
            entries[path.decode("utf-8", "surrogateescape")] = (mode, blob)
    return entries


def _blobs(home: Path, shas: set[str]) -> dict[str, bytes]:
    """The contents of blobs, in one `git cat-file --batch`."""
    order = sorted(shas)
    out = _must(gitexec.run(home, "cat-file", "--batch",
                            stdin="".join(f"{s}\n" for s in order).encode()), "cat-file")
    blobs, pos = {}, 0
    for sha in order:
        end = out.index(b"\n", pos)
        size = int(out[pos:end].split()[2])
        blobs[sha] = out[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1
    return blobs


def write_worktree(home: Path, files: list[str]) -> None:
    """Make `files` on disk what the index says, through homefs; on a refusal (a planted
    symlink on the way), the index goes back to HEAD and the undo fails."""
    entries = _staged(home, files)
    blobs = _blobs(home, {blob for mode, blob in entries.values()
                          if mode in REGULAR or mode == SYMLINK})
    owner = sandbox_owner(gitexec.home_settings(home).sandbox)
    try:
        with Root(home) as root:
            for rel in files:
                mode, blob = entries.get(rel, ("", ""))
                if mode in REGULAR:
                    root.write_bytes(rel, blobs[blob], mode=REGULAR[mode], owner=owner)
                elif mode == SYMLINK:
                    _symlink(root, rel, os.fsdecode(blobs[blob]), owner)
                elif not mode:
                    root.unlink(rel)
    except OSError as e:
        gitexec.run(home, "read-tree", "HEAD")
        raise AgentdError(f"cannot undo: {e}; the files written so far stay changed, "
                          "nothing was committed") from None


def _symlink(root: Root, rel: str, target: str, owner: tuple[int, int] | None) -> None:
    """A symlink beneath the root, replacing whatever was at the name."""
    parent, _, name = rel.rpartition("/")
    root.makedirs(parent, owner=owner)
    with root.dir(parent) as dfd:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        os.symlink(target, name, dir_fd=dfd)
        if owner:
            os.chown(name, *owner, dir_fd=dfd, follow_symlinks=False)
