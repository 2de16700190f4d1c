"""Git for the home, via GitPython: a commit per turn, history, show and undo.

Safety rules, all enforced here:
- hooks never run (a hook the agent planted in .git/hooks must not run on the host):
  `skip_hooks=True` on commits, and git commands run with hooksPath and fsmonitor off;
- GitPython keeps `git cat-file` helpers alive while a Repo is open and is not
  thread-safe, so every operation opens the repository, works and closes it, under a
  per-home lock (a thread lock plus a file lock, for the CLI and the daemon side by side);
- a file whose content matches a secret is never committed: it stays on disk, unstaged,
  and is reported.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agentd.errors import AgentdError

AUTHOR_NAME = "agentd"
AUTHOR_EMAIL = "agentd@localhost"
SCAN_LIMIT = 2_000_000  # bytes of a changed file scanned for secrets
# Git reads these as extra `-c` settings: no hooks, no fsmonitor command, no pager.
SAFE_GIT_ENV = {"GIT_CONFIG_COUNT": "3",
                "GIT_CONFIG_KEY_0": "core.hooksPath", "GIT_CONFIG_VALUE_0": "/dev/null",
                "GIT_CONFIG_KEY_1": "core.fsmonitor", "GIT_CONFIG_VALUE_1": "false",
                "GIT_CONFIG_KEY_2": "core.pager", "GIT_CONFIG_VALUE_2": "cat",
                "GIT_TERMINAL_PROMPT": "0"}
TRAILER = re.compile(r"^(Agentd-[A-Za-z]+): (.*)$", re.M)

Scan = Callable[[str], list[str]]
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    """Serialise git work on a home: a thread lock, plus a file lock for other processes."""
    with _locks_guard:
        lock = _locks.setdefault(home.resolve(), threading.Lock())
    lock_file = home / ".agentd" / "git.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock, lock_file.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextmanager
def open_repo(home: Path) -> Iterator[Any]:
    """The home's repository, opened for one operation under the home's git lock."""
    from git import InvalidGitRepositoryError, NoSuchPathError, Repo

    with _home_lock(home):
        try:
            repo = Repo(home)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise AgentdError(f"{home} is not a git repository: run `git init` there, or "
                              "create a new home with `agentd init`") from None
        try:
            repo.git.update_environment(**SAFE_GIT_ENV)
            yield repo
        finally:
            repo.close()


def _actor() -> Any:
    from git import Actor

    return Actor(AUTHOR_NAME, AUTHOR_EMAIL)


def init_repo(path: Path, message: str) -> str:
    """`git init` plus a first commit of everything not ignored. Returns the commit sha."""
    from git import Repo

    with Repo.init(path, initial_branch="main") as repo:
        repo.git.update_environment(**SAFE_GIT_ENV)
        repo.git.add("-A")
        commit = repo.index.commit(message, author=_actor(), committer=_actor(),
                                   skip_hooks=True)
        return commit.hexsha


@dataclass
class Changes:
    """Paths changed in the home since the last commit, and those held back for secrets."""

    files: list[str] = field(default_factory=list)
    blocked: dict[str, list[str]] = field(default_factory=dict)  # path -> secret names


def _changed_paths(home: Path) -> list[str]:
    """`git status` straight from the git binary: it runs twice per turn, and importing
    GitPython for it would cost more than the check itself (~40 ms against ~2 ms)."""
    proc = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all",
                           "--no-renames"], cwd=home, capture_output=True,
                          env={**os.environ, **SAFE_GIT_ENV})
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AgentdError(f"git status failed in {home}: {reason[-1] if reason else '?'}; "
                          "is it a git repository? (`agentd init` makes one)")
    entries = proc.stdout.decode(errors="surrogateescape").split("\0")
    return sorted({e[3:] for e in entries if len(e) > 3})


def _scan(home: Path, paths: list[str], scan: Scan | None) -> Changes:
    changes = Changes()
    for rel in paths:
        hits: list[str] = []
        path = home / rel
        if scan and path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                hits = scan(f.read(SCAN_LIMIT).decode("utf-8", errors="replace"))
        if hits:
            changes.blocked[rel] = sorted(set(hits))
        else:
            changes.files.append(rel)
    return changes


def pending(home: Path, scan: Scan | None = None) -> Changes:
    """What a commit would take now, and what the secret scan holds back."""
    with _home_lock(home):
        return _scan(home, _changed_paths(home), scan)


def subject_line(task: str, limit: int = 72) -> str:
    first = next((line for line in task.splitlines() if line.strip()), "agentd turn")
    first = " ".join(first.split())
    return first if len(first) <= limit else first[: limit - 1] + "…"


def commit(home: Path, files: list[str], subject: str, trailers: dict[str, str],
           note: str = "") -> str | None:
    """Commit exactly `files` (added, changed or deleted). Returns the sha, or None when
    they hold no change.

    The body lists the files (and `note`); trailers (`Agentd-Run`, `Agentd-Model`,
    `Agentd-Trigger`, …) make history machine-readable.
    """
    if not files:
        return None
    with open_repo(home) as repo:
        repo.git.add("-A", "--", *files)
        staged = repo.git.diff("--cached", "--name-only").splitlines()
        if not staged:
            return None
        body = "\n".join(f"- {f}" for f in staged) + (f"\n\n{note}" if note else "")
        tail = "\n".join(f"{k}: {v}" for k, v in trailers.items())
        message = f"{subject_line(subject)}\n\n{body}\n\n{tail}\n"
        return repo.index.commit(message, author=_actor(), committer=_actor(),
                                 skip_hooks=True).hexsha


@dataclass
class Entry:
    sha: str
    when: datetime
    subject: str
    trailers: dict[str, str]
    files: list[str]


def log(home: Path, n: int = 20) -> list[Entry]:
    """The last `n` commits, newest first."""
    entries = []
    with open_repo(home) as repo:
        if not repo.head.is_valid():
            return []
        for c in repo.iter_commits(max_count=n):
            msg = str(c.message)
            entries.append(Entry(c.hexsha, c.committed_datetime, msg.splitlines()[0] if msg
                                 else "", dict(TRAILER.findall(msg)),
                                 sorted(str(p) for p in c.stats.files)))
    return entries


def _find(repo: Any, ref: str | None) -> Any:
    """A commit by run id (Agentd-Run trailer) or sha prefix; None → the last agent turn."""
    for c in repo.iter_commits(max_count=1000):
        trailers = dict(TRAILER.findall(str(c.message)))
        if ref is None:
            if trailers.get("Agentd-Run") and trailers.get("Agentd-Trigger") not in (
                    "manual", "undo"):
                return c
        elif trailers.get("Agentd-Run") == ref or (len(ref) >= 4 and c.hexsha.startswith(ref)):
            return c
    what = f"run or commit {ref!r}" if ref else "agent turn to undo"
    raise AgentdError(f"no {what} in this home's history: see `agentd history`")


def show(home: Path, ref: str | None) -> str:
    """The commit of a run, with its diff."""
    with open_repo(home) as repo:
        c = _find(repo, ref)
        return str(repo.git.show("--stat", "--patch", "--no-color", c.hexsha))


def undo(home: Path, ref: str | None, run_id: str,
         keep: str = "memory/daily") -> tuple[str, str]:
    """Revert a turn's commit as a new commit, leaving `keep` (the append-only day log)
    alone: undoing a change must not erase the record that it happened. The reverse patch
    is applied atomically, so on a conflict nothing changes.

    Returns (new sha, the subject of the undone commit).
    """
    from git import GitCommandError

    with open_repo(home) as repo:
        target = _find(repo, ref)
        if [p for p in _changed_paths(home) if not p.startswith(keep + "/")]:
            raise AgentdError("the home has uncommitted changes: run a turn or commit them "
                              "first, then undo")
        if not target.parents:
            raise AgentdError("that is the home's first commit; it cannot be undone")
        scope = ["--", ".", f":(exclude){keep}"]
        files = repo.git.diff("--name-only", target.hexsha + "^", target.hexsha, *scope)
        if not files:
            raise AgentdError(f"{target.hexsha[:8]} changed only the day log: nothing to undo")
        patch = repo.git.diff("--binary", target.hexsha, target.hexsha + "^", *scope,
                              strip_newline_in_stdout=False)
        patch_file = home / ".agentd" / "undo.patch"
        patch_file.write_text(patch, encoding="utf-8", errors="surrogateescape")
        try:
            repo.git.apply("--index", str(patch_file))
        except GitCommandError:
            raise AgentdError(f"cannot undo {target.hexsha[:8]}: later changes touch the "
                              f"same lines ({', '.join(files.splitlines())}); nothing "
                              "changed") from None
        finally:
            patch_file.unlink(missing_ok=True)
        subject = str(target.message).splitlines()[0]
        msg = (f"{subject_line('Undo: ' + subject)}\n\nReverts {target.hexsha}.\n\n"
               f"Agentd-Run: {run_id}\nAgentd-Trigger: undo\n")
        sha = repo.index.commit(msg, author=_actor(), committer=_actor(),
                                skip_hooks=True).hexsha
        return sha, subject
