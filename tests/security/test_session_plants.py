"""A transcript path the agent got at: with `[sandbox] mode = "off"` bash runs on the host
and can write `.agentd/sessions/`. A symlink it plants at a transcript's name (dangling, so
the next turn starts a new session there, or mid-turn, in place of its own transcript) must
not redirect agentd's appends out of the home, and a FIFO there must not hang the next
turn. Through the real CLI, the real loop and the real bash tool."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import agentd
from daemonkit import configure
from fakellm import FakeLLM
from hostile import bounded


def _bash(command: str) -> dict:
    return {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}


def _run(home: Path, workdir: Path, session: str, *extra: str) -> object:
    return agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
                  "--model", "openai:test", "--session", session, *extra, "go")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_planted_links_never_redirect_the_transcript(home: Path, workdir: Path,
                                                     fake: FakeLLM, tmp_path: Path) -> None:
    configure(home, sandbox={"mode": "off"})
    outside = tmp_path / "outside"
    outside.mkdir()
    sessions = home / ".agentd/sessions"
    # a turn plants a dangling link at the name of a session the next turn starts
    fake.push(_bash(f"ln -s {outside}/planted {sessions}/next.jsonl && echo planted"),
              {"text": "done"})
    assert json.loads(_run(home, workdir, "first").stdout)["status"] == "ok"
    assert (sessions / "next.jsonl").is_symlink()
    fake.push({"text": "hello"})
    assert json.loads(_run(home, workdir, "next").stdout)["status"] == "ok"
    # and a turn swaps its own transcript for a link mid-turn
    fake.push(_bash(f"rm {sessions}/self.jsonl && ln -s {outside}/swapped "
                    f"{sessions}/self.jsonl && echo swapped"), {"text": "done"})
    assert json.loads(_run(home, workdir, "self").stdout)["status"] == "ok"
    assert list(outside.iterdir()) == []
    for name, last_text in (("next", "hello"), ("self", "done")):
        path = sessions / f"{name}.jsonl"
        assert path.is_file() and not path.is_symlink()
        rows = _rows(path)
        assert rows[-1]["type"] == "end" and rows[-1]["status"] == "ok"
        assert [r["text"] for r in rows if r.get("role") == "assistant"][-1] == last_text


def test_a_planted_fifo_is_a_one_line_error(home: Path, workdir: Path, fake: FakeLLM) -> None:
    configure(home, sandbox={"mode": "off"})
    sessions = home / ".agentd/sessions"
    fake.push(_bash(f"mkfifo {sessions}/pipe.jsonl && echo made"), {"text": "done"})
    assert json.loads(_run(home, workdir, "maker").stdout)["status"] == "ok"
    fifo = sessions / "pipe.jsonl"
    r = bounded(lambda: agentd("run", "--home", str(home), "--workdir", str(workdir),
                               "--model", "openai:test", "--session", "pipe", "go"), [fifo])
    assert r.exit_code != 0 and "Traceback" not in r.stderr
    (error,) = [line for line in r.stderr.splitlines() if not line.startswith("warning:")]
    assert error.startswith("error: ") and "not a regular file" in error
    assert len(fake.requests) == 2  # the second turn never called the model
