"""The heartbeat in a real daemon process: idle ticks cost nothing, a firing gate costs
exactly one model call with only its item, active hours, skipping while a turn runs,
hostile HEARTBEAT.md and agentd.toml, hot reload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from daemonkit import (
    Daemon,
    commit_settings,
    configure,
    git,
    last_user_text,
    model_requests,
    uncommitted,
)
from fakellm import FakeLLM

HEARTBEAT = "memory/HEARTBEAT.md"


def _items(home: Path, text: str) -> None:
    with (home / HEARTBEAT).open("a") as f:
        f.write(text)


def test_idle_ticks_make_no_model_call(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    _items(home, "- Tell me when the build breaks.\n  when: `test -e build-broken`\n"
                 "- Water the plants.\n  every: 1d\n  when: `false`\n")
    with Daemon(home) as d:
        d.ready()
        log = d.wait_log(r"heartbeat: nothing due", n=3)
        assert "nothing due (2 items, 2 gates checked); no model call" in log
        assert "nothing due (2 items, 1 gate checked)" in log  # the daily one waits a day
        assert d.stop() == 0
    assert model_requests(fake) == []


def test_a_firing_gate_makes_exactly_one_call_with_only_its_item(fake: FakeLLM,
                                                                 home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    _items(home, "- Disk check: report usage above 90%.\n  every: 1h\n"
                 "  when: `test -f disk-full && cat disk-full`\n"
                 "- Never due.\n  when: `false`\n")
    (home / "disk-full").write_text("/ is 91% full\n")
    fake.push({"delay": 0.8, "text": "Disk / is 91% full: clean up builds/."})
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"heartbeat: 1 item due \(line \d+\); turn queued")
        d.wait_log(r"heartbeat: skipped: a turn is running")  # skipped, not queued up
        d.wait_log(r"heartbeat: delivered outbox/heartbeat-")
        d.wait_log(r"heartbeat: nothing due", n=2)
        assert d.stop() == 0
    reqs = model_requests(fake)
    assert len(reqs) == 1
    task = last_user_text(reqs[0])
    assert "Disk check: report usage above 90%." in task and "/ is 91% full" in task
    assert "Never due" not in task and "[SILENT]" in task
    (report,) = (home / "outbox").glob("heartbeat-*.md")
    assert report.read_text() == "Disk / is 91% full: clean up builds/.\n"
    assert "Heartbeat\n" in git(home, "log", "-3", "--format=%s")
    assert uncommitted(home) == []


def test_a_delivering_turn_makes_one_commit_with_its_files_answer_and_day_log(
        fake: FakeLLM, home: Path) -> None:
    """The agent's files, the outbox answer and the day-log entry: one commit, the turn's."""
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    _items(home, "- Keep notes.\n  every: 1h\n")
    commit_settings(home)
    before = int(git(home, "rev-list", "--count", "HEAD"))
    fake.push({"tool_calls": [{"name": "write", "arguments": {"path": "notes.md",
                                                              "content": "noted\n"}}]},
              {"text": "Notes kept in notes.md."})
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"heartbeat: delivered outbox/heartbeat-")
        d.wait_log(r"heartbeat: turn ok")
        assert d.stop() == 0
    assert int(git(home, "rev-list", "--count", "HEAD")) == before + 1
    files = git(home, "show", "--name-only", "--format=", "HEAD").split()
    (answer,) = [f for f in files if f.startswith("outbox/heartbeat-")]
    assert (home / answer).read_text() == "Notes kept in notes.md.\n"
    assert "notes.md" in files and any(f.startswith("memory/daily/") for f in files)
    assert "Agentd-Trigger: heartbeat" in git(home, "log", "-1", "--format=%B")
    assert git(home, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_gates_output_is_redacted_before_the_model_sees_it(fake: FakeLLM,
                                                              home: Path) -> None:
    """A gate runs bash outside the tool dispatch; its output still goes through the
    home's redactor: a configured key's value and a key shape never reach the model."""
    token = "ghp_" + "A1b2C3d4E5" * 4
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    _items(home, "- Report the alert.\n  every: 1h\n  when: `test -f alert && cat alert`\n")
    (home / "alert").write_text(f"key sk-test-KEYVALUE leaked, and {token}\n")
    fake.push({"text": "[SILENT]"})
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"heartbeat: \[SILENT\], nothing delivered")
        assert d.stop() == 0
    (req,) = model_requests(fake)
    task = last_user_text(req)
    assert "key [REDACTED:OPENAI_API_KEY] leaked, and [REDACTED:github-token]" in task
    assert "sk-test-KEYVALUE" not in task and token not in task
    session = "".join(p.read_text() for p in (home / ".agentd/sessions").glob("*.jsonl"))
    assert "[REDACTED:github-token]" in session and token not in session


def test_silent_answer_delivers_nothing_and_interval_holds(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    _items(home, "- Review MEMORY.md.\n  every: 1h\n")
    fake.push({"text": "[SILENT]"})
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"heartbeat: \[SILENT\], nothing delivered")
        d.wait_log(r"heartbeat: nothing due", n=2)
        d.stop()
    assert len(model_requests(fake)) == 1
    assert not list((home / "outbox").glob("heartbeat-*"))


def test_outside_active_hours_ticks_are_skipped_until_reload(fake: FakeLLM, home: Path) -> None:
    now = datetime.now(UTC)
    later = f"{(now + timedelta(hours=2)):%H}:00-{(now + timedelta(hours=3)):%H}:00"
    configure(home, {"model": "openai:test"},
              heartbeat={"every": "0.3s", "active_hours": later, "timezone": "UTC"})
    _items(home, "- Say hello.\n")  # no condition: due on every active tick
    fake.push({"text": "[SILENT]"})
    with Daemon(home) as d:
        d.ready()
        d.wait_log(rf"heartbeat: skipped: outside active hours {later}", n=2)
        assert model_requests(fake) == []
        toml = (home / "agentd.toml").read_text().replace(later, "00:00-24:00")
        (home / "agentd.toml").write_text(toml)
        d.wait_log(r"config: agentd.toml changed: reloaded \(heartbeat changed\)")
        d.wait_log(r"heartbeat: \[SILENT\]")
        d.stop()
    assert len(model_requests(fake)) >= 1


def test_hostile_heartbeat_and_config_keep_the_daemon_alive(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    (home / HEARTBEAT).write_bytes(b"\x00\x01\x02\xff binary junk")
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"heartbeat: nothing due \(0 items\)", n=2)
        assert d.count(r"heartbeat: error: memory/HEARTBEAT.md: not a text file") == 1
        (home / HEARTBEAT).write_text("- Bad interval.\n  every: sometimes\n- Good.\n"
                                      "  when: `false`\n- Unclosed.\n  when: `oops\n")
        d.wait_log(r"HEARTBEAT.md: line 2: every: 'sometimes' is not a duration")
        d.wait_log(r"HEARTBEAT.md: line 6: the command's opening backtick is not closed")
        d.wait_log(r"nothing due \(1 item, 1 gate checked\)")
        good = (home / "agentd.toml").read_text()
        (home / "agentd.toml").write_text(good + "\n[heartbeat\nbroken = \n")
        d.wait_log(r"config: error: agentd.toml changed, but it is invalid: .*keeping the last "
                   r"good settings")
        typo = good.replace('every = "0.3s"', 'every = "0.3s"\nevry = 1')
        (home / "agentd.toml").write_text(typo)
        d.wait_log(r"unknown setting heartbeat.evry", n=1)
        skill = home / "skills" / "broken" / "SKILL.md"
        skill.parent.mkdir()
        skill.write_text("no front matter here")
        d.wait_log(r"skills: warning: skipped skill .*broken")
        n = d.count("nothing due")
        d.wait_log(r"nothing due", n=n + 2)  # still ticking with the last good settings
        assert d.proc.poll() is None
        assert d.stop() == 0
    assert model_requests(fake) == []
