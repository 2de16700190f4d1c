"""The day log: `memory/daily/YYYY-MM-DD.md`, one entry appended by the runtime after every
turn, with no model call. Deterministic memory: what happened is written down even when the
model forgets to, and the next turn sees today's and yesterday's entries in its prompt.

The log is in the agent's writable home, so it is appended through agentd.homefs: a
planted symlink, FIFO or hard link at its name is replaced, never written through, and the
entry says so. Every later trusted prompt quotes it, so an entry never lets a turn's text
start a line: the owner's text is one-lined, and a stranger's (an untrusted or readonly
turn's task, answer and file names) is quoted, escaped and labelled with where it came from.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from agentd.homefs import Root
from agentd.oneline import escape, one_line, quoted

DAILY = "memory/daily"
FILES_SHOWN = 30


def day_rel(day: datetime) -> str:
    return f"{DAILY}/{day:%Y-%m-%d}.md"


def day_path(home: Path, day: datetime) -> Path:
    return home / day_rel(day)


def recent_days(now: datetime) -> list[str]:
    """The day logs the prompt shows (yesterday's and today's), oldest first."""
    return [day_rel(now - timedelta(days=1)), day_rel(now)]


def _names(files: list[str], stranger: bool) -> str:
    shown = [quoted(f, 200) if stranger else escape(f) for f in files[:FILES_SHOWN]]
    more = len(files) - FILES_SHOWN
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def _entry(when: datetime, trigger: str, model: str, task: str, outcome: str,
                files: list[str], blocked: list[str] | None = None,
                source: str | None = None, held: dict[str, str] | None = None) -> list[str]:
    """One entry. `source` names where an untrusted turn's text came from (its trigger);
    None for the owner's turns. `held`: paths git did not take, and why (agentd.gitscreen)."""
    first = next((x for x in task.split("\n") if x.strip()), "")  # U+2028 is not a line end
    lines = [f"## {when:%H:%M} · {one_line(trigger, 80)} · {one_line(model, 200)}"]
    if source is None:
        lines += [f"- Task: {one_line(first, 200)}", f"- Outcome: {one_line(outcome, 300)}"]
    else:
        lines += [f"- Task (untrusted, from {one_line(source, 80)}): {quoted(first, 200)}",
                  f"- Outcome (untrusted): {quoted(outcome, 300)}"]
    label = "" if source is None else " (named by the untrusted turn)"
    if files:
        lines.append(f"- Files{label}: {_names(files, source is not None)}")
    if blocked:
        lines.append(f"- Not committed (secrets found){label}: "
                     f"{_names(blocked, source is not None)}")
    return lines + _held(held or {}, source)


def _held(held: dict[str, str], source: str | None) -> list[str]:
    """`- Not committed (<why>): a, b`, one line per reason."""
    by_why: dict[str, list[str]] = {}
    for path, why in held.items():
        by_why.setdefault(why, []).append(path)
    label = "" if source is None else " (named by the untrusted turn)"
    return [f"- Not committed ({escape(why)}){label}: {_names(paths, source is not None)}"
            for why, paths in by_why.items()]


def append_entry(home: Path, when: datetime, trigger: str, model: str, task: str,
                 outcome: str, files: list[str], blocked: list[str] | None = None,
                 source: str | None = None, held: dict[str, str] | None = None) -> Path:
    """Append one entry (see `_entry`); creates the day's file with a heading on first use.
    A symlink or file in place of memory/ or memory/daily/ is replaced by a real folder, and
    anything but our own plain file at the log's name by a new file (targets untouched);
    the entry says so. Returns the log's path."""
    rel = day_rel(when)
    lines = _entry(when, trigger, model, task, outcome, files, blocked, source, held)
    with Root(home) as root:
        moved = [n for n in (root.ensure_dir("memory"), root.ensure_dir(DAILY)) if n]
        text = "\n" + "\n".join(lines + _noted(moved)) + "\n"
        replaced = root.append_text(rel, text, header=f"# {when:%Y-%m-%d}\n")
        if replaced:  # known only once written: the planted file was replaced
            root.append_text(rel, "\n".join(_noted([replaced])) + "\n")
    return home / rel


def append_held(home: Path, when: datetime, held: dict[str, str],
                source: str | None = None) -> None:
    """More `Not committed` lines for the entry just appended: what the commit itself had to
    hold back (git refused a path), known only after the entry was written."""
    with Root(home) as root:
        root.append_text(day_rel(when), "\n".join(_held(held, source)) + "\n")


def append_note(home: Path, when: datetime, note: str) -> None:
    """A `- Note (agentd):` line written after the turn's commit (a chat reply's delivery
    state, agentd/bridge/delivery.py): no commit of its own, it rides along with the next."""
    with Root(home) as root:
        root.append_text(day_rel(when), "\n".join(_noted([note])) + "\n",
                         header=f"# {when:%Y-%m-%d}\n")


def _noted(notes: list[str]) -> list[str]:
    return [f"- Note (agentd): {escape(n)}" for n in notes]
