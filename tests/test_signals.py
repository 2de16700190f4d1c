"""Signals to `agentd run` and `agentd chat`, through the real CLI in a subprocess with the
fake model server, real bwrap and real git: SIGTERM and SIGHUP mid-tool-call stop the turn,
which still commits what it did as the agent's (marked interrupted) and writes its day log,
with one line on stderr and the shell's exit status. A `kill -9` leaves a cgroup (and, for
an untrusted turn, a scratch folder) behind: the next agentd start removes them.

Every wait is for an event (a file the command creates, a process, a log line). Cgroup
checks look only at the pids these tests started, never at the whole host."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

import pytest
from conftest import requires_bwrap
from daemonkit import Daemon, configure, git, uncommitted, wait_for
from fakellm import FakeLLM

from agentd.tools import leftovers, limits
from agentd.tools.sandbox import SCRATCH_PREFIX, sweep_leftovers

AGENTD = [sys.executable, "-m", "agentd"]
MODEL = "openai:test"


class Proc:
    """An `agentd` subprocess whose stdout and stderr go to files the test can read."""

    def __init__(self, tmp: Path, *args: str, stdin: int = subprocess.DEVNULL):
        name = f"{args[0]}-{time.monotonic_ns()}"
        self.out_path, self.err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        self._files: list[IO[bytes]] = [self.out_path.open("wb"), self.err_path.open("wb")]
        self.proc = subprocess.Popen([*AGENTD, *args], stdout=self._files[0],
                                     stderr=self._files[1], stdin=stdin)
        self.pid = self.proc.pid

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def until(self, check: Callable[[], object], what: str) -> None:
        """Wait for `check`; fail at once, with the output, if agentd exits first."""
        def seen() -> bool:
            if check():
                return True
            assert self.proc.poll() is None, (f"agentd exited ({self.proc.returncode}) "
                                              f"before {what}:\n{self.stdout}{self.stderr}")
            return False
        wait_for(seen, 30, what)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        for f in self._files:
            f.close()


def cgroups_of(pid: int) -> list[str]:
    """The command cgroups named after process `pid` (this test's agentd), nobody else's."""
    base = limits.pids_base()
    assert base is not None, "no pids cgroup on this host (see test_limits.py)"
    return sorted(p.name for p in base.iterdir() if p.name.startswith(f"agentd-{pid}-"))


def scratch_of(pid: int) -> list[str]:
    tmp = Path(tempfile.gettempdir())
    return sorted(p.name for p in tmp.glob(f"{SCRATCH_PREFIX}{pid}-*"))


def sleepers(marker: str) -> list[int]:
    """Pids of processes whose command line holds `marker` (a unique sleep duration)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def trailers(home: Path) -> dict[str, str]:
    raw = git(home, "log", "-1", "--format=%(trailers:only,unfold)")
    return dict(line.split(": ", 1) for line in raw.splitlines() if ": " in line)


def day_log(home: Path) -> str:
    return (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()


def scripted_turn(fake: FakeLLM, home: Path, workdir: Path, marker: str) -> None:
    """The model writes a file in the home, then runs a command that says it started and
    sleeps; a third reply is never asked for."""
    fake.push({"tool_calls": [{"name": "write", "arguments": {
                  "path": str(home / "notes/found.md"), "content": "written before\n"}}]},
              {"tool_calls": [{"name": "bash", "arguments": {
                  "command": f"touch {workdir}/started; sleep {marker}"}}]},
              {"text": "never asked"})


def assert_interrupted_commit(home: Path, task: str, trigger: str) -> None:
    """The last commit is the agent's turn, marked interrupted, with what it wrote."""
    assert git(home, "log", "-1", "--format=%s").strip() == task
    t = trailers(home)
    assert t["Agentd-Status"] == "interrupted" and t["Agentd-Run"]
    assert t["Agentd-Trigger"].startswith(trigger)
    assert "notes/found.md" in git(home, "log", "-1", "--name-only", "--format=").split()
    assert "Manual edits" not in git(home, "log", "--format=%s")
    assert uncommitted(home) == []
    day = day_log(home)
    assert task in day and "interrupted" in day


@requires_bwrap
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_tool_call_commits_the_work_as_interrupted(
        fake: FakeLLM, home: Path, workdir: Path, tmp_path: Path, sig: signal.Signals) -> None:
    marker = f"30.{os.getpid()}{int(sig)}"
    scripted_turn(fake, home, workdir, marker)
    run = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-m", MODEL,
               "find things")
    try:
        run.until((workdir / "started").exists, "the command to start")
        assert cgroups_of(run.pid)  # the command runs in its cgroup now
        run.proc.send_signal(sig)
        assert run.wait() == 128 + sig, run.stderr
    finally:
        run.close()
    assert run.stderr.splitlines() == [f"error: interrupted by {sig.name}"]
    assert (home / "notes/found.md").read_text() == "written before\n"
    assert_interrupted_commit(home, "find things", "cli")
    assert cgroups_of(run.pid) == [] and sleepers(marker) == []
    assert len([r for r in fake.requests if r.method == "POST"]) == 2


@requires_bwrap
def test_closing_the_terminal_commits_the_work_as_interrupted(
        fake: FakeLLM, home: Path, workdir: Path) -> None:
    """The real SIGHUP: `agentd run` on a pseudo-terminal that is its controlling terminal,
    whose other side closes. Writing to it fails from then on, which must not cut the
    turn's books short."""
    marker = f"30.{os.getpid()}44"
    scripted_turn(fake, home, workdir, marker)
    launch = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
              "os.execv(sys.executable, [sys.executable, '-m', 'agentd', *sys.argv[1:]])")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", launch, "run", "--home", str(home), "-C",
                             str(workdir), "-m", MODEL, "find things"], stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        def started() -> bool:
            while select.select([master], [], [], 0)[0]:  # keep the terminal drained
                os.read(master, 65536)
            return (workdir / "started").exists()
        wait_for(started, 30, "the command to start")
        os.close(master)  # the terminal window closes
        assert proc.wait(60) == 128 + signal.SIGHUP
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert_interrupted_commit(home, "find things", "cli")
    assert cgroups_of(proc.pid) == [] and sleepers(marker) == []


@requires_bwrap
def test_a_second_signal_while_unwinding_is_ignored(fake: FakeLLM, home: Path, workdir: Path,
                                                    tmp_path: Path) -> None:
    """The second arrives once the command is gone, while the turn writes its books (or
    just after): either way the first decides the exit and the commit is made."""
    marker = f"30.{os.getpid()}77"
    scripted_turn(fake, home, workdir, marker)
    run = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-m", MODEL,
               "find things")
    try:
        run.until((workdir / "started").exists, "the command to start")
        wait_for(lambda: sleepers(marker), 10, "the sandboxed sleep")
        run.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not sleepers(marker), 10, "the command to be killed")
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGHUP)
        assert run.wait() == 143, run.stderr
    finally:
        run.close()
    assert run.stderr.splitlines() == ["error: interrupted by SIGTERM"]
    assert_interrupted_commit(home, "find things", "cli")
    assert cgroups_of(run.pid) == []


@requires_bwrap
def test_chat_ends_on_sigterm_after_the_turn_commits(fake: FakeLLM, home: Path,
                                                     workdir: Path, tmp_path: Path) -> None:
    marker = f"30.{os.getpid()}88"
    scripted_turn(fake, home, workdir, marker)
    chat = Proc(tmp_path, "chat", "--home", str(home), "-C", str(workdir), "-m", MODEL,
                stdin=subprocess.PIPE)
    try:
        chat.type("find things")
        chat.until((workdir / "started").exists, "the command to start")
        chat.proc.send_signal(signal.SIGTERM)
        assert chat.wait() == 143, chat.stderr
    finally:
        chat.close()
    assert chat.stderr.splitlines() == ["error: interrupted by SIGTERM"]
    assert_interrupted_commit(home, "find things", "chat:")
    assert cgroups_of(chat.pid) == [] and sleepers(marker) == []


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
    left = cgroups_of(run.pid)
    assert left  # what this test is about: a killed agentd can't clean up
    fake.push({"text": "fine"})
    after = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-m", MODEL,
                 "next")
    try:
        assert after.wait() == 0, after.stderr
    finally:
        after.close()
    assert cgroups_of(run.pid) == [] and sleepers(marker) == []


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


STUCK = """
import asyncio, os, signal, sys
from agentd import interrupt
interrupt.UNWIND_GRACE = float(sys.argv[1])

async def turn():
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:  # books that never finish (a hung git, say)
        print("unwinding", flush=True)
        await asyncio.shield(asyncio.sleep(float(sys.argv[2])))
        print("books written", flush=True)
        raise

async def main():
    asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
    return await interrupt.interruptible(turn())

result, sig = asyncio.run(main())
print("returned", sig.name, flush=True)
"""


def _stuck(grace: float, books: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", STUCK, str(grace), str(books)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_signal_is_ignored_while_the_books_are_written() -> None:
    proc = _stuck(grace=60, books=2.0)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "unwinding\n"
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=30)
    assert out == "books written\nreturned SIGTERM\n" and err == "" and proc.returncode == 0


def test_past_the_grace_a_second_signal_ends_a_stuck_unwinding() -> None:
    proc = _stuck(grace=0, books=60)  # any later signal is past a grace of 0 s
    assert proc.stdout is not None
    assert proc.stdout.readline() == "unwinding\n"
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 129 and "books written" not in out
    assert err == "error: interrupted by SIGHUP again, 0s into unwinding: stopping now\n"
