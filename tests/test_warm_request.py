"""The warm path's request, seen from the daemon (agentd/daemon/warm_request.py): a carried
variable os.environ cannot hold is refused when the request is read (not once its turn is
under way), and a CLI in another time zone runs its turn itself, since the daemon's local
clock (the day log's times) cannot follow it. The real daemon, the real CLI, real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import requires_bwrap
from daemonkit import Daemon
from fakellm import FakeLLM

from agentd import warmwire

AGENTD = [sys.executable, "-m", "agentd"]


@pytest.fixture
def daemon(home: Path, fake: FakeLLM) -> Iterator[Daemon]:
    env = {k: v for k, v in os.environ.items() if k != "TZ"}
    with Daemon(home, env=env) as d:
        d.ready()
        yield d
        d.stop()


def _request(workdir: Path, env: dict[str, str | None]) -> bytes:
    ids = warmwire.file_id(workdir)
    return warmwire.encode({
        "v": warmwire.VERSION, "task": "hi", "workdir": str(workdir), "workdir_id": ids,
        "base": str(workdir), "base_id": ids, "model": "openai:test", "session": None,
        "max_steps": None, "umask": warmwire.current_umask(), "env": env, "prefixes": [],
        "present": []})


def test_a_variable_the_environment_cannot_hold_is_refused_up_front(
        home: Path, workdir: Path, daemon: Daemon) -> None:
    path = warmwire.runtime_dir(home) / warmwire.SOCKET_NAME
    for n, env in enumerate(({"SOME_VAR": "\ud800"}, {"\udfff": "x"}), 1):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(path))
            s.sendall(_request(workdir, env))
            assert s.recv(100) == b""  # hung up on, no turn queued
        daemon.wait_log(r"warm: warning: client pid \d+: gave up on it: a request whose "
                        r"'env' is missing or malformed", n=n)
    assert "Traceback" not in daemon.log and "failed:" not in daemon.log


@requires_bwrap
def test_a_cli_in_another_time_zone_runs_its_turn_itself(
        fake: FakeLLM, home: Path, workdir: Path, daemon: Daemon) -> None:
    fake.push({"text": "done"})
    r = subprocess.run([*AGENTD, "run", "--json", "--home", str(home), "-m", "openai:test",
                        "go"], cwd=workdir, env={**os.environ, "TZ": "Asia/Tokyo"},
                       text=True, capture_output=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok", r.stderr
    daemon.wait_log(r"left to the CLI to run: its TZ differs")
    assert daemon.count(r"person: cli pid \d+: turn ok") == 0
