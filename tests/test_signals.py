"""Signals to `agentd run` and `agentd chat`, through the real CLI in a subprocess with the
fake model server, real bwrap and real git: SIGTERM and SIGHUP mid-tool-call (and a real
terminal closing) stop the turn, which still commits what it did as the agent's (marked
interrupted) and writes its day log, with one line on stderr and the shell's exit status.
A second signal while the turn writes its books is ignored.

Every wait is for an event (a file the command creates, a process, a line of output).
Cgroup checks look only at the pids these tests started, never at the whole host."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import requires_bwrap
from daemonkit import git, uncommitted, wait_for
from fakellm import FakeLLM
from prockit import MODEL, Proc, cgroups_of, scripted_turn, sleepers


def trailers(home: Path) -> dict[str, str]:
    raw = git(home, "log", "-1", "--format=%(trailers:only,unfold)")
    return dict(line.split(": ", 1) for line in raw.splitlines() if ": " in line)


def day_log(home: Path) -> str:
    return (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()



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
