"""Git for the home: a commit per turn, history, show and undo.

Every git command goes through agentd.gitexec (a confined environment, bubblewrap), and
every changed path through agentd.gitscreen (what a commit may take) first. Here:

- one commit per call, in one sandbox launch (COMMIT_SCRIPT): stage exactly the screened
  paths, commit unless nothing is staged. When git still refuses a path, the paths are added
  in halves until the offenders are found; they are held back and named, never fatal;
- agentd's `.git/info/exclude` and `.git/info/attributes` are written and stale locks
  left by a killed git are cleared before anything that writes (so at the start of every
  turn, whatever triggered it);
- git work on a home is serialised by a thread lock plus a file lock (`.agentd/git.lock`),
  for the CLI and the daemon side by side;
- hooks never run (hooksPath=/dev/null and --no-verify): a planted hook must not run on
  the host.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agentd import gitexec, gitundo
from agentd.errors import AgentdError
from agentd.gitscreen import (
    REFUSED,
    UNREADABLE,
    Changes,
    Limits,
    Scan,
    display,
    held_notes,
    scan_secrets,
    screen,
)
from agentd.home import open_private

__all__ = ["Changes", "Entry", "Scan", "clear_stale_locks", "commit", "display", "held_notes",
           "init_repo", "log", "pending", "show", "subject_line", "undo"]

TRAILER = re.compile(r"^(Agentd-[A-Za-z]+): (.*)$", re.M)
UNOPENED = re.compile(rb"^warning: could not open directory '(.*)': Permission denied$", re.M)
# The trailer of a turn's commit that holds only its day-log entry (the turn changed nothing
# else): committed so the home is clean after every turn, skipped by a bare `agentd undo`.
DAY_LOG_ONLY = {"Agentd-Changes": "day log only"}
BODY_FILES = 1000  # files listed in a commit body
MSG_FILE = "AGENTD_COMMIT_MSG"  # in .git: the message for the commit script
BISECT_RUNS = 100  # git launches spent finding paths git refuses, per commit
GC_LOOSE_IN_17 = 27  # git's gc.auto default (6700) / 256 directories, rounded up

# Stage exactly the listed paths (NUL-separated on stdin; "$2" = add, since an empty list
# would mean "everything" to `git add -A`), then commit with the message in "$1": one
# sandbox launch for the whole commit.
COMMIT_SCRIPT = """\
if [ "$2" = add ]; then git add -A --pathspec-from-file=- --pathspec-file-nul || exit 90; fi
exec git commit -q --no-verify --no-gpg-sign --cleanup=verbatim -F "$1"
"""
ADD_FAILED = 90
SYSTEMIC = ("index.lock", "unable to write new index", "not a git repository",
            "No space left")

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    """Serialise git work on a home: a thread lock, plus a file lock for other processes."""
    with _locks_guard:
        lock = _locks.setdefault(home.resolve(), threading.Lock())
    with lock, open(open_private(home / ".agentd" / "git.lock"), "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextmanager
def _repo(home: Path, prepare: bool = True) -> Iterator[None]:
    """The home's repository, for one operation under its git lock; `prepare`: agentd's
    info files written and stale locks cleared first (before anything that writes)."""
    dotgit = home / ".git"
    if dotgit.is_symlink() or not dotgit.is_dir():
        raise AgentdError(f"{home} is not a git repository: run `git init` there, or "
                          "create a new home with `agentd init`")
    with _home_lock(home):
        if prepare:
            gitexec.write_info(home)
            gitexec.clear_stale_locks(home)
        yield


def clear_stale_locks(home: Path, min_age: float = gitexec.STALE_LOCK_AGE) -> list[str]:
    """Remove the locks a killed git left (see agentd.gitexec.clear_stale_locks), under the
    home's git lock; returns what was removed."""
    with _repo(home, prepare=False):
        return gitexec.clear_stale_locks(home, min_age)


def _git(home: Path, *args: str, stdin: bytes | None = None) -> gitexec.Result:
    return gitexec.run(home, *args, stdin=stdin)


def _must(result: gitexec.Result, what: str) -> bytes:
    if not result.ok:
        raise AgentdError(f"git {what} failed: {result.why()}")
    return result.out


def init_repo(path: Path, message: str) -> str:
    """`git init` plus a first commit of everything not ignored. Returns the commit sha.
    Unsandboxed, as `agentd init` runs it: only agentd's own templates are there yet."""
    _must(gitexec.run(path, "init", "-q", "-b", "main", sandbox=False), "init")
    gitexec.write_info(path)
    sha = _committed(path, _commit_index(path, message + "\n", ["."], sandbox=False))
    if sha is None:
        raise AgentdError(f"git commit failed in {path}: nothing to commit")
    return sha


def _status(home: Path) -> tuple[list[str], list[str]]:
    """Changed paths, from `git status` (untracked files one by one; a nested repository as
    `dir/`; submodules never looked into), and the folders git could not open (made
    unreadable by the agent: without CAP_DAC_OVERRIDE git only warns and skips them)."""
    result = _git(home, "status", "--porcelain", "-z", "--untracked-files=all",
                  "--no-renames", "--ignore-submodules=all")
    if not result.ok:
        raise AgentdError(f"git status failed in {home}: {result.why()}; is it a git "
                          "repository? (`agentd init` makes one)")
    entries = result.out.decode("utf-8", "surrogateescape").split("\0")
    unopened = [m.decode("utf-8", "surrogateescape").rstrip("/") + "/"
                for m in UNOPENED.findall(result.err)]
    return sorted({e[3:] for e in entries if len(e) > 3}), unopened


def pending(home: Path, scan: Scan | None = None) -> Changes:
    """What a commit would take now, and what is held back (secrets, nested repositories,
    sizes, names)."""
    with _repo(home):
        paths, unopened = _status(home)
        ok, held = screen(home, paths, Limits.of(home))
        held |= dict.fromkeys(unopened, UNREADABLE)
        changes = Changes(held=held)
        scan_secrets(home, ok, scan, changes)
        return changes


def subject_line(task: str, limit: int = 72) -> str:
    """The task's first non-blank line, as one escaped line (display()) of at most `limit`
    characters. Lines end at "\\n" only: a U+2028 or U+0085 inside the task becomes a space
    like any other whitespace, rather than cutting the subject short."""
    first = next((line for line in task.split("\n") if line.strip()), "agentd turn")
    first = display(" ".join(first.split()))
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _add(home: Path, paths: list[str]) -> gitexec.Result:
    return _git(home, "add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul",
                stdin=_nul(paths))


def _nul(paths: list[str]) -> bytes:
    return b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in paths)


def _systemic(result: gitexec.Result) -> None:
    """A failure that is not about one path (a lock, a full disk) is raised, not bisected."""
    err = result.err.decode("utf-8", errors="replace")
    if any(s in err for s in SYSTEMIC):
        raise AgentdError(f"git add failed: {result.why()}")


def _refused(home: Path, paths: list[str], budget: list[int]) -> dict[str, str]:
    """The paths git refuses to add, found by adding halves (what succeeds stays staged).
    A path that no longer exists anywhere is simply not a change. `budget` bounds the git
    launches (a turn could plant thousands of offenders): past it, a failing group is held
    back whole."""
    budget[0] -= 1
    result = _add(home, paths)
    if result.ok:
        return {}
    _systemic(result)
    if len(paths) == 1:
        return {} if b"did not match any files" in result.err else {paths[0]: REFUSED}
    if budget[0] <= 0:
        return dict.fromkeys(paths, REFUSED)
    mid = len(paths) // 2
    return _refused(home, paths[:mid], budget) | _refused(home, paths[mid:], budget)


def _message(subject: str, files: list[str], notes: list[str], trailers: dict[str, str]) -> str:
    shown = [f"- {display(f)}" for f in files[:BODY_FILES]]
    if len(files) > BODY_FILES:
        shown.append(f"- (+{len(files) - BODY_FILES} more)")
    body = "\n".join(shown + (["", *notes] if notes else []))
    tail = "\n".join(f"{k}: {display(v)}" for k, v in trailers.items())
    return f"{subject_line(subject)}\n\n{body}\n\n{tail}\n"


def _commit_index(home: Path, message: str, paths: list[str],
                  sandbox: bool = True) -> gitexec.Result:
    """Run the commit script: stage `paths`, commit unless nothing is staged. The message
    goes through a file in .git, which the agent cannot write."""
    msg = home / ".git" / MSG_FILE
    fd = os.open(msg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(message)
    try:
        return gitexec.run_command(
            home, ["sh", "-c", COMMIT_SCRIPT, "sh", str(msg), "add" if paths else "-"],
            stdin=_nul(paths), sandbox=sandbox)
    finally:
        msg.unlink(missing_ok=True)


def commit(home: Path, files: list[str], subject: str, trailers: dict[str, str],
           note: str = "", held: dict[str, str] | None = None) -> str | None:
    """Commit exactly `files` (added, changed or deleted). Returns the sha, or None when
    they hold no change.

    The files are screened again (callers may pass paths of their own); whatever is held
    back here, or refused by git, is named in the body and added to `held` when given, so
    the caller can note it in the day log. The body lists the files (and `note`); trailers
    (`Agentd-Run`, `Agentd-Model`, `Agentd-Trigger`, …) make history machine-readable.
    """
    if not files:
        return None
    with _repo(home):
        ok, late = screen(home, files, Limits.of(home))
        result = _commit_index(home, _message(subject, ok, _notes(note, late), trailers),
                               ok) if ok else None
        if result is not None and result.code == ADD_FAILED:
            _systemic(result)
            late |= _refused(home, ok, [BISECT_RUNS])
            ok = [f for f in ok if f not in late]
            result = _commit_index(home, _message(subject, ok, _notes(note, late), trailers),
                                   ok) if ok else None
        if held is not None:
            held.update(late)
        return _committed(home, result) if result is not None else None


def _committed(home: Path, result: gitexec.Result) -> str | None:
    """The new commit's sha; None when nothing was staged ("nothing to commit", or "no
    changes added to commit": git's wording under LC_ALL=C)."""
    if result.code == 1 and b"to commit" in result.out:
        return None
    _must(result, "commit")
    if _gc_due(home):
        _git(home, "gc", "--auto", "--quiet")
    return _head(home)


def _gc_due(home: Path) -> bool:
    """git's own estimate (`gc.auto`, 6700 loose objects: over 27 in objects/17), without
    launching `git maintenance` after every commit as `git commit` would."""
    try:
        return len(os.listdir(home / ".git" / "objects" / "17")) > GC_LOOSE_IN_17
    except FileNotFoundError:
        return False


def _head(home: Path) -> str:
    """HEAD's sha, read from .git (which only agentd and the owner write): one git launch
    less per commit. A commit always leaves its branch as a loose ref."""
    dotgit = home / ".git"
    head = (dotgit / "HEAD").read_text(encoding="utf-8").strip()
    if not head.startswith("ref: "):
        return head
    return (dotgit / head[5:]).read_text(encoding="utf-8").strip()


def _notes(note: str, late: dict[str, str]) -> list[str]:
    return ([note] if note else []) + held_notes(late)


@dataclass
class Entry:
    sha: str
    when: datetime
    subject: str
    trailers: dict[str, str]
    files: list[str]


def _commits(home: Path, n: int, files: bool) -> list[tuple[list[str], list[str]]]:
    """(sha, ISO date, parents, message) fields and changed files of the last `n` commits.
    Fields are split on \\x1e/\\x1f, which agentd's messages never hold (display())."""
    args = ["log", f"-n{n}", "--no-renames", "--no-ext-diff", "--no-textconv",
            "--format=%x1e%H%x1f%cI%x1f%P%x1f%B%x1f"]
    result = _git(home, *args, *(["-z", "--name-only"] if files else []))
    if not result.ok:
        if b"does not have any commits" in result.err:
            return []
        raise AgentdError(f"git log failed in {home}: {result.why()}")
    out = []
    for record in result.out.decode("utf-8", "surrogateescape").split("\x1e")[1:]:
        *fields, names = record.split("\x1f")
        names = names.removeprefix("\0").removeprefix("\n")
        out.append((fields, [display(x) for x in names.split("\0") if x]))
    return out


def log(home: Path, n: int = 20) -> list[Entry]:
    """The last `n` commits, newest first."""
    with _repo(home, prepare=False):
        commits = _commits(home, n, files=True)
    return [Entry(sha, datetime.fromisoformat(when), display(msg.split("\n", 1)[0]),
                  dict(TRAILER.findall(msg)), sorted(files))
            for (sha, when, _parents, msg), files in commits]


def _day_log_only(trailers: dict[str, str]) -> bool:
    return all(trailers.get(k) == v for k, v in DAY_LOG_ONLY.items())


def _find(home: Path, ref: str | None) -> tuple[str, list[str], str]:
    """(sha, parents, message) of a commit by run id (Agentd-Run trailer) or sha prefix;
    None → the last agent turn."""
    for (sha, _when, parents, msg), _files in _commits(home, 1000, files=False):
        trailers = dict(TRAILER.findall(msg))
        if ref is None:
            turn = trailers.get("Agentd-Trigger") not in ("manual", "undo")
            if trailers.get("Agentd-Run") and turn and not _day_log_only(trailers):
                return sha, parents.split(), msg
        elif trailers.get("Agentd-Run") == ref or (len(ref) >= 4 and sha.startswith(ref)):
            return sha, parents.split(), msg
    what = f"run or commit {ref!r}" if ref else "agent turn to undo"
    raise AgentdError(f"no {what} in this home's history: see `agentd history`")


def show(home: Path, ref: str | None) -> str:
    """The commit of a run, with its diff."""
    with _repo(home, prepare=False):
        sha, _, _ = _find(home, ref)
        return _must(_git(home, "show", "--stat", "--patch", "--no-color", "--no-ext-diff",
                          "--no-textconv", sha), "show").decode("utf-8", "replace")


def undo(home: Path, ref: str | None, run_id: str,
         keep: str = "memory/daily") -> tuple[str, str]:
    """Revert a turn's commit as a new commit (see agentd.gitundo), leaving `keep` (the
    append-only day log) alone: undoing a change must not erase the record that it
    happened. On a conflict nothing changes.

    Returns (new sha, the subject of the undone commit).
    """
    with _repo(home):
        sha, parents, msg = _find(home, ref)
        if not parents:
            raise AgentdError("that is the home's first commit; it cannot be undone")
        files = gitundo.changed_files(home, sha, keep)
        if not files:
            raise AgentdError(f"{sha[:8]} changed only the day log: nothing to undo")
        gitundo.check_clean(home, _status(home)[0], keep, files)
        gitundo.apply_reverse(home, sha, files)
        gitundo.write_worktree(home, files)
        subject = display(msg.split("\n", 1)[0])
        message = (f"{subject_line('Undo: ' + subject)}\n\nReverts {sha}.\n\n"
                   f"Agentd-Run: {display(run_id)}\nAgentd-Trigger: undo\n")
        new = _committed(home, _commit_index(home, message, []))
        if new is None:
            raise AgentdError(f"undoing {sha[:8]} changed nothing")
        return new, subject
