"""The system prompt: fixed instructions, the home's memory files, the skills index, then
the volatile facts (date, workdir) last, so a provider's prompt cache keeps hitting."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

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

# (file, character budget) in prompt order: stable identity first.
MEMORY_FILES = (("SOUL.md", 2000), ("AGENTS.md", 4000), ("USER.md", 1500),
                ("MEMORY.md", 4000))


def clip(text: str, budget: int, path: str) -> str:
    """Cut an over-budget file to head + tail with a marker saying how to read the rest."""
    if len(text) <= budget:
        return text
    head, tail = text[: budget * 2 // 3], text[-(budget // 3):]
    cut = len(text) - len(head) - len(tail)
    return f"{head}\n[… {cut} characters cut; read {path} for all of it …]\n{tail}"


def build_system_prompt(home: Path, workdir: Path, now: datetime | None = None,
                        warnings: list[str] | None = None) -> str:
    parts = [BASE.format(home=home)]
    for name, budget in MEMORY_FILES:
        path = home / "memory" / name
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            parts.append(f"# memory/{name}\n{clip(text, budget, f'memory/{name}')}")
    skills = discover(home, warnings)
    if skills:
        lines = [f"- {s.name}: {s.description} ({s.path.relative_to(home)})" for s in skills]
        parts.append("# Skills (read the SKILL.md before using one)\n" + "\n".join(lines))
    now = now or datetime.now().astimezone()
    parts.append(f"Now: {now:%Y-%m-%d %H:%M %Z}. Workdir: {workdir}.")
    return "\n\n".join(parts)
