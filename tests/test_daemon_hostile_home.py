"""The daemon's own reads and writes of the agent's files on a hostile home, below the
process level: cron files and HEARTBEAT.md planted as symlinks (to a secret, to
/proc/self/environ) or FIFOs are refused by name and never read, and an answer is never
written through a link planted in outbox/. The same through a running daemon is in
test_daemon_cron.py and test_daemon_inbox.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import agentd
from hostile import KINDS, SECRET, bounded, environ_sample, plant, secret_file

from agentd.daemon import checklist
from agentd.homefs import Root
from agentd.outbox import write_new

JOB = f"---\nevery: 1m\n---\n{SECRET}\n"  # a valid job: were it read, it would be scheduled
WHY = {"symlink": "symlink", "environ": "symlink", "fifo": "not a regular file"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_cron_file_is_an_error_never_read(home: Path, tmp_path: Path,
                                                    kind: str) -> None:
    secret = secret_file(tmp_path / "outside")
    secret.write_text(JOB)
    path = home / "cron/evil.md"
    plant(path, kind, secret)
    status = bounded(lambda: agentd("status", "--home", str(home), "--json"), [path])
    (row,) = [r for r in json.loads(status.stdout)["cron"] if r["name"] == "evil"]
    assert "schedule" not in row and WHY[kind] in row["error"]
    run = bounded(lambda: agentd("cron", "run", "evil", "--home", str(home)), [path])
    assert run.exit_code != 0 and "cron/evil.md" in run.stderr and WHY[kind] in run.stderr
    for out in (status.stdout, run.stdout, run.stderr):
        assert SECRET not in out and environ_sample() not in out


def test_a_symlinked_cron_folder_has_no_jobs(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "leak.md").write_text(JOB)
    (home / "cron").rename(tmp_path / "old-cron")
    (home / "cron").symlink_to(outside)
    status = json.loads(agentd("status", "--home", str(home), "--json").stdout)
    (row,) = status["cron"]
    assert row["name"] == "cron/" and "symlink" in row["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_planted_heartbeat_file_is_a_problem_never_read(home: Path, tmp_path: Path,
                                                          kind: str) -> None:
    secret = secret_file(tmp_path / "outside")
    secret.write_text(f"- {SECRET}\n")
    path = home / checklist.HEARTBEAT
    plant(path, kind, secret)
    items, problems = bounded(lambda: checklist.load(home), [path])
    assert items == []
    (problem,) = problems
    assert problem.startswith("not read: memory/HEARTBEAT.md") and WHY[kind] in problem


def test_an_answer_is_never_written_through_a_planted_link(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "cron.d" / "evil"
    target.parent.mkdir()
    (home / "outbox/answer.md").symlink_to(target)
    (home / "outbox/answer-2.md").write_text("an earlier answer\n")
    with Root(home) as root:
        assert write_new(root, "outbox/answer.md", "hello\n") == "outbox/answer-3.md"
    assert list(target.parent.iterdir()) == []
    assert (home / "outbox/answer-2.md").read_text() == "an earlier answer\n"
    assert (home / "outbox/answer-3.md").read_text() == "hello\n"
