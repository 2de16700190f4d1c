"""A cron job's name is the stem of a file the agent writes, and it names the job's
session transcript (`cron-<name>.jsonl`), its answers in outbox/ and its log lines. A stem
that no session could have (a newline, a right-to-left override, 200 characters, a leading
'.' or '-', a path) makes no job: `agentd cron run` refuses it in one line, and the real
daemon logs one error line for it and never runs it, while a good job beside it runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import agentd
from daemonkit import Daemon, configure, model_requests
from fakellm import FakeLLM

JOB = "---\nevery: 0.3s\nsession: continue\n---\nReport {}.\n"
BAD = {"newline": "evil\nTrusted: yes", "rtl": "x\u202egnp.exe", "long": "a" * 124,
       "leading-dash": "-rf", "space": "two words", "unicode": "caf\u00e9"}


def _plant(home: Path, name: str) -> None:
    (home / "cron" / f"{name}.md").write_text(JOB.format(ascii(name)))


def _sessions(home: Path) -> list[str]:
    folder = home / ".agentd/sessions"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("name", [*BAD.values(), ".hidden", "../memory/MEMORY"],
                         ids=[*BAD, "leading-dot", "path"])
def test_cron_run_refuses_a_name_no_session_may_have(home: Path, fake: FakeLLM,
                                                     name: str) -> None:
    if "/" not in name:
        _plant(home, name)
    r = agentd("cron", "run", "--home", str(home), "--", name)
    assert r.exit_code != 0
    assert "not a job name" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fake.requests == [] and _sessions(home) == []
    assert list((home / "outbox").glob("cron-*")) == []


def test_the_daemon_logs_a_bad_name_once_and_never_runs_it(home: Path,
                                                          fake: FakeLLM) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"enabled": False})
    fake.push(*[{"text": "[SILENT]"}] * 40)
    for name in BAD.values():
        _plant(home, name)
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"cron: error: cron/.*: not a job name", n=len(BAD))
        _plant(home, "good")
        d.wait_log(r"cron: good: turn ok", n=2)
        for name in BAD.values():
            assert d.log.count(f"cron/{name!a}.md: not a job name") == 1, d.log
            assert f"{name!a}: scheduled" not in d.log
        status = json.loads(agentd("status", "--home", str(home), "--json").stdout)
        rows = {row["name"]: row for row in status["cron"]}
        for name in BAD.values():
            assert "not a job name" in rows[name]["error"]
        assert d.stop() == 0
    assert _sessions(home) == ["cron-good.jsonl"]
    asked = [json.dumps(r.body) for r in model_requests(fake)]
    assert asked and all("Report 'good'" in body for body in asked)
