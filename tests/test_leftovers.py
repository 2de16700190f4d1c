"""What a killed agentd leaves on the host (its commands' cgroups, an untrusted turn's
scratch folder, with the sandbox off its running command) is removed by the next agentd
start or by `agentd stop --now`, through the real CLI and daemon; and the sweep, by name,
never touches what a live process owns.

Every wait is for an event (a file, a process, a log line). Cgroup checks look only at the
pids these tests started, never at the whole host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import requires_bwrap
from daemonkit import Daemon, configure, git, wait_for
from fakellm import FakeLLM
from prockit import AGENTD, MODEL, Proc, cgroups_of, scratch_of, scripted_turn, sleepers

from agentd.tools import leftovers, limits
from agentd.tools.sandbox import SCRATCH_PREFIX, sweep_leftovers


@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=requires_bwrap), "off"])
def test_kill_9_leftovers_are_removed_by_the_next_run(fake: FakeLLM, home: Path,
                                                      workdir: Path, tmp_path: Path,
                                                      mode: str) -> None:
    """With the sandbox off nothing takes the command down with agentd: the next run
    kills it (it is still in the dead agentd's cgroup) before removing the cgroup."""
    marker = f"30.{os.getpid()}9{len(mode)}"
    configure(home, sandbox={"mode": mode})
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "sandbox")
    scripted_turn(fake, home, workdir, marker)
    run = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-m", MODEL,
               "find things")
    try:
        run.until((workdir / "started").exists, "the command to start")
        wait_for(lambda: sleepers(marker), 10, "the sleep")
        run.proc.kill()
        assert run.wait() == -signal.SIGKILL
    finally:
        run.close()
    assert cgroups_of(run.pid)  # what this test is about: a killed agentd can't clean up
    if mode == "off":
        assert sleepers(marker)  # nothing took its command down with it
    fake.push({"text": "fine"})
    after = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-m", MODEL,
                 "next")
    try:
        assert after.wait() == 0, after.stderr
    finally:
        after.close()
    assert cgroups_of(run.pid) == [] and sleepers(marker) == []
    # the killed turn's work is the agent's: a recovery commit, never "Manual edits"
    log = git(home, "log", "--format=%s%n%b%n--")
    assert "Manual edits" not in log
    sha = git(home, "log", "-1", "--format=%H", "--grep", "^Recovery: find things").strip()
    assert sha, log
    body = git(home, "show", "-s", "--format=%b", sha)
    assert "Agentd-Trigger: recovery" in body and "Agentd-Status: killed" in body
    assert "notes/found.md" in git(home, "show", "--name-only", "--format=", sha)
    day = "".join(p.read_text() for p in (home / "memory/daily").glob("*.md"))
    assert "· recovery · -" in day and "killed during this cli turn" in day
    assert git(home, "status", "--porcelain", "--", "notes") == ""


@requires_bwrap
def test_a_killed_daemons_untrusted_turn_leaves_nothing_after_the_next_run(
        fake: FakeLLM, home: Path, workdir: Path, tmp_path: Path) -> None:
    """An inbox turn (untrusted: it gets a scratch folder) in a daemon that is `kill -9`ed
    mid-command: the next `agentd run` removes the daemon's cgroup and scratch folder."""
    marker = f"30.{os.getpid()}55"
    configure(home, {"model": MODEL}, heartbeat={"enabled": False})
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "settings")
    fake.push({"tool_calls": [{"name": "bash", "arguments": {"command": f"sleep {marker}"}}]},
              {"text": "never asked"})
    with Daemon(home) as d:
        d.ready()
        (home / "inbox/job.txt").write_text("Please take a nap.\n")
        wait_for(lambda: sleepers(marker), 30, "the inbox turn's command")
        assert scratch_of(d.proc.pid) and cgroups_of(d.proc.pid)
        d.proc.kill()
        d.proc.wait(10)
    fake.push({"text": "fine"})
    after = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "next")
    try:
        assert after.wait() == 0, after.stderr
    finally:
        after.close()
    assert scratch_of(d.proc.pid) == [] and cgroups_of(d.proc.pid) == []
    assert sleepers(marker) == []


def test_the_sweep_never_touches_what_a_live_process_owns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By name: a live owner (this test process) keeps its cgroup and scratch folder; one
    whose pid is gone, or now belongs to a process started later (pid reuse: the start
    time differs), loses them. A name of an older agentd (no start time) goes only when
    its pid is gone."""
    base = limits.pids_base()
    if base is None:
        pytest.fail("no pids cgroup on this host (see test_limits.py)")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    me, start = os.getpid(), leftovers.start_time(os.getpid())
    assert leftovers.tag() == f"{me}-{start}"
    keep = [f"agentd-{me}-{start}-900", f"agentd-{me}-901", f"agentd-probe-{me}-{start}"]
    drop = [f"agentd-{me}-1{start}-902", f"agentd-{gone.pid}-1-903", f"agentd-{gone.pid}-904",
            f"agentd-probe-{gone.pid}"]
    keep_dirs = [f"{SCRATCH_PREFIX}{me}-{start}-abc", f"{SCRATCH_PREFIX}old_style"]
    drop_dirs = [f"{SCRATCH_PREFIX}{gone.pid}-1-xyz", f"{SCRATCH_PREFIX}{me}-1{start}-q"]
    for name in keep + drop:
        (base / name).mkdir()
    for name in keep_dirs + drop_dirs:
        (tmp_path / name / "sub").mkdir(parents=True)
    try:
        removed = {p.name for p in sweep_leftovers()}
        assert removed >= set(drop + drop_dirs) and not removed & set(keep + keep_dirs)
        assert all((base / n).exists() for n in keep) and not any(
            (base / n).exists() for n in drop)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(
            SCRATCH_PREFIX)) == sorted(keep_dirs)
    finally:
        for name in keep + drop:
            with contextlib.suppress(OSError):
                (base / name).rmdir()


@requires_bwrap
def test_stop_now_leaves_no_cgroup_scratch_or_process(fake: FakeLLM, home: Path) -> None:
    """`agentd stop --now` SIGKILLs the daemon mid-command, then removes what it left."""
    marker = f"30.{os.getpid()}66"
    configure(home, {"model": MODEL}, heartbeat={"enabled": False})
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "settings")
    fake.push({"tool_calls": [{"name": "bash", "arguments": {"command": f"sleep {marker}"}}]},
              {"text": "never asked"})
    r = subprocess.run([*AGENTD, "start", "--home", str(home)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split("(pid ")[1].split(")")[0])
    try:
        (home / "inbox/job.txt").write_text("Please take a nap.\n")
        wait_for(lambda: sleepers(marker), 30, "the inbox turn's command")
        assert scratch_of(pid) and cgroups_of(pid)
        r = subprocess.run([*AGENTD, "stop", "--now", "--home", str(home)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert leftovers.start_time(pid) is None
    assert cgroups_of(pid) == [] and scratch_of(pid) == [] and sleepers(marker) == []
