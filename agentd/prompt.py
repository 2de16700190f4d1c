"""The system prompt. Stable parts first (instructions, identity, skills), volatile parts
last (curated memory, day logs, the time), so a provider's prompt cache keeps hitting.
Every file has a character budget; an over-long one is cut with a marker saying how to
read the rest."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from agentd.daylog import recent
from agentd.skills import discover

BASE = """\
You are an autonomous agent run by agentd. You act through four tools: bash (a sandboxed \
shell: no network, only your home and the workdir are writable), read, write and edit.

Your home ({home}) is your memory: plain markdown files in git. What you write there \
persists across runs and models; what you don't write is forgotten. Every change is \
committed, so you can read your history with git and undo mistakes.

Work like this:
- Act, don't narrate: use the tools to find out and to do; don't guess file contents.
- Prefer read/edit/write for files and bash for everything else.
- Keep going until the task is done, then answer briefly with what you did.
- When a skill below fits the task, read its SKILL.md first and follow it.
- If something fails, read the error and try another way; say so if you cannot finish."""

# (file in memory/, character budget), stable identity first.
STABLE_FILES = (("SOUL.md", 2000), ("AGENTS.md", 4000), ("USER.md", 1500))
MEMORY_BUDGET = 4000
WORKDIR_AGENTS_BUDGET = 3000
DAYLOG_BUDGET = 3000


def clip(text: str, budget: int, path: str, keep_tail: bool = False) -> str:
    """Cut an over-budget file to head + tail (or only its tail, for logs) with a marker
    saying how to read the rest."""
    if len(text) <= budget:
        return text
    if keep_tail:
        tail = text[-budget:]
        return f"[… {len(text) - budget} earlier characters cut; read {path} …]\n{tail}"
    head, tail = text[: budget * 2 // 3], text[-(budget // 3):]
    cut = len(text) - len(head) - len(tail)
    return f"{head}\n[… {cut} characters cut; read {path} for all of it …]\n{tail}"


def _section(path: Path, title: str, budget: int, keep_tail: bool = False) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return f"# {title}\n{clip(text, budget, title, keep_tail)}" if text else None


def build_system_prompt(home: Path, workdir: Path, now: datetime | None = None,
                        warnings: list[str] | None = None) -> str:
    now = now or datetime.now().astimezone()
    parts: list[str | None] = [BASE.format(home=home)]
    parts += [_section(home / "memory" / n, f"memory/{n}", b) for n, b in STABLE_FILES]
    skills = discover(home, warnings)
    if skills:
        lines = [f"- {s.name}: {s.description} ({s.path.relative_to(home)})"
                 + ("" if s.available else f" [unavailable: {s.missing}]") for s in skills]
        parts.append("# Skills (read the SKILL.md before using one)\n" + "\n".join(lines))
    if workdir != home:
        parts.append(_section(workdir / "AGENTS.md", f"{workdir}/AGENTS.md",
                              WORKDIR_AGENTS_BUDGET))
    parts.append(_section(home / "memory/MEMORY.md", "memory/MEMORY.md", MEMORY_BUDGET))
    for rel, text in recent(home, now):
        parts.append(f"# {rel} (day log)\n{clip(text.strip(), DAYLOG_BUDGET, rel, True)}")
    parts.append(f"Now: {now:%Y-%m-%d %H:%M %Z}. Workdir: {workdir}.")
    return "\n\n".join(p for p in parts if p)
