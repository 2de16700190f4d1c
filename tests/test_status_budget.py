"""`agentd status` shows today's spend against each configured budget."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import agentd
from daemonkit import AGENTD, Daemon, commit_settings, configure, wait_for
from fakellm import FakeLLM


def test_status_shows_spend_against_budget(home: Path) -> None:
    cfg = home / "agentd.toml"
    cfg.write_text(cfg.read_text() + "\n[budget]\ndaily_usd = 2.0\n")
    ledger = home / ".agentd/usage.jsonl"
    ledger.parent.mkdir(exist_ok=True)
    row = {"ts": time.time(), "run": "r", "model": "openai:gpt-5.4", "trigger": "cron:x",
           "input": 10, "output": 5, "cache_read": 0, "cache_write": 0, "cost": 0.75}
    ledger.write_text(json.dumps(row) + "\n" + json.dumps({**row, "cost": 1.5}) + "\n")
    r = agentd("status", "--home", str(home))
    assert "budget daily: $2.25 of $2.00 (reached: background turns paused)" in r.stdout
    assert r.exit_code == 3  # the daemon is not running


def test_a_tiny_cap_is_not_rounded_away(home: Path) -> None:
    cfg = home / "agentd.toml"
    cfg.write_text(cfg.read_text() + "\n[budget]\ndaily_usd = 0.004\n")
    r = agentd("status", "--home", str(home))
    assert "budget daily: $0.00 of $0.0040\n" in r.stdout
    usage = agentd("usage", "--home", str(home))
    assert "daily budget: $0.00 of $0.0040" in usage.stdout


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTD, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


def test_status_says_where_the_bridge_is_and_stop_removes_the_pid_file(fake: FakeLLM,
                                                                     home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"})
    commit_settings(home)
    pid_file = home / ".agentd/daemon.pid"
    r = _cli("status", "--home", str(home))
    assert r.returncode == 3 and "bridge: off (agentd serve, or [bridge] enabled" in r.stdout
    assert not pid_file.exists()  # status creates nothing
    for how in ([], ["--now"]):
        r = _cli("start", "--home", str(home))
        assert r.returncode == 0, r.stderr
        assert pid_file.exists()
        info = json.loads(_cli("status", "--json", "--home", str(home)).stdout)
        assert info["bridge"] == {"listening": None, "enabled": False}
        text = _cli("status", "--home", str(home)).stdout
        assert "bridge: off (set [bridge] enabled = true in agentd.toml and restart)" in text
        r = _cli("stop", *how, "--home", str(home))
        assert r.returncode == 0 and "agentd stopped" in r.stdout
        assert not pid_file.exists(), how


def test_a_failed_start_quotes_only_its_own_log_lines(home: Path) -> None:
    log = home / ".agentd/daemon.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text("2026-11-01 old: a line from the previous run\n")
    cfg = home / "agentd.toml"
    good = cfg.read_text()
    cfg.write_text(good + "\n[heartbeat]\nevery = \"soon\"\n")  # the daemon refuses it
    r = _cli("start", "--home", str(home))
    assert r.returncode == 1 and "the daemon exited at start" in r.stderr
    assert "previous run" not in r.stderr and "heartbeat" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (home / ".agentd/daemon.pid").exists()


def test_status_json_drops_a_deleted_cron_job_at_once(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"})
    commit_settings(home)
    for name in ("keep", "gone"):
        (home / f"cron/{name}.md").write_text('---\nschedule: "0 9 * * *"\n---\nHi.\n')
    with Daemon(home) as d:
        d.ready()

        def live_jobs() -> list[str]:
            info = json.loads(_cli("status", "--json", "--home", str(home)).stdout)
            return [j["name"] for j in (info["daemon"] or {}).get("cron", [])]
        wait_for(lambda: live_jobs() == ["gone", "keep"], 10, "both jobs in status.json")
        (home / "cron/gone.md").unlink()
        info = json.loads(_cli("status", "--json", "--home", str(home)).stdout)
        assert [j["name"] for j in info["daemon"]["cron"]] == ["keep"]
        assert [r["name"] for r in info["cron"]] == ["keep"]
        assert d.stop() == 0


@pytest.mark.parametrize("model, warned", [("openai:mystery-1", True),
                                           ("openai:gpt-4o-mini", False),
                                           ("openai:gpt-5-nano", False)])
def test_a_money_cap_warns_when_the_model_has_no_price(fake: FakeLLM, home: Path,
                                                      workdir: Path, model: str,
                                                      warned: bool) -> None:
    cfg = home / "agentd.toml"
    cfg.write_text(cfg.read_text() + "\n[budget]\ndaily_usd = 5.0\n")
    fake.push({"text": "ok"})
    r = agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", model, "hi")
    assert r.exit_code == 0, r.stderr
    warning = (f"warning: {model} has no price, so the money caps of [budget] do not apply "
               "to it: declare its price under [prices]")
    assert (warning in r.stderr) is warned


def test_the_daemon_warns_at_start_about_an_unpriced_model(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:mystery-1"}, heartbeat={"every": "1h"})
    with (home / "agentd.toml").open("a") as f:
        f.write("\n[budget]\nmonthly_usd = 20.0\n")
    with Daemon(home) as d:
        log = d.ready().log
        assert d.stop() == 0
    assert "warning: openai:mystery-1 has no price, so the money caps" in log
