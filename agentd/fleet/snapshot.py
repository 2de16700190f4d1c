"""Per-step snapshots of a fleet turn's clone, and replaying them elsewhere.

A tool step's change to the tree is a binary patch between two snapshots: every file as
`git add -A` would take it (ignored files and the runtime dir excluded, nested repositories
and FIFOs left out), via a temporary index and `write-tree`, and `diff-tree --binary`.
DBOS checkpoints it with the step; a turn recovered on another worker replays the patches
of its completed steps on a fresh clone at the turn's base (`apply`), so its files are
what those steps left. Why patches and not a WIP commit pushed per step: nothing but the
turn's one commit ever reaches the home's remote, and the patch travels in the checkpoint
that records the step anyway (one database write, no extra network round trip).

The clone is the agent's home: git runs on it only through agentd.gitexec (confined,
sandboxed, the tree read-only), and `apply` writes files through agentd.homefs.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from agentd import gitexec, gitundo
from agentd.errors import AgentdError
from agentd.homefs import Root

# `git add --ignore-errors` skipped files it could not read (made unreadable by the agent,
# held back from commits too, agentd.gitscreen); any other fatal error fails the snapshot.
ADD_PARTLY = "fatal: adding files failed"

# Snapshot the clone's tree into a throwaway index: start from the real index (its stat
# cache spares re-hashing unchanged files), add everything, write the tree; with a base
# tree in $1, also print the binary patch from it. One sandbox launch per step.
SNAPSHOT = """\
idx="$GIT_DIR/agentd-snap-$2.index"
trap 'rm -f "$idx" "$idx.lock"' EXIT
if [ -f "$GIT_DIR/index" ]; then cp "$GIT_DIR/index" "$idx" || exit 91; fi
export GIT_INDEX_FILE="$idx"
git add -A --ignore-errors >/dev/null
tree=$(git write-tree) || exit 92
echo "$tree"
[ -z "$1" ] || exec git diff-tree -p --binary --full-index --no-renames --no-ext-diff \
  --no-textconv --ignore-submodules=all "$1" "$tree"
"""


def _snapshot(clone: Path, before: str = "", token: str = "") -> tuple[str, bytes]:
    """(tree, patch from `before`) in one sandbox launch; `token` names the temporary
    index (unique per call unless a test pins it)."""
    result = gitexec.run_command(Path(clone), ["sh", "-c", SNAPSHOT, "sh", before,
                                               token or uuid.uuid4().hex])
    fatal = [line for line in result.err.decode("utf-8", "replace").splitlines()
             if line.startswith("fatal:") and line != ADD_PARTLY]
    if not result.ok or fatal:
        raise AgentdError(f"cannot snapshot the turn's tree: "
                          f"{fatal[0] if fatal else result.why()}")
    tree, _, patch = result.out.partition(b"\n")
    return tree.decode().strip(), patch


def snapshot(clone: Path, before_tree: str) -> tuple[str, bytes]:
    """`tree_of` and `diff` in one sandbox launch: (the tree now, the patch from
    `before_tree`), for a step that wants both."""
    return _snapshot(clone, before_tree)


def tree_of(clone: Path) -> str:
    """The tree the clone's files make now (every file `git add -A` would take, the
    runtime dir, ignored files and nested repositories left out): a tree sha."""
    return _snapshot(clone)[0]


def diff(clone: Path, before_tree: str) -> bytes:
    """The binary patch from `before_tree` to the clone's tree now (b"" when unchanged)."""
    return _snapshot(clone, before_tree)[1]


def apply(clone: Path, patch: bytes) -> None:
    """Replay a step's patch on the clone: on its index first (atomically: nothing changes
    when it does not apply), then on the files, through agentd.homefs, since git in its
    sandbox sees the tree read-only: deleted files go first (and the folders they leave
    empty, so a folder may become a file), then the rest is written from the index
    (agentd.gitundo.write_worktree: no symlink followed, the sandbox's owner)."""
    if not patch.strip():
        return
    clone = Path(clone)
    result = gitexec.run(clone, "apply", "--cached", "--binary", "--apply", "--numstat",
                         "-z", "-", stdin=patch)
    if not result.ok:
        raise AgentdError(f"a step's patch does not apply to the turn's tree: {result.why()}")
    files = [rec.split(b"\t", 2)[2].decode("utf-8", "surrogateescape")
             for rec in result.out.split(b"\0") if rec.count(b"\t") >= 2]
    listed = gitexec.run(clone, "ls-files", "-z", "--", *files)
    if not listed.ok:
        raise AgentdError(f"git ls-files failed: {listed.why()}")
    kept = {p.decode("utf-8", "surrogateescape") for p in listed.out.split(b"\0") if p}
    try:
        with Root(clone) as root:
            for rel in files:
                if rel not in kept:
                    root.unlink(rel)
                    _prune(root, rel)
        gitundo.write_worktree(clone, [f for f in files if f in kept])
    except (AgentdError, OSError) as e:
        raise AgentdError(f"cannot replay a step's patch: {e}") from None


def _prune(root: Root, rel: str) -> None:
    """Remove the folders above a deleted file that it left empty (as git would)."""
    parts = rel.split("/")[:-1]
    while parts:
        with root.dir("/".join(parts[:-1])) as dfd:
            try:
                os.rmdir(parts[-1], dir_fd=dfd)
            except OSError:  # not empty, or not a folder: stop
                return
        parts.pop()
