"""The turn-in-flight marker (`.agentd/daemon/turn.json`, agentd/inflight.py) names the
session whose transcript the next turn closes out. A turn's session must be a session name
by the one rule (agentd/session.py `check_name`) before the marker records it, and a marker
found at the next turn (one an unsandboxed agent could have rewritten) steers no write:
a name that is no session's is ignored, and a link at the transcript is not written
through. Through the real turn and the real CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import agentd
from fakellm import FakeLLM

from agentd.config import load_settings
from agentd.errors import AgentdError
from agentd.home import Home
from agentd.loop import Events
from agentd.turn import TurnRequest, run_turn


def test_a_turn_under_a_name_no_session_may_have_is_refused(home: Path, workdir: Path,
                                                            fake: FakeLLM) -> None:
    req = TurnRequest("hello", workdir, model="openai:test", session="../escape")
    with pytest.raises(AgentdError, match="not a session"):
        asyncio.run(run_turn(home, load_settings(home), req, Events()))
    assert not (home / ".agentd/escape.jsonl").exists()
    assert not Home(home).turn_marker.exists() and fake.requests == []


@pytest.mark.parametrize("name", ["link.jsonl", "link", "..jsonl", "-x.jsonl",
                                  "caf\u00e9.jsonl", "../outside.jsonl"])
def test_a_planted_marker_steers_no_write(home: Path, workdir: Path, fake: FakeLLM,
                                          tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text("keep\n")
    sessions = Home(home).sessions
    (sessions / "link.jsonl").symlink_to(outside)
    for other in ("..jsonl", "-x.jsonl", "caf\u00e9.jsonl"):
        (sessions / other).write_text("keep\n")
    marker = Home(home).turn_marker
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run": "r1", "trigger": "cli", "task": "killed",
                                  "profile": "trusted", "session": name}))
    fake.push({"text": "hi"})
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", "openai:test", "next")
    assert json.loads(r.stdout)["status"] == "ok", r.output
    assert not marker.exists()  # closed out
    assert outside.read_text() == "keep\n"
    for other in ("..jsonl", "-x.jsonl", "caf\u00e9.jsonl"):
        assert (sessions / other).read_text() == "keep\n"
    link = sessions / "link.jsonl"
    if name.startswith("link"):  # a session's name: its end row is written, the link replaced
        assert not link.is_symlink()
        (row,) = [json.loads(line) for line in link.read_text().splitlines()]
        assert row["type"] == "end" and row["status"] == "interrupted" and row["run"] == "r1"
    else:
        assert link.is_symlink()
