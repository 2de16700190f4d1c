"""Helpers for the signal and leftover tests: an `agentd` subprocess whose output the test
reads, a scripted turn that holds a sandboxed command open, and what a given agentd pid
left on the host (its command cgroups, scratch folders, processes), never anyone else's."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from daemonkit import wait_for
from fakellm import FakeLLM

from agentd.tools import limits
from agentd.tools.sandbox import SCRATCH_PREFIX

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
        """Its exit status, once its input (a pipe, if it has one) is closed."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
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



def scripted_turn(fake: FakeLLM, home: Path, workdir: Path, marker: str) -> None:
    """The model writes a file in the home, then runs a command that says it started and
    sleeps; a third reply is never asked for."""
    fake.push({"tool_calls": [{"name": "write", "arguments": {
                  "path": str(home / "notes/found.md"), "content": "written before\n"}}]},
              {"tool_calls": [{"name": "bash", "arguments": {
                  "command": f"touch {workdir}/started; sleep {marker}"}}]},
              {"text": "never asked"})
