"""One renderer (agentd/render.py), piped: with stdout a pipe, nothing is hard-wrapped or
cut at 80 columns (rich's default when it is not a terminal). `agentd run`'s tool-call
lines, its streamed reply and its summary line, and `agentd history`'s rows, each come out
as one line, through the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from daemonkit import AGENTD
from fakellm import FakeLLM

from agentd.llm.types import ToolCall
from agentd.render import call_line

MODEL = "openai:gpt-5.4"
NOTE = "notes/" + "a-long-folder-name-" * 4 + "note.md"  # with the home's path: > 80
TASK = "please write the long note down " + "and say why it matters " * 6
REPLY = "The note is written. " * 12 + "END"  # streamed in pieces by the fake


def piped(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout a pipe; COLUMNS=80 as a terminal-less environment often has."""
    return subprocess.run([*AGENTD, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80"})  # stdout: a pipe


def long_turn(fake: FakeLLM, home: Path, workdir: Path) -> list[str]:
    fake.push({"tool_calls": [{"name": "write", "arguments": {
        "path": f"{home}/{NOTE}", "content": "why it matters\n"}}]}, {"text": REPLY})
    r = piped("run", "--home", str(home), "-C", str(workdir), "-m", MODEL, TASK)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_run_piped_prints_each_line_whole(fake: FakeLLM, home: Path, workdir: Path) -> None:
    lines = long_turn(fake, home, workdir)
    assert f"▸ write {home}/{NOTE}" in lines
    assert REPLY in lines
    [summary] = [line for line in lines if " · tokens " in line]
    assert summary.startswith(f"{MODEL} · 2 steps · tokens ") and summary.endswith(" s")
    assert len(summary) > 80 and all(len(line) > 80 for line in (REPLY, summary))


def test_history_piped_is_one_line_per_commit(fake: FakeLLM, home: Path,
                                              workdir: Path) -> None:
    long_turn(fake, home, workdir)
    r = piped("history", "--home", str(home))
    assert r.returncode == 0, r.stderr
    [row] = [line for line in r.stdout.splitlines() if TASK[:40] in line]
    assert NOTE in row and "cli" in row and MODEL in row and len(row) > 160


def test_a_tool_call_is_one_line_in_the_log_and_on_the_terminal() -> None:
    """The daemon's log line and the terminal's are the same words: whitespace runs are one
    space, controls are escaped, and the command is cut at the limit."""
    call = ToolCall("1", "bash", {"command": "for f in *;\n  do echo \x1b[2J$f\ndone"})
    assert call_line(call) == "▸ bash for f in *; do echo \\x1b[2J$f done"
    assert call_line(ToolCall("2", "bash", {"command": "x" * 300}), 100) == (
        "▸ bash " + "x" * 99 + "…")
