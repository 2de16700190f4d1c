"""Git travelling with the turn: a worker's mirror of each home, a fresh clone per turn,
per-step snapshots of the clone's tree, and one commit pushed fast-forward at the end.

Two kinds of repository, trusted differently:

- The mirror (`cache/NAME.git`, bare) is the worker's own. It talks to the home's remote
  (fetch, push) and holds the objects; git runs on it unsandboxed but with hooks, fsmonitor
  and every other command-running setting off (agentd.gitexec's command-line config), and
  it never has a work tree, so agent content is never checked out or run there.
- The clone (`dest`) is the turn's home: from the moment it exists the agent writes it, so
  every git run on it goes through agentd.gitexec (confined environment, bubblewrap, only
  `.git` writable) and every file agentd writes into it through agentd.homefs.

Objects move clone -> mirror as a pack stream: `git pack-objects --stdout` runs confined on
the clone, and `git index-pack --strict` reads it into the mirror. Once the clone is made
(`checkout`, before any agent code ran) no git process runs outside the sandbox with it as
its repository, so nothing in the clone (its config, hooks, a nested repository) can run
on the host; `--strict` refuses malformed objects
(`.git` paths in trees, bad modes) before they can reach the remote.

Per-step snapshots of the clone's tree and their replay (`tree_of`, `diff`, `apply`,
`snapshot`) live in agentd.fleet.snapshot and are re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agentd import gitexec
from agentd.errors import AgentdError
from agentd.fleet.db import check_name
from agentd.fleet.snapshot import apply, diff, snapshot, tree_of

__all__ = ["Published", "Refused", "apply", "changed", "checkout", "conflict_ref", "diff",
           "mirror_path", "publish", "snapshot", "sync_mirror", "tree_of"]

TIMEOUT = 600.0  # seconds for a network git (fetch, push) on the mirror
PROTOCOLS = "file:git:ssh:http:https"  # what a home's git URL may use (never ext::, fd::)
ATTEMPTS = 5  # pushes tried before a branch that keeps moving counts as a conflict
CONFLICTS = "refs/heads/agentd/conflicts/"
TRACK = "refs/heads/"  # the mirror keeps the remote's branch under its own name
KEEP_ENV = ("HOME", "PATH", "SSH_AUTH_SOCK", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_ASKPASS",
            "SSH_ASKPASS", "TZ", "http_proxy", "https_proxy", "no_proxy")


@dataclass
class Published:
    """What `publish` did. `commit`: the sha now on the remote (the branch, or the
    conflict ref); None when the turn made no commit. `head`: the branch's head after.
    `repeated`: it was pushed before (a crash after the push), nothing was pushed now."""

    commit: str | None
    head: str
    ref: str
    conflict: bool = False
    repeated: bool = False
    attempts: int = 0
    note: str = ""


# --- the mirror ---------------------------------------------------------------------------

def mirror_path(cache: Path, name: str) -> Path:
    return Path(cache) / f"{check_name(name)}.git"


def _mirror_env(mirror: Path | None) -> dict[str, str]:
    """git's environment for the mirror: the worker's credentials (HOME for ssh keys and
    credential helpers, the ssh agent), no other GIT_* variable of ours, agentd.gitexec's
    command-line config (hooks, fsmonitor, pagers off), and only real network protocols."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.setdefault("PATH", gitexec.ENV["PATH"])
    env |= {k: v for k, v in gitexec.ENV.items() if k not in ("HOME", "XDG_CONFIG_HOME",
                                                              "PATH")}
    env["GIT_ALLOW_PROTOCOL"] = PROTOCOLS  # overrides protocol.allow=never below
    env |= gitexec.config_env()
    if mirror is not None:
        env["GIT_DIR"] = str(mirror)
    return env


def _git(mirror: Path | None, *args: str, stdin: bytes | None = None,
         env: dict[str, str] | None = None) -> gitexec.Result:
    """git on the mirror; with mirror None, on no repository (init, clone, a ref check)."""
    try:
        proc = subprocess.run(["git", *args], input=stdin, capture_output=True,
                              env=_mirror_env(mirror) | (env or {}), timeout=TIMEOUT,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AgentdError(f"git {args[0]} took longer than {TIMEOUT:.0f}s") from None
    except OSError as e:
        raise AgentdError(f"cannot run git ({e}): `apt-get install git`") from None
    return gitexec.Result(proc.returncode, proc.stdout, proc.stderr)


class Refused(AgentdError):
    """Git refused the turn's objects (fsck, here or on the remote): the same objects are
    refused again, so publishing is not retried."""


_REFUSAL = re.compile(r"error: object [0-9a-f]+: .*")


def _refused(text: str, who: str, result: gitexec.Result) -> Refused:
    """git's own refusal line (`error: object <sha>: hasDotgit: ...`, a remote's without
    its `remote: ` prefix), else its last line, as one line naming `who` refused."""
    found = _REFUSAL.search(text)
    line = found.group(0).strip() if found else result.why()
    return Refused(f"{who} refused the turn's commit: {line}")


def _must(result: gitexec.Result, what: str) -> str:
    if not result.ok:
        raise AgentdError(f"git {what} failed: {result.why()}")
    return result.out.decode("utf-8", "replace").strip()


@contextlib.contextmanager
def _locked(cache: Path, name: str) -> Iterator[Path]:
    """The mirror, under its file lock: a turn's publish and the tick's fetch of the same
    home never race on its refs."""
    mirror = mirror_path(cache, name)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with open(mirror.parent / f"{check_name(name)}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (mirror / "HEAD").is_file():
            _must(_git(None, "init", "-q", "--bare", str(mirror)), "init")
            info = mirror / "info"
            info.mkdir(exist_ok=True)
            (info / "attributes").write_text(gitexec.ATTRIBUTES, encoding="utf-8")
        _clear_locks(mirror)
        yield mirror


def _clear_locks(mirror: Path) -> None:
    """Remove the lock files a git killed with its worker left in the mirror (a ref lock
    would fail every later fetch there). Stale for sure: only the holder of the mirror's
    file lock runs git on it, and that is us."""
    locks = [mirror / n for n in ("HEAD.lock", "packed-refs.lock", "config.lock",
                                  "shallow.lock")]
    for lock in [*locks, *(mirror / "refs").rglob("*.lock")]:
        lock.unlink(missing_ok=True)


def _check_url(git_url: str, branch: str) -> None:
    if git_url.startswith("-") or not git_url.strip():
        raise AgentdError(f"bad git URL {git_url!r}")
    if branch.startswith("-") or not _git(None, "check-ref-format", TRACK + branch).ok:
        raise AgentdError(f"bad branch name {branch!r}")


def _fetch(mirror: Path, git_url: str, branch: str, ref: str | None = None) -> str | None:
    """Fetch the remote's `ref` (default: the branch) into the mirror; its sha, or None
    when the remote has no such ref."""
    ref = ref or TRACK + branch
    result = _git(mirror, "fetch", "-q", "--no-tags", "--no-recurse-submodules",
                  "--no-write-fetch-head", git_url, f"+{ref}:{ref}")
    if not result.ok:
        if b"couldn't find remote ref" in result.err:
            return None
        raise AgentdError(f"cannot fetch {git_url}: {result.why()}")
    return _must(_git(mirror, "rev-parse", "--verify", ref + "^{commit}"), "rev-parse")


def sync_mirror(cache: Path, name: str, git_url: str, branch: str) -> str:
    """Fetch the home's branch into the worker's mirror; returns its head sha."""
    _check_url(git_url, branch)
    with _locked(cache, name) as mirror:
        head = _fetch(mirror, git_url, branch)
    if head is None:
        raise AgentdError(f"{git_url} has no branch {branch!r}: push a first commit there")
    return head


def changed(cache: Path, name: str, old: str, new: str, paths: tuple[str, ...]) -> bool:
    """Whether the commits from `old` to `new` changed `paths`: a diff of two trees in the
    worker's bare mirror (no checkout; hooks, filters and textconv off). When in doubt,
    yes."""
    try:
        result = _git(mirror_path(cache, name), "diff", "--quiet", "--no-ext-diff",
                      "--no-textconv", old, new, "--", *paths)
    except AgentdError:  # git missing or hung
        return True
    return result.code != 0


def checkout(cache: Path, name: str, sha: str, dest: Path, branch: str = "main") -> Path:
    """A fresh working clone of the mirror at `sha` in `dest` (made; must not exist or be
    empty): objects hard-linked (a local clone), the tree checked out by git with
    agentd.gitexec's confined environment. Unsandboxed, as `agentd init` is: the clone
    holds nothing but committed content yet, and bubblewrap would keep the tree
    read-only. Hooks never run, filters are unset (agentd's .git/info/attributes)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise AgentdError(f"{dest} is not empty")
    with _locked(cache, name) as mirror:
        _must(_git(None, "clone", "-q", "--local", "--no-checkout", "--no-tags", "--",
                   str(mirror), str(dest)), "clone")
    dest = dest.resolve()
    gitexec.write_info(dest)
    result = gitexec.run(dest, "checkout", "-q", "-B", branch, sha, "--", sandbox=False)
    if not result.ok:
        raise AgentdError(f"cannot check out {sha[:12]} of {name}: {result.why()}")
    return dest


# --- publishing the turn's commit -----------------------------------------------------------

def _import(mirror: Path, clone: Path, base: str) -> str | None:
    """Move the clone's commits since `base` into the mirror (see the module doc); the
    clone's HEAD sha, or None when the turn committed nothing."""
    head = gitexec.run(clone, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    sha = _must(head, "rev-parse HEAD (the turn's clone)")
    if sha == base:
        return None
    pack = gitexec.run(clone, "pack-objects", "--stdout", "--revs", "--thin", "-q",
                       stdin=f"{sha}\n^{base}\n".encode())
    if not pack.ok:
        raise AgentdError(f"cannot pack the turn's commit: {pack.why()}")
    indexed = _git(mirror, "index-pack", "--stdin", "--fix-thin", "--strict", stdin=pack.out)
    if not indexed.ok:
        raise _refused(indexed.err.decode("utf-8", "replace"), "git (index-pack --strict)",
                       indexed)
    if not _git(mirror, "merge-base", "--is-ancestor", base, sha).ok:
        raise AgentdError(f"the turn's commit {sha[:12]} does not descend from {base[:12]}")
    return sha


def _message(mirror: Path, sha: str) -> tuple[str, dict[str, str]]:
    """A commit's message and the environment that keeps its author (name, mail, date)."""
    raw = _git(mirror, "cat-file", "commit", sha).out.decode("utf-8", "surrogateescape")
    header, _, message = raw.partition("\n\n")
    env: dict[str, str] = {}
    for line in header.split("\n"):
        if line.startswith("author "):
            who, _, when = line[7:].rpartition("> ")
            name, _, mail = who.partition(" <")
            env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": mail, "GIT_AUTHOR_DATE": when}
    return message, env


def _commit(mirror: Path, tree: str, parent: str, like: str) -> str:
    """A commit of `tree` on `parent` with the message and author of `like`: the turn's
    one commit (squashed, or rebased onto what the owner pushed), made in the bare mirror."""
    message, env = _message(mirror, like)
    return _must(_git(mirror, "commit-tree", tree, "-p", parent, stdin=message.encode(
        "utf-8", "surrogateescape"), env=env), "commit-tree")


def _one_commit(mirror: Path, sha: str, base: str, marker: str) -> str:
    """The turn as one commit on `base`: itself, or its commits squashed under the
    message of the one that carries the run's trailer (a turn may also commit manual edits
    or a held-back note)."""
    shas = _must(_git(mirror, "rev-list", f"{base}..{sha}"), "rev-list").split()
    if len(shas) == 1:
        return sha
    like = next((s for s in shas if _marked(mirror, s, marker)), sha)
    return _commit(mirror, f"{sha}^{{tree}}", base, like)


def _marked(mirror: Path, sha: str, marker: str) -> bool:
    return _carries(_message(mirror, sha)[0], marker)


def _carries(message: str, marker: str) -> bool:
    """Whether a commit message has the trailer `Agentd-Run: <marker>`."""
    return f"\nAgentd-Run: {marker}\n" in "\n" + message


def _pushed_before(mirror: Path, head: str, base: str, marker: str) -> str | None:
    """The commit carrying `Agentd-Run: <marker>` among those the remote gained since
    `base` (bounded: only those), or None."""
    out = _git(mirror, "log", "--format=%x1e%H%x1f%B", f"{base}..{head}").out
    for record in out.decode("utf-8", "surrogateescape").split("\x1e")[1:]:
        sha, _, message = record.partition("\x1f")
        if _carries(message, marker):
            return sha
    return None


def _push(mirror: Path, git_url: str, sha: str, ref: str) -> bool:
    """A plain push (never forced): True when the ref now is `sha`, False when the remote
    rejected it as not a fast-forward."""
    result = _git(mirror, "push", "-q", "--porcelain", "--no-verify", git_url,
                  f"{sha}:{ref}")
    if result.ok:
        _must(_git(mirror, "update-ref", ref, sha), "update-ref")
        return True
    text = (result.out + result.err).decode("utf-8", "replace")
    if "[rejected]" in text or "fetch first" in text or "non-fast-forward" in text:
        return False
    if "unpacker error" in text or _REFUSAL.search(text):  # its fsck: not a race
        raise _refused(text, git_url, result)
    raise AgentdError(f"cannot push to {git_url}: {result.why()}")


def conflict_ref(marker: str) -> str:
    """`refs/heads/agentd/conflicts/<marker>`, the marker made a valid ref name."""
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in marker).strip(".-")
    return CONFLICTS + (safe or "run")


def publish(cache: Path, name: str, git_url: str, branch: str, clone: Path, base: str,
            run_marker: str) -> Published:
    """Push the turn's one commit (on `base`, made in `clone`) fast-forward to the branch.

    Rejected because the owner pushed meanwhile: fetch, rebase the commit onto the new
    head (`merge-tree --write-tree` + `commit-tree`: the mirror stays bare), push again, up
    to ATTEMPTS times. A commit with `Agentd-Run: <run_marker>` already on the branch
    since `base` was pushed before a crash: it is returned, nothing is pushed twice. A
    conflict (or a branch rewritten under the turn, or one that never stops moving) is
    never lost and never forced: the commit goes to `agentd/conflicts/<marker>`."""
    _check_url(git_url, branch)
    ref = TRACK + branch
    with _locked(cache, name) as mirror:
        sha = _import(mirror, Path(clone), base)
        turn = _one_commit(mirror, sha, base, run_marker) if sha else ""
        for attempt in range(1, ATTEMPTS + 1):
            head = _fetch(mirror, git_url, branch) or base
            done = _pushed_before(mirror, head, base, run_marker)
            if done or not turn:
                return Published(done, head, ref, repeated=done is not None, attempts=attempt)
            if head == base:
                candidate = turn
            elif not _git(mirror, "merge-base", "--is-ancestor", base, head).ok:
                return _conflicted(mirror, git_url, turn, head, run_marker, attempt,
                                   f"{branch} was rewritten since {base[:12]}")
            else:
                merged = _git(mirror, "merge-tree", "--write-tree", "--no-messages", head, turn)
                if merged.code == 1:
                    return _conflicted(mirror, git_url, turn, head, run_marker, attempt,
                                       f"the turn conflicts with {branch} at {head[:12]}")
                tree = _must(merged, "merge-tree").split("\n")[0]
                candidate = _commit(mirror, tree, head, turn)
            if _push(mirror, git_url, candidate, ref):
                _git(mirror, "gc", "--auto", "--quiet")  # each publish adds a pack
                return Published(candidate, candidate, ref, attempts=attempt)
        return _conflicted(mirror, git_url, turn, head, run_marker, ATTEMPTS,
                           f"{branch} kept moving ({ATTEMPTS} pushes rejected)")


def _conflicted(mirror: Path, git_url: str, turn: str, head: str, marker: str,
                attempt: int, why: str) -> Published:
    """The turn's commit (on its own base) pushed to its conflict branch; a rejection
    there means a crashed attempt pushed it already: its commit is returned."""
    ref = conflict_ref(marker)
    if not _push(mirror, git_url, turn, ref):
        there = _fetch(mirror, git_url, "", ref)
        if there is None or not _marked(mirror, there, marker):
            raise AgentdError(f"cannot push the conflicting turn to {ref}: it holds "
                              "another commit")
        turn = there
    return Published(turn, head, ref, conflict=True, attempts=attempt,
                     note=f"{why}: the turn's commit is on {ref.removeprefix('refs/heads/')}"
                     ", merge it by hand")
