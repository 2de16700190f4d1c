"""System prompt assembly: order (stable first, volatile last), budgets with markers, the
day logs of today and yesterday only, the workdir's AGENTS.md."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hostile import KINDS, SECRET, bounded, environ_sample, plant, secret_file

from agentd.daylog import append_entry, day_path
from agentd.prompt import MEMORY_BUDGET, build_system_prompt, clip

NOW = datetime(2026, 11, 23, 14, 30).astimezone()


def test_order_is_stable_first_volatile_last(home: Path, workdir: Path) -> None:
    (workdir / "AGENTS.md").write_text("Use tabs in this repo.\n")
    append_entry(home, NOW, "cli", "openai:x", "did a thing", "ok", ["a.md"])
    prompt = build_system_prompt(home, workdir, NOW)
    marks = ["You are an autonomous agent", "# memory/SOUL.md", "# memory/AGENTS.md",
             "# memory/USER.md", "# Skills", f"# {workdir}/AGENTS.md", "# memory/MEMORY.md",
             "# memory/daily/2026-11-23.md (day log)", "Now: 2026-11-23 14:30"]
    positions = [prompt.index(m) for m in marks]
    assert positions == sorted(positions)
    assert "Use tabs in this repo." in prompt


def test_the_same_inputs_give_the_same_prompt(home: Path, workdir: Path) -> None:
    """Byte-identical prompts are what provider caches need."""
    assert build_system_prompt(home, workdir, NOW) == build_system_prompt(home, workdir, NOW)


def test_over_budget_file_is_cut_head_and_tail_with_a_marker(home: Path, workdir: Path) -> None:
    lines = [f"- fact {i:05d}" for i in range(5000)]
    (home / "memory/MEMORY.md").write_text("\n".join(lines))
    prompt = build_system_prompt(home, workdir, NOW)
    section = prompt.split("# memory/MEMORY.md\n", 1)[1].split("\n\n", 1)[0]
    assert len(section) < MEMORY_BUDGET + 200
    assert "- fact 00000" in section and "- fact 04999" in section
    assert "characters cut; read memory/MEMORY.md for all of it" in section


def test_clip_keeps_tail_for_logs() -> None:
    text = "\n".join(f"entry {i}" for i in range(1000))
    out = clip(text, 100, "memory/daily/x.md", keep_tail=True)
    assert out.startswith("[…") and out.endswith("entry 999") and "entry 0\n" not in out


def test_only_today_and_yesterday_logs(home: Path, workdir: Path) -> None:
    for days, task in ((0, "today-task"), (1, "yesterday-task"), (3, "old-task")):
        append_entry(home, NOW - timedelta(days=days), "cli", "m", task, "ok", [])
    prompt = build_system_prompt(home, workdir, NOW)
    assert "today-task" in prompt and "yesterday-task" in prompt
    assert "old-task" not in prompt
    assert prompt.index("yesterday-task") < prompt.index("today-task")


def test_day_log_entry_format(home: Path) -> None:
    append_entry(home, NOW, "cron:report", "openai:x", "first line\nsecond", "ok, 2 steps",
                 ["memory/MEMORY.md"], ["leak.md"])
    text = day_path(home, NOW).read_text()
    assert text.startswith("# 2026-11-23\n")
    assert "## 14:30 · cron:report · openai:x\n- Task: first line\n" in text
    assert "- Files: memory/MEMORY.md" in text
    assert "- Not committed (secrets found): leak.md" in text


def test_a_missing_file_is_skipped_and_an_unreadable_one_noted(home: Path,
                                                               workdir: Path) -> None:
    (home / "memory/SOUL.md").unlink()
    (home / "memory/USER.md").write_bytes(b"\xff\xfe bad")
    prompt = build_system_prompt(home, workdir, NOW)
    assert "# memory/SOUL.md" not in prompt
    assert "# memory/USER.md\n[not read: memory/USER.md is not UTF-8 text]" in prompt
    assert "# memory/AGENTS.md" in prompt


PLANTED = ["memory/SOUL.md", "memory/MEMORY.md", "memory/daily/2026-11-23.md",
           "{workdir}/AGENTS.md"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rel", PLANTED)
def test_a_planted_prompt_file_is_noted_never_read(home: Path, workdir: Path, tmp_path: Path,
                                                   rel: str, kind: str) -> None:
    """A symlink out (to a root-only file, to /proc/self/environ) or a FIFO where a prompt
    file belongs: a line says why it was not read; nothing of its target is sent, no hang."""
    secret = secret_file(tmp_path / "outside")
    path = Path(rel.format(workdir=workdir)) if "{" in rel else home / rel
    plant(path, kind, secret)
    prompt = bounded(lambda: build_system_prompt(home, workdir, NOW), [path])
    assert SECRET not in prompt and environ_sample() not in prompt
    shown = str(path) if "{" in rel else rel
    why = "symlink, which agentd does not follow" if kind != "fifo" else (
        "not a regular file (a FIFO, socket or device)")
    section = prompt.split(f"# {shown}", 1)[1].split("\n\n", 1)[0]
    assert "\n[not read: " in section and why in section


def test_a_symlinked_memory_folder_is_not_followed(home: Path, workdir: Path,
                                                   tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "MEMORY.md").write_text(SECRET)
    (home / "memory").rename(tmp_path / "old-memory")
    (home / "memory").symlink_to(outside)
    prompt = build_system_prompt(home, workdir, NOW)
    assert SECRET not in prompt
    assert "# memory/MEMORY.md\n[not read: memory/MEMORY.md is (or goes through) a symlink" \
           in prompt


def test_a_huge_file_is_read_only_at_its_ends(home: Path, workdir: Path) -> None:
    """An 8 GiB (sparse) MEMORY.md costs the host a few KiB of reading, not 8 GiB."""
    path = home / "memory/MEMORY.md"
    with path.open("wb") as f:
        f.write(b"HEAD-MARK\n")
        f.truncate(8 << 30)
        f.seek((8 << 30) - 10)
        f.write(b"\nTAIL-MARK")
    prompt = bounded(lambda: build_system_prompt(home, workdir, NOW), timeout=10)
    section = prompt.split("# memory/MEMORY.md\n", 1)[1].split("\n\nNow: ", 1)[0]
    assert section.startswith("HEAD-MARK") and section.endswith("TAIL-MARK")
    assert len(section) < MEMORY_BUDGET + 200 and "characters cut; read memory/MEMORY.md" \
        in section
