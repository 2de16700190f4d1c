"""The day log: `memory/daily/YYYY-MM-DD.md`, one entry appended by the runtime after every
turn, with no model call. Deterministic memory: what happened is written down even when the
model forgets to, and the next turn sees today's and yesterday's entries in its prompt."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

DAILY = "memory/daily"


def day_path(home: Path, day: datetime) -> Path:
    return home / DAILY / f"{day:%Y-%m-%d}.md"


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def append_entry(home: Path, when: datetime, trigger: str, model: str, task: str,
                 outcome: str, files: list[str], notes: list[str] | None = None) -> Path:
    """Append one entry; creates the day's file with a heading on first use. `notes` are
    lines such as "Not committed (secrets found): a.md" (agentd.history's Changes.notes)."""
    path = day_path(home, when)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next((x for x in task.splitlines() if x.strip()), "")
    lines = [f"## {when:%H:%M} · {trigger} · {model}",
             f"- Task: {_one_line(first, 200)}",
             f"- Outcome: {_one_line(outcome, 300)}"]
    if files:
        lines.append(f"- Files: {', '.join(files[:30])}"
                     + (f" (+{len(files) - 30} more)" if len(files) > 30 else ""))
    lines += [f"- {_one_line(note, 500)}" for note in notes or []]
    header = "" if path.exists() else f"# {when:%Y-%m-%d}\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(header + "\n" + "\n".join(lines) + "\n")
    return path


def append_notes(path: Path, notes: list[str]) -> None:
    """More note lines for the entry just appended to `path` (what the commit itself had to
    hold back, found after the entry was written)."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(f"- {_one_line(note, 500)}\n" for note in notes))


def recent(home: Path, now: datetime) -> list[tuple[str, str]]:
    """(relative path, text) of yesterday's and today's logs, oldest first."""
    out = []
    for day in (now - timedelta(days=1), now):
        path = day_path(home, day)
        try:
            out.append((str(path.relative_to(home)), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return out
