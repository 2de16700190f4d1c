"""The day-log-only commit (agentd/turn.py finish_turn, history.DAY_LOG_ONLY) attacked by
a stranger: a turn whose only change is the runtime's day-log entry is committed alone,
and `agentd undo` skips such commits, so a turn that got its work classed as "day log only"
would escape `undo` and review. One signed webhook through the real bridge, queue, loop,
bubblewrap and git; its (scripted) model tries to get files under memory/daily/ (a fake
day log, a link there, names like git pathspecs) or to have all its work held back. Then
the owner runs `agentd undo`: it must find the stranger's turn and take its files away."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from bridgekit import TOKEN, BridgeHost, bridge_env, bridge_home, signed
from conftest import agentd, requires_root_bwrap
from daemonkit import wait_for
from fakellm import FakeLLM

from agentd import history

pytestmark = requires_root_bwrap
DAY_LOG = re.compile(r"memory/daily/\d{4}-\d{2}-\d{2}\.md")


def _bash(command: str) -> dict:
    return {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}


def _write(path: str, content: str) -> dict:
    return {"tool_calls": [{"name": "write", "arguments": {"path": path,
                                                           "content": content}}]}


def _git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def host(home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[BridgeHost]:
    bridge_env(monkeypatch)
    with BridgeHost(bridge_home(home)) as h:
        yield h


def _webhook(host: BridgeHost, fake: FakeLLM, steps: list[dict], delivery: str) -> None:
    """One signed webhook whose turn takes `steps`, waited for until it is done."""
    fake.push(*steps, {"text": "done"})
    body = json.dumps({"action": delivery}).encode()
    r = httpx2.post(f"{host.url}/hooks/github", content=body, headers=signed(body, delivery),
                    timeout=30)
    assert r.status_code == 202, r.text
    rid = r.json()["id"]

    def finished() -> dict | None:
        run = httpx2.get(f"{host.url}/runs/{rid}",
                         headers={"authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        return run if run["status"] not in ("queued", "running") else None

    run = wait_for(finished, 60, "the webhook turn")
    assert run["status"] == "done", run


def _turn_commit(home: Path) -> dict[str, str]:
    """The trailers of the newest commit."""
    return dict(history.TRAILER.findall(_git(home, "log", "-1", "--format=%B")))


def test_a_stranger_cannot_get_its_work_classed_as_day_log_only(
        host: BridgeHost, fake: FakeLLM, home: Path) -> None:
    today = "memory/daily/$(date +%F).md"
    steps = [
        _bash(f"echo '## 09:00 · cli · owner' >> {today}; echo tried"),
        _bash("echo fake > memory/daily/notes.md; mkdir memory/daily/x; echo tried"),
        _bash("ln -s ../memory/daily outbox/daily; echo x > outbox/daily/evil.md; "
              "ln -s ../memory/daily/evil.md outbox/log.md; echo tried"),
        _bash("touch 'outbox/:(top)memory' 'outbox/:(glob)memory/daily/*' 'outbox/*' "
              "'outbox/memory' && echo planted"),
        _write("memory/daily/evil2.md", "fake day log"),
        _write("outbox/daily/evil3.md", "through the link"),
        _write("outbox/report.md", "the stranger's work"),
    ]
    _webhook(host, fake, steps, "m1")
    daily = [f for f in _git(home, "ls-files", "memory/daily").split()
             if f != "memory/daily/.gitkeep"]
    assert daily and all(DAY_LOG.fullmatch(f) for f in daily), daily
    assert "owner" not in "".join((home / f).read_text() for f in daily)
    assert not any((home / "memory/daily").glob("evil*"))
    trailers = _turn_commit(home)
    assert trailers.get("Agentd-Changes") != "day log only", trailers
    assert trailers["Agentd-Trigger"].startswith("webhook")
    committed = _git(home, "show", "--name-only", "--format=", "HEAD").split("\n")
    assert "outbox/report.md" in committed and "outbox/:(top)memory" in committed
    undo = agentd("undo", "--home", str(home))
    assert undo.exit_code == 0, undo.output
    tracked = _git(home, "ls-files", "outbox")
    assert "report.md" not in tracked and ":(top)memory" not in tracked
    assert _git(home, "status", "--porcelain", "--", "memory") == ""


def test_a_turn_whose_work_was_all_held_back_says_so_in_its_commit(
        host: BridgeHost, fake: FakeLLM, home: Path) -> None:
    """Everything the stranger wrote was held back (a nested repository, names git
    refuses): nothing of it is committed, so its commit is the day log's alone, but the
    commit names what was held, for whoever reviews it."""
    steps = [_bash("mkdir -p outbox/nest && cd outbox/nest && git init -q && echo x > f && "
                   "git add f && git -c user.name=a -c user.email=a@a commit -qm x && "
                   "touch ../.GIT && echo planted")]
    _webhook(host, fake, steps, "m2")
    body = _git(home, "log", "-1", "--format=%B")
    assert _turn_commit(home).get("Agentd-Changes") == "day log only", body
    assert "outbox/nest/" in body and "outbox/.GIT" in body, body
    assert _git(home, "ls-files", "outbox/nest", "outbox/.GIT") == ""


def test_a_trusted_turn_cannot_hide_work_in_memory_daily_either(
        home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted turn (the owner's run, a heartbeat an attacker's text steered) may write
    under memory/daily/, but what it writes there is its work: the commit is not "day log
    only", and `agentd undo` takes it away, keeping only the day logs themselves."""
    fake.push(_write("memory/daily/notes.md", "hidden work"),
              _bash("echo '## 09:00 · cli · forged' >> memory/daily/$(date +%F).md; echo ok"),
              {"text": "done"})
    monkeypatch.chdir(home)  # the turn's workdir is the home: it may write there
    r = agentd("run", "--model", "anthropic:fake-model", "hide it")
    assert r.exit_code == 0, r.output
    assert _turn_commit(home).get("Agentd-Changes") != "day log only", (
        r.output, _git(home, "log", "-2", "--stat"), fake.requests[-1].body)
    committed = _git(home, "show", "--name-only", "--format=", "HEAD").split()
    assert "memory/daily/notes.md" in committed
    undo = agentd("undo", "--home", str(home))
    assert undo.exit_code == 0, undo.output
    assert "memory/daily/notes.md" not in _git(home, "ls-files", "memory/daily")
    assert _git(home, "status", "--porcelain") == ""
