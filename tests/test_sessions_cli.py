"""`agentd sessions`: the transcript viewer, on transcripts made by real turns (the real
SDKs against the fake LLM server) and on hostile ones written by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import Result
from conftest import agentd
from fakellm import FakeLLM

OPENAI = "openai:gpt-5.4"
KEY = "sk-ant-api03-" + "k" * 40


def sessions(home: Path, *args: str) -> Result:
    return agentd("sessions", "--home", str(home), *args)


def run(home: Path, workdir: Path, *args: str) -> Result:
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", OPENAI, *args)
    assert r.exit_code == 0, r.stderr
    return r


def test_list_and_show_real_sessions(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "Looking.", "tool_calls": [
                  {"name": "bash", "arguments": {"command": "echo hello-from-bash"}}]},
              {"text": "It said hello."}, {"text": "Second answer."}, {"text": "Other."})
    run(home, workdir, "--session", "talk", "run echo")
    run(home, workdir, "--session", "talk", "and again?")
    run(home, workdir, "unrelated")
    listed = json.loads(sessions(home, "--json").stdout)
    assert [s["id"] for s in listed][1] == "talk"  # newest first
    talk = listed[1]
    assert talk["trigger"] == "cli" and talk["models"] == [OPENAI]
    assert talk["turns"] == 2 and talk["messages"] == 6
    assert talk["cost"] is not None and talk["cost"] > 0  # from the ledger: 3 priced calls
    table = sessions(home)
    assert table.exit_code == 0
    row = next(line for line in table.stdout.splitlines() if " talk " in line)
    assert "cli" in row and OPENAI in row and f"${talk['cost']:.4f}" in row
    shown = sessions(home, "talk")
    assert shown.exit_code == 0, shown.stderr
    out = shown.stdout
    for text in ("you> run echo", "Looking.", "▸ bash echo hello-from-bash",
                 "hello-from-bash", "It said hello.", "you> and again?", "Second answer."):
        assert text in out
    assert out.index("you> run echo") < out.index("▸ bash") < out.index("you> and again?")
    last = json.loads(sessions(home, "talk", "-n", "2", "--json").stdout)
    assert [(m["role"], m["text"]) for m in last["messages"]] == [
        ("user", "and again?"), ("assistant", "Second answer.")]
    assert last["model"] == OPENAI and last["broken_lines"] == 0
    assert json.loads(sessions(home, "--last", "--json").stdout)["id"] == listed[0]["id"]


def write_transcript(home: Path, sid: str, *lines: str) -> Path:
    folder = home / ".agentd" / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sid}.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_hostile_transcripts_are_read_safely(home: Path) -> None:
    head = json.dumps({"type": "session", "id": "bad", "trigger": "cli", "model": OPENAI})
    write_transcript(
        home, "bad", head, "not json at all", '["a list"]',
        json.dumps({"type": "message", "role": "user", "text": f"my key is {KEY}"}),
        json.dumps({"type": "message", "role": "wizard"}),  # not a message
        json.dumps({"type": "message", "role": "assistant",
                    "text": "\x1b]52;c;aGk=\x07 clipboard", "tool_calls": [
                        {"id": "1", "name": "bash", "arguments": {"command": f"echo {KEY}"}}]}),
        '{"type": "message", "role": "tool", "te')  # torn
    r = sessions(home, "bad")
    assert r.exit_code == 0, r.stderr
    assert KEY not in r.stdout and r.stdout.count("[REDACTED:anthropic-key]") == 2
    assert "\x1b" not in r.stdout and "\\x1b]52" in r.stdout
    assert r.stderr.strip() == "warning: 4 unreadable lines skipped"
    data = json.loads(sessions(home, "bad", "--json").stdout)
    assert KEY not in json.dumps(data) and len(data["messages"]) == 2
    listed = json.loads(sessions(home, "--json").stdout)
    assert [(s["id"], s["turns"], s["cost"]) for s in listed] == [("bad", 1, None)]


def test_links_fifos_and_bad_names_are_refused(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"type": "message", "role": "user", "text": "outside"}) + "\n")
    folder = write_transcript(home, "real", json.dumps({"type": "session", "trigger": "cli"})
                              ).parent
    (folder / "link.jsonl").symlink_to(secret)
    os.mkfifo(folder / "pipe.jsonl")
    for sid in ("link", "pipe"):
        r = sessions(home, sid)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"error: cannot read session '{sid}'")
        assert "outside" not in r.stdout
    assert [s["id"] for s in json.loads(sessions(home, "--json").stdout)] == ["real"]


@pytest.mark.parametrize("sid, says", [
    ("../../etc/passwd", "is not a session name"),
    ("nope", "no session 'nope'"),
])
def test_unknown_or_invalid_ids_are_one_line(home: Path, sid: str, says: str) -> None:
    r = sessions(home, sid)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert says in r.stderr


def test_no_sessions_yet(home: Path) -> None:
    r = sessions(home)
    assert r.exit_code == 0 and r.stdout.startswith("no sessions yet")
    assert json.loads(sessions(home, "--json").stdout) == []
    r = sessions(home, "--last")
    assert r.exit_code == 2 and "no session started from the command line" in r.stderr
