"""Cron jobs in a real daemon: files added, edited and deleted while it runs (by the user,
with inotify and with polling, and by the agent during a turn) reschedule within 2 s;
invalid files cost one error line and nothing else; missed runs are caught up once; the
`agentd cron` commands."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import agentd
from daemonkit import (
    Daemon,
    configure,
    git,
    last_user_text,
    model_requests,
    uncommitted,
    wait_for,
)
from fakellm import FakeLLM
from hostile import SECRET, plant, secret_file

from agentd import state
from agentd.home import Home

SILENT = {"text": "[SILENT]"}


def _job(home: Path, name: str, front: str, prompt: str) -> Path:
    path = home / "cron" / f"{name}.md"
    path.write_text(f"---\n{front}\n---\n{prompt}\n")
    return path


def _asked(fake: FakeLLM, words: str) -> bool:
    return any(words in last_user_text(r) for r in model_requests(fake))


@pytest.mark.parametrize("watch", ["auto", "poll"])
def test_user_adds_edits_and_deletes_a_job_while_it_runs(fake: FakeLLM, home: Path,
                                                         watch: str) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"enabled": False},
              daemon={"watch": watch})
    fake.push(*[SILENT] * 40)
    with Daemon(home) as d:
        d.ready()
        assert f"({'inotify' if watch == 'auto' else 'polling'})" in d.log
        t0 = time.monotonic()
        _job(home, "ping", "every: 0.5s", "Ping version one.")
        d.wait_log(r"cron: ping: scheduled \(every 0.5s\)", timeout=2)
        assert time.monotonic() - t0 < 2
        wait_for(lambda: _asked(fake, "Ping version one."), 10, "the first version's run")
        t0 = time.monotonic()
        _job(home, "ping", "every: 0.5s", "Ping version two.")
        d.wait_log(r"cron: ping: scheduled", n=2, timeout=2)
        assert time.monotonic() - t0 < 2
        wait_for(lambda: _asked(fake, "Ping version two."), 10, "the second version's run")
        (home / "cron" / "ping.md").unlink()
        d.wait_log(r"cron: ping: removed", timeout=2)
        after = len(d.log)
        _job(home, "pong", "every: 0.5s", "Pong.")
        d.wait_log(r"cron: pong: turn started", n=2)  # ping would have fired by now
        assert "ping: turn started" not in d.log[after:]
        assert d.stop() == 0
    assert uncommitted(home) == []


def test_agent_writes_a_job_during_a_turn(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    with (home / "memory/HEARTBEAT.md").open("a") as f:
        f.write("- Set up the weekly review job.\n  every: 1d\n")
    job = "---\nschedule: \"0 9 * * 0\"\n---\nWeekly review of memory/daily/.\n"
    fake.push({"tool_calls": [{"name": "write", "arguments": {"path": "cron/weekly.md",
                                                              "content": job}}]},
              {"text": "Scheduled the weekly review for Sundays 09:00."})
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"heartbeat: 1 item due")
        d.wait_log(r"cron: weekly: scheduled \(schedule 0 9 \* \* 0\)")
        d.wait_log(r"heartbeat: delivered")

        def next_run() -> str | None:
            status = json.loads(agentd("status", "--home", str(home), "--json").stdout)
            return {c["name"]: c.get("next") for c in status["cron"]}.get("weekly")

        nxt = wait_for(next_run, 5, "the status file to list the job")
        assert datetime.fromisoformat(nxt).strftime("%a %H:%M") == "Sun 09:00"
        d.stop()
    assert "cron/weekly.md" in git(home, "show", "--stat", "HEAD~1") + git(
        home, "show", "--stat", "HEAD")


def test_invalid_files_cost_one_error_line_each(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"enabled": False})
    _job(home, "good", "every: 1h", "Fine.")
    _job(home, "bad-yaml", "every: [1h", "x")
    _job(home, "bad-key", "every: 1h\ncolour: blue", "x")
    _job(home, "bad-cron", 'schedule: "0 9 * *"', "x")
    (home / "cron" / "binary.md").write_bytes(b"\x00\x01\xff\xfe")
    with Daemon(home) as d:
        d.ready()
        log = d.log
        assert "cron: good: scheduled" in log
        for name, why in (("bad-yaml", "not valid YAML"), ("bad-key", "unknown key colour"),
                          ("bad-cron", "needs 5 fields"), ("binary", "not a text file")):
            assert len([x for x in log.splitlines() if f"cron/{name}.md" in x]) == 1, log
            assert f"cron: error: cron/{name}.md:" in log and why in log
        _job(home, "late", "every: soon", "x")
        d.wait_log(r"cron: error: cron/late.md: every: 'soon' is not a duration")
        _job(home, "late", "every: 2h", "Now valid.")
        d.wait_log(r"cron: late: scheduled")

        def listing_with_late() -> str | None:
            out = agentd("cron", "--home", str(home)).stdout
            return out if "late: every 2h · next 20" in out else None

        listing = wait_for(listing_with_late, 5, "the listing")
        assert "bad-cron: invalid: schedule '0 9 * *' needs 5 fields" in listing
        assert "good: every 1h · next 20" in listing
        assert d.proc.poll() is None and d.stop() == 0
    assert model_requests(fake) == []


def test_missed_runs_catch_up_once_within_the_window(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"enabled": False})
    _job(home, "hourly", 'schedule: "0 * * * *"', "Hourly check.")
    _job(home, "long-ago", f"at: {datetime.now() - timedelta(days=2):%Y-%m-%dT%H:%M}",
         "Too late.")
    state.write(Home(home).daemon / "cron.json", {
        "hourly": {"spec": "schedule 0 * * * *", "seen": time.time() - 3 * 3600}})
    fake.push(SILENT)
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"cron: hourly: missed its run at .*; catching up")
        d.wait_log(r"cron: warning: long-ago: missed its run at .*longer ago than catch_up "
                   r"\(6h\); skipped")
        d.wait_log(r"cron: hourly: \[SILENT\]")
        d.stop()
    assert len(model_requests(fake)) == 1 and _asked(fake, "Hourly check.")


def test_cron_run_now_in_the_foreground_with_a_continued_session(fake: FakeLLM,
                                                                  home: Path) -> None:
    configure(home, {"model": "openai:test"})
    _job(home, "journal", "every: 1d\nsession: continue", "Add a line to the journal.")
    fake.push({"text": "Entry one."}, {"text": "Entry two."})
    r1 = agentd("cron", "run", "journal", "--home", str(home), "-q")
    assert r1.exit_code == 0, r1.stderr
    assert r1.stdout.strip() == "Entry one."
    r2 = agentd("cron", "--home", str(home), "run", "journal", "-q")
    assert r2.exit_code == 0 and r2.stdout.strip() == "Entry two."
    second = model_requests(fake)[1].body["messages"]
    assert "Entry one." in json.dumps(second)  # the job's one transcript goes on
    outs = sorted((home / "outbox").glob("cron-journal-*.md"), key=lambda p: p.stat().st_mtime)
    assert [o.read_text() for o in outs] == ["Entry one.\n", "Entry two.\n"]
    listing = agentd("cron", "--home", str(home)).stdout
    assert "journal: every 1d" in listing and "ok: Entry two." in listing
    assert len(git(home, "log", "--format=%s", "--grep=^Cron: ").splitlines()) == 2
    # resumed or started is decided from the transcript: removed, the next run starts anew
    transcript = home / ".agentd/sessions/cron-journal.jsonl"
    assert [json.loads(x)["type"] for x in transcript.read_text().split("\n") if x].count(
        "session") == 1
    transcript.unlink()
    fake.push({"text": "Entry three."})
    assert agentd("cron", "run", "journal", "--home", str(home), "-q").exit_code == 0
    assert [m["role"] for m in model_requests(fake)[2].body["messages"]] == ["system", "user"]
    assert json.loads(transcript.read_text().split("\n")[0])["type"] == "session"
    missing = agentd("cron", "run", "nope", "--home", str(home))
    assert missing.exit_code == 2 and "no cron job 'nope'" in missing.stderr
    assert "journal" in missing.stderr
    assert uncommitted(home) == []


def test_planted_cron_and_heartbeat_files_are_refused_by_name(fake: FakeLLM, home: Path,
                                                             tmp_path: Path) -> None:
    """A cron file that is a symlink (to a valid job outside the home) or a FIFO, and a
    HEARTBEAT.md linked to /proc/self/environ: each costs one error naming it; nothing is
    read, nothing runs, and the daemon keeps ticking (a FIFO read would hang it)."""
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    outside = secret_file(tmp_path / "outside")
    outside.write_text(f"---\nevery: 0.5s\n---\n{SECRET}\n")
    plant(home / "cron/leak.md", "symlink", outside)
    plant(home / "cron/pipe.md", "fifo", outside)
    plant(home / "memory/HEARTBEAT.md", "environ", outside)
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"cron: error: cron/leak.md: it is a symlink, which agentd does not follow")
        d.wait_log(r"cron: error: cron/pipe.md: it is not a regular file")
        d.wait_log(r"heartbeat: error: memory/HEARTBEAT.md: not read: memory/HEARTBEAT.md is "
                   r"\(or goes through\) a symlink")
        d.wait_log(r"heartbeat: nothing due \(0 items\)", n=2)
        assert d.stop() == 0
    assert model_requests(fake) == [] and SECRET not in d.log
