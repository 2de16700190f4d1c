"""What of the home a commit may take. The tree is written by the agent, so every changed
path is screened before git sees it:

- a folder holding a `.git` (directory, file or symlink) is a nested repository: never
  entered, never staged as a gitlink, held back and named once (`dir/`);
- a file over `[git] max_file_mb`, or past `max_commit_mb` for one commit, a file git
  could not read (it runs without CAP_DAC_OVERRIDE in the sandbox), anything but a
  regular file or a symlink, and a name git refuses (`.GIT`, `git~1`, `.git.`, HFS/NTFS
  spellings) are held back with a note, never fatal (agentd.history finds any other path
  git refuses by adding in halves);
- agentd's own paths (`.agentd/`, inbox files) are never committed, and `.env*`/`*.pem`
  are held back, whatever `.gitignore` says: a `.gitignore` can negate
  `.git/info/exclude`, so the exclude file keeps `git status` quiet and this enforces it;
- a file whose content matches a secret is held back; it stays on disk, unstaged (files
  are read for the scan through agentd.homefs, like all of agentd's reads of the home).

Names are shown escaped (`display`): control characters and undecodable bytes never reach
a commit message, the day log or a terminal as themselves.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from agentd import gitexec
from agentd.homefs import Root
from agentd.oneline import escape

SCAN_LIMIT = 2_000_000  # bytes of a changed file scanned for secrets
PRIVATE_NAMES = (".env*", "*.pem")
HFS_IGNORED = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")
GIT_NAME = re.compile(r"(?i)^(\.git|git~1)[ .]*(:.*)?$")
GITMODULES = re.compile(r"(?i)^(\.gitmodules|gitmod~\d+)[ .]*(:.*)?$")  # refused as symlinks
NOTE_NAMES = 50

# Why a path is held back (the note's wording); sizes are added where they apply.
NESTED = "a nested git repository"
REFUSED = "a path git refuses"
UNREADABLE = "unreadable"
NOT_A_FILE = "not a regular file"
PRIVATE = "private by name: .env*, *.pem"

Scan = Callable[[str], list[str]]


def display(path: str) -> str:
    """A path as it may be shown: every control character, newline and undecodable byte
    escaped (agentd.oneline's one spelling), so a name can't forge a line in a commit
    message or the day log."""
    return escape(path)


@dataclass
class Changes:
    """Paths changed in the home since the last commit: those a commit may take (`files`),
    those held back for secrets (`blocked`: path -> secret names), and those held back for
    any other reason (`held`: path -> why, e.g. "a nested git repository"; a nested
    repository is named once, with a trailing slash)."""

    files: list[str] = field(default_factory=list)
    blocked: dict[str, list[str]] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """One line per reason, for the commit body and the day log."""
        lines = []
        if self.blocked:
            lines.append("Not committed (secrets found): "
                         + ", ".join(display(p) for p in self.blocked))
        return lines + held_notes(self.held)


def held_notes(held: dict[str, str]) -> list[str]:
    """`Not committed (<why>): a, b` lines, one per reason, each naming at most NOTE_NAMES
    paths (a turn can make a million)."""
    by_why: dict[str, list[str]] = {}
    for path, why in held.items():
        by_why.setdefault(why, []).append(display(path))
    return [f"Not committed ({why}): {', '.join(paths[:NOTE_NAMES])}"
            + (f" (+{len(paths) - NOTE_NAMES} more)" if len(paths) > NOTE_NAMES else "")
            for why, paths in by_why.items()]


def excluded(rel: str) -> bool:
    """agentd's own paths: never committed and not worth a note."""
    return (rel == ".agentd" or rel.startswith(".agentd/")
            or (rel.startswith("inbox/") and rel != "inbox/.gitkeep"))


def _name_problem(rel: str) -> str | None:
    parts = rel.rstrip("/").split("/")
    if any(GIT_NAME.match(HFS_IGNORED.sub("", p)) for p in parts):
        return REFUSED
    if any(fnmatch(p, pat) for p in parts for pat in PRIVATE_NAMES):
        return PRIVATE
    return None


def _symlinked_gitmodules(home: Path, rel: str) -> bool:
    """git refuses a symlink named .gitmodules (in any spelling); found here, it costs no
    bisection (agentd.history) at every turn while it stays."""
    name = rel.rsplit("/", 1)[-1]
    return bool(GITMODULES.match(HFS_IGNORED.sub("", name))) and os.path.islink(home / rel)


def _nested_root(home: Path, rel: str, seen: dict[str, bool]) -> str | None:
    """The nested repository `rel` is in (a folder holding `.git`), as `dir/`, or None."""
    if rel.endswith("/"):
        return rel
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/".join(parts[:i])
        if folder not in seen:
            seen[folder] = os.path.lexists(home / folder / ".git")
        if seen[folder]:
            return folder + "/"
    return None


def _readable(st: os.stat_result) -> bool:
    """Whether git can read the file without CAP_DAC_OVERRIDE (it has none in the sandbox,
    as root or not): the permission bits for our uid, group or others."""
    if st.st_uid == os.geteuid():
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


@dataclass
class Limits:
    """`[git]` sizes in bytes, and whether git reads files as we would (it has no
    CAP_DAC_OVERRIDE unless it runs unsandboxed as root)."""

    max_file: int
    max_commit: int
    check_read: bool  # git runs without CAP_DAC_OVERRIDE

    @classmethod
    def of(cls, home: Path) -> Limits:
        g = gitexec.home_settings(home).git
        sandboxed = gitexec.bwrap_for(home) is not None
        return cls(g.max_file_mb * 1024 * 1024, g.max_commit_mb * 1024 * 1024,
                   sandboxed or os.geteuid() != 0)


def screen(home: Path, paths: list[str], limits: Limits) -> tuple[list[str], dict[str, str]]:
    """Split changed paths into those git may take and those held back (path -> why)."""
    ok: list[str] = []
    held: dict[str, str] = {}
    seen: dict[str, bool] = {}
    total = 0
    for rel in paths:
        if excluded(rel):
            continue
        nested = _nested_root(home, rel, seen)
        if nested:
            held[nested] = NESTED
            continue
        why, size = _name_problem(rel), 0
        if why is None:
            why, size = _file_problem(home / rel, limits, total)
        if why is None and _symlinked_gitmodules(home, rel):
            why = REFUSED
        if why:
            held[rel] = why
        else:
            ok.append(rel)
            total += size
    return ok, held


def _file_problem(path: Path, limits: Limits, total: int) -> tuple[str | None, int]:
    """Why git must not take this file (size, type, permissions) or None, and its size."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, 0  # a deletion
    if stat.S_ISLNK(st.st_mode):
        return None, 0
    if not stat.S_ISREG(st.st_mode):
        return NOT_A_FILE, 0
    if st.st_size > limits.max_file:
        return f"over the {limits.max_file // 2**20} MB file limit", 0
    if limits.check_read and not _readable(st):
        return UNREADABLE, 0
    if total + st.st_size > limits.max_commit:
        return f"over the {limits.max_commit // 2**20} MB limit per commit", 0
    return None, st.st_size


def scan_secrets(home: Path, paths: list[str], scan: Scan | None, changes: Changes) -> None:
    """Sort screened paths into `changes.files` and, when their content matches a secret,
    `changes.blocked`. Files are read through agentd.homefs (a regular file beneath the
    home, no symlink followed, at most SCAN_LIMIT bytes): a symlink is committed as the
    link it is, and its target is never read."""
    if scan is None:
        changes.files += paths
        return
    with Root(home) as root:
        for rel in paths:
            try:
                text = root.read_bytes(rel, SCAN_LIMIT).decode("utf-8", errors="replace")
            except OSError:  # gone, a symlink, not a regular file
                text = None
            hits = scan(text) if text is not None else []
            if hits:
                changes.blocked[rel] = sorted(set(hits))
            else:
                changes.files.append(rel)
