"""The daemon as a process: start/status/stop from the CLI, two starts racing, SIGTERM
during a turn (it finishes and commits), stop --now, a stale .git/index.lock, and the
systemd unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from daemonkit import (
    AGENTD,
    Daemon,
    commit_settings,
    configure,
    git,
    model_requests,
    request_threads,
    settle_fake,
    uncommitted,
    wait_for,
)
from fakellm import FakeLLM


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTD, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def _home(home: Path) -> Path:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"})
    commit_settings(home)
    return home


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_start_status_stop(fake: FakeLLM, home: Path) -> None:
    _home(home)
    (home / "cron/daily.md").write_text('---\nschedule: "0 9 * * *"\n---\nDaily.\n')
    (home / ".agentd").mkdir(exist_ok=True)
    (home / ".agentd/usage.jsonl").write_text(json.dumps({
        "ts": time.time(), "run": "r", "model": "openai:test", "trigger": "cli", "input": 1200,
        "output": 34, "cache_read": 0, "cache_write": 0, "cost": 0.0125}) + "\n")
    r = cli("status", "--home", str(home))
    assert r.returncode == 3 and "not running" in r.stdout
    assert "daily: schedule 0 9 * * * · next 20" in r.stdout  # computed without a daemon
    r = cli("start", "--home", str(home))
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split("(pid ")[1].split(")")[0])
    assert _alive(pid)
    r = cli("status", "--home", str(home))
    assert r.returncode == 0, r.stdout
    assert f"running (pid {pid}, up " in r.stdout
    assert "heartbeat: every 1h · next 20" in r.stdout and "queue: 0 waiting · idle" in r.stdout
    assert "daily: schedule 0 9 * * * · next 20" in r.stdout
    assert "today: 1 model calls, 1,200 in / 34 out tokens (0 cache read), $0.0125" in r.stdout
    info = json.loads(cli("status", "--home", str(home), "--json").stdout)
    assert info["pid"] == pid and info["daemon"]["heartbeat"]["every"] == "1h"
    again = cli("start", "--home", str(home))
    assert again.returncode == 1 and f"already running for {home} (pid {pid})" in again.stderr
    r = cli("stop", "--home", str(home))
    assert r.returncode == 0 and f"agentd stopped (pid {pid})" in r.stdout
    wait_for(lambda: not _alive(pid), 5, "the daemon to exit")
    assert cli("stop", "--home", str(home)).stdout.strip() == "agentd is not running"
    log = (home / ".agentd/daemon.log").read_text()
    assert "daemon: started" in log and "daemon: SIGTERM: stopping" in log
    assert model_requests(fake) == []


def test_two_starts_at_once_one_wins(fake: FakeLLM, home: Path) -> None:
    _home(home)
    procs = [subprocess.Popen([*AGENTD, "start", "--home", str(home)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for _ in range(2)]
    results = [(p.wait(30), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    (winner,) = [out for code, out, _ in results if code == 0]
    (loser,) = [err for code, _, err in results if code == 1]
    pid = int(winner.split("(pid ")[1].split(")")[0])
    assert "already running" in loser and (f"(pid {pid})" in loser or "(pid ?)" in loser)
    assert _alive(pid)
    assert cli("stop", "--home", str(home)).returncode == 0
    wait_for(lambda: not _alive(pid), 5, "the daemon to exit")


def test_stop_waits_for_the_running_turn_to_finish_and_commit(fake: FakeLLM,
                                                              home: Path) -> None:
    _home(home)
    fake.push({"tool_calls": [{"name": "write", "arguments": {
                "path": "outbox/notes-summary.md", "content": "summary\n"}}]},
              {"delay": 1.5, "text": "Summary written."})
    r = cli("start", "--home", str(home))
    assert r.returncode == 0, r.stderr
    (home / "inbox/summarise.txt").write_text("Summarise my notes.\n")
    wait_for(lambda: len(model_requests(fake)) == 2, 15, "the turn's second model call")
    r = cli("stop", "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert "waiting for the running inbox turn (summarise.txt) to finish and commit" in r.stderr
    assert (home / "outbox/summarise.md").read_text() == "Summary written.\n"
    assert "outbox/notes-summary.md" in git(home, "log", "--name-only", "--format=")
    assert uncommitted(home) == []
    log = (home / ".agentd/daemon.log").read_text()
    assert "letting the running inbox turn (summarise.txt) finish" in log
    assert log.rstrip().endswith("daemon: stopped")


def test_second_sigterm_interrupts_and_stop_now_kills(fake: FakeLLM, home: Path) -> None:
    _home(home)
    fake.push({"delay": 3, "text": "never"})
    threads = request_threads()
    (home / "inbox/slow.txt").write_text("Take your time.\n")
    with Daemon(home) as d:
        d.ready()
        wait_for(lambda: len(model_requests(fake)) == 1, 10, "the model call")
        d.signal()
        d.wait_log(r"letting the running inbox turn \(slow.txt\) finish")
        d.signal()
        d.wait_log(r"daemon: stopped")
        # wait for the exit it is making: a third SIGTERM (d.stop()) sent in the moment
        # between this log line and the exit killed it (-15) on a loaded machine
        assert d.proc.wait(20) == 0
    assert (home / "inbox/slow.txt").exists()  # not answered: it runs again next start
    r = cli("start", "--home", str(home))
    assert r.returncode == 0
    pid = int(r.stdout.split("(pid ")[1].split(")")[0])
    r = cli("stop", "--now", "--home", str(home))
    assert r.returncode == 0 and f"agentd stopped (pid {pid})" in r.stdout
    wait_for(lambda: not _alive(pid), 5, "the daemon to die")
    settle_fake(threads)


def test_stale_index_lock_is_cleared_at_start_json_logs(fake: FakeLLM, home: Path) -> None:
    _home(home)
    lock = home / ".git/index.lock"
    lock.write_text("")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    with Daemon(home, "--json-logs") as d:
        d.wait_log(r'"event": "daemon", "msg": "started')
        assert d.stop() == 0
        rows = [json.loads(line) for line in d.log.splitlines()]
    assert {"ts", "level", "event", "msg"} <= set(rows[0])
    assert any(r["event"] == "recovery" and "removed a stale .git/index.lock" in r["msg"]
               for r in rows)
    assert rows[-1]["msg"] == "stopped"
    assert not lock.exists()


def test_service_unit(home: Path, tmp_path: Path) -> None:
    r = cli("service", "--home", str(home))
    assert r.returncode == 0
    assert f"ExecStart={sys.executable} -m agentd daemon --home {home}" in r.stdout
    assert "KillMode=mixed" in r.stdout and "TimeoutStopSec=330" in r.stdout
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    r = subprocess.run([*AGENTD, "service", "--install", "--home", str(home)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    (unit,) = (tmp_path / "cfg/systemd/user").glob("agentd-home-*.service")
    assert "WantedBy=default.target" in unit.read_text()
    assert f"enable --now {unit.name}" in r.stdout


def test_start_warns_about_what_will_fail(home: Path) -> None:
    configure(home, heartbeat={"enabled": False}, sandbox={"mode": "off"})
    with Daemon(home) as d:
        log = d.ready().log
        assert d.stop() == 0
    assert "config: warning: no model configured" in log
    assert "config: warning: sandbox is off" in log
