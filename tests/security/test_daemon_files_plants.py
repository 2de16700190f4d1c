"""`agentd start` with links planted at its own files: with the sandbox off, bash can write
`.agentd/`, and `agentd start` (often as root) truncates and writes the pid file and points
the daemon's output at `.agentd/daemon.log`. A link at either name must be replaced, not
written through. The real CLI and a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from daemonkit import configure

AGENTD = [sys.executable, "-m", "agentd"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTD, *args], capture_output=True, text=True, timeout=90,
                          env=dict(os.environ))


def test_start_writes_no_file_through_a_planted_link(home: Path, tmp_path: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me\n")
    runtime = home / ".agentd"
    runtime.mkdir(exist_ok=True)
    (runtime / "daemon.pid").symlink_to(outside / "victim")
    (runtime / "daemon.log").symlink_to(outside / "log")
    r = _cli("start", "--home", str(home))
    try:
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout.split("(pid ")[1].split(")")[0])
        assert (outside / "victim").read_text() == "keep me\n"
        assert sorted(p.name for p in outside.iterdir()) == ["victim"]
        for name in ("daemon.pid", "daemon.log"):
            assert (runtime / name).is_file() and not (runtime / name).is_symlink()
        assert (runtime / "daemon.pid").read_text().strip() == str(pid)
        assert "daemon: started" in (runtime / "daemon.log").read_text()
    finally:
        _cli("stop", "--home", str(home))
