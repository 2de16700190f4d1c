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
from dataclasses import dataclass, field
from pathlib import Path

from agentd import gitexec, gitundo
from agentd.config.settings import GitSettings
from agentd.errors import AgentdError
from agentd.homefs import Root

# `git add --ignore-errors` skipped files it could not read (made unreadable by the agent,
# held back from commits too, agentd.gitscreen); any other fatal error fails the snapshot.
ADD_PARTLY = "fatal: adding files failed"
OVER = b"over\n"  # the script's first line when the changed files exceed the caps
TRIES = 3  # snapshots tried while files keep growing past what was held back

# Snapshot the clone's tree into a throwaway index: start from the last snapshot's index
# (SNAP_INDEX; the first time, the real one), add every file changed since, write the tree
# and keep that index for the next snapshot; with a base tree in $1, also print the binary
# patch from it. One sandbox launch per step. Starting from the last snapshot, a step's
# changed files are its own (their stat cache spares re-hashing what earlier steps wrote),
# so the cap per step counts what the step wrote, and a file an earlier step's patch
# carried is never dropped from a later one for being late in path order.
# The caps ($3: bytes per file, $4: bytes per step) are checked on the changed files
# before git reads any of them (a 2 GB file is never hashed, never stored): when they are
# exceeded, the script prints OVER and the changed files (`SIZE TYPE PATH`, NUL-ended)
# and adds nothing; the caller picks what to hold back (stdin: NUL-ended paths) and runs
# it again, which then adds only the rest (`git add` of a literal path list).
SNAP_INDEX = "agentd-snap.index"
SNAPSHOT = f"""\
idx="$GIT_DIR/agentd-snap-$2.index" last="$GIT_DIR/{SNAP_INDEX}"
trap 'rm -f "$idx" "$idx.lock" "$idx.all" "$idx.held" "$idx.ok"' EXIT
export LC_ALL=C
if [ -f "$last" ]; then cp "$last" "$idx" || exit 91
elif [ -f "$GIT_DIR/index" ]; then cp "$GIT_DIR/index" "$idx" || exit 91; fi
export GIT_INDEX_FILE="$idx"
git ls-files -z -m -o -d --exclude-standard | sort -z -u > "$idx.all" || exit 93
sort -z -u > "$idx.held" || exit 93
comm -z -23 "$idx.all" "$idx.held" > "$idx.ok" || exit 93
sizes=$(find -files0-from "$idx.ok" -maxdepth 0 -type f -printf '%s\\n' 2>/dev/null |
        awk -v f="$3" -v s="$4" '$1 > f {{ o = 1 }} {{ t += $1 }} END {{ print (o || t > s) }}')
if [ "$sizes" != 0 ]; then
  echo over
  find -files0-from "$idx.ok" -maxdepth 0 -printf '%s %y %p\\0' 2>/dev/null
  exit 0  # (find says 1 for a deleted file: not a failure)
fi
if [ -s "$idx.held" ]; then
  [ ! -s "$idx.ok" ] || git add -A --ignore-errors --pathspec-from-file="$idx.ok" \\
    --pathspec-file-nul >/dev/null
else
  git add -A --ignore-errors >/dev/null
fi
tree=$(git write-tree) || exit 92
mv -f "$idx" "$last" || exit 94
echo "$tree"
[ -z "$1" ] || exec git diff-tree -p --binary --full-index --no-renames --no-ext-diff \\
  --no-textconv --ignore-submodules=all "$1" "$tree"
"""


@dataclass
class Caps:
    """The most a step's snapshot takes, in bytes: per file and in all (the home's
    `[git] max_file_mb` and `max_commit_mb`, the limits its commits have)."""

    max_file: int
    max_step: int

    @classmethod
    def of(cls, git: GitSettings) -> Caps:
        return cls(git.max_file_mb << 20, git.max_commit_mb << 20)


@dataclass
class Snapshot:
    """The clone's tree now, the patch from the tree before (b"" when not asked for), and
    the changed files left out of both for the caps (path -> why, gitscreen's wording)."""

    tree: str
    patch: bytes
    held: dict[str, str] = field(default_factory=dict)


def _hold(listing: bytes, caps: Caps, held: dict[str, str]) -> None:
    """Add to `held` what of the changed files (`SIZE TYPE PATH` records) breaks the caps,
    in path order, as agentd.gitscreen holds files back from a commit."""
    files = sorted((path, int(size)) for size, kind, path in
                   (r.split(b" ", 2) for r in listing.split(b"\0") if r) if kind == b"f")
    total = 0
    for path, size in files:
        rel = path.decode("utf-8", "surrogateescape")
        if size > caps.max_file:
            held[rel] = f"over the {caps.max_file >> 20} MB file limit"
        elif total + size > caps.max_step:
            held[rel] = f"over the {caps.max_step >> 20} MB limit per step"
        else:
            total += size


def _snapshot(clone: Path, before: str = "", token: str = "",
              caps: Caps | None = None) -> Snapshot:
    """The Snapshot (with `before`, its patch) in one sandbox launch, two when files must
    be held back; `token` names the temporary index (unique per call unless a test pins
    it)."""
    caps = caps or Caps.of(GitSettings())
    held: dict[str, str] = {}
    for _ in range(TRIES):
        stdin = b"".join(os.fsencode(p) + b"\0" for p in held)
        result = gitexec.run_command(
            Path(clone), ["sh", "-c", SNAPSHOT, "sh", before, token or uuid.uuid4().hex,
                          str(caps.max_file), str(caps.max_step)], stdin=stdin)
        fatal = [line for line in result.err.decode("utf-8", "replace").splitlines()
                 if line.startswith("fatal:") and line != ADD_PARTLY]
        if not result.ok or fatal:
            raise AgentdError(f"cannot snapshot the turn's tree: "
                              f"{fatal[0] if fatal else result.why()}")
        if not result.out.startswith(OVER):
            tree, _, patch = result.out.partition(b"\n")
            return Snapshot(tree.decode().strip(), patch, held)
        _hold(result.out[len(OVER):], caps, held)
    raise AgentdError("cannot snapshot the turn's tree: its files keep growing")


def snapshot(clone: Path, before_tree: str, caps: Caps | None = None) -> Snapshot:
    """`tree_of` and `diff` in one sandbox launch: the tree now, the patch from
    `before_tree`, and what the caps left out, for a step that wants all three."""
    return _snapshot(clone, before_tree, caps=caps)


def tree_of(clone: Path, caps: Caps | None = None) -> str:
    """The tree the clone's files make now (every file `git add -A` would take within the
    caps, default agentd's: the runtime dir, ignored files and nested repositories left
    out): a tree sha."""
    return _snapshot(clone, caps=caps).tree


def diff(clone: Path, before_tree: str, caps: Caps | None = None) -> bytes:
    """The binary patch from `before_tree` to the clone's tree now (b"" when unchanged)."""
    return _snapshot(clone, before_tree, caps=caps).patch


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
