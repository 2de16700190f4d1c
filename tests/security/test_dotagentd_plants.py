"""The home's `.agentd/` folder itself is hostile input. A symlink there (planted by bash
with the sandbox off, brought by a checkout, left by another user) used to make the host
put its pid file, log, locks, ledger, transcripts and run records in the link's target
(`/etc`, `/root/.ssh`, another home), and a FIFO there hung it. Every command must refuse
such a `.agentd` with one line naming it, exit non-zero, and leave the target untouched.
The real CLI in a subprocess (so a hang is a timeout, not a stuck test run), the real loop
and the real daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import agentd
from daemonkit import configure
from fakellm import FakeLLM

AGENTD = [sys.executable, "-m", "agentd"]
DECOY = {"daemon.pid": "1\n", "usage.jsonl": "{}\n", "git.lock": "", "authorized_keys":
         "ssh-ed25519 AAAA owner\n", "daemon/status.json": "{}\n"}


def _cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTD, *args, "--home", str(home)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ),
                          stdin=subprocess.DEVNULL)


def _decoy(tmp_path: Path) -> Path:
    """A folder of someone else's files, the link's target."""
    decoy = tmp_path / "decoy"
    for rel, text in DECOY.items():
        (decoy / rel).parent.mkdir(parents=True, exist_ok=True)
        (decoy / rel).write_text(text)
    return decoy


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry beneath `folder`: its mode and its bytes (a folder's are empty)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_mode, b"" if p.is_dir() else p.read_bytes())
    return out


def _plant_link(home: Path, decoy: Path) -> None:
    runtime = home / ".agentd"
    if runtime.exists():
        subprocess.run(["rm", "-rf", str(runtime)], check=True)
    runtime.symlink_to(decoy)


def _end_stray_daemon(r: subprocess.CompletedProcess[str]) -> None:
    """`agentd start` that wrongly started a daemon (code that follows the link) must not
    leave it running after the test: end it by the pid it printed."""
    if r.returncode == 0 and "(pid " in r.stdout:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(r.stdout.split("(pid ")[1].split(")")[0]), signal.SIGTERM)


def _refused(r: subprocess.CompletedProcess[str], why: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert f".agentd is {why}" in r.stderr, r.stderr


COMMANDS = [("run", "--model", "openai:test", "hello"), ("history",), ("start",), ("serve",
            "--port", "0"), ("daemon",), ("status",), ("usage",)]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_symlinked_dotagentd_is_refused_and_its_target_untouched(
        command: tuple[str, ...], home: Path, fake: FakeLLM, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTD_BRIDGE_TOKEN", "t" * 32)
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"})
    fake.push({"text": "done"})
    decoy = _decoy(tmp_path)
    before = _snapshot(decoy)
    _plant_link(home, decoy)
    r = _cli(home, *command)
    _end_stray_daemon(r)
    _refused(r, "a symlink")
    assert _snapshot(decoy) == before
    assert (home / ".agentd").is_symlink()  # reported, not silently removed


def test_a_fifo_dotagentd_neither_hangs_nor_is_opened(home: Path, fake: FakeLLM) -> None:
    fake.push({"text": "done"})
    subprocess.run(["rm", "-rf", str(home / ".agentd")], check=True)
    os.mkfifo(home / ".agentd")
    for command in (("run", "--model", "openai:test", "hello"), ("history",), ("start",)):
        r = _cli(home, *command, timeout=60)
        _end_stray_daemon(r)
        _refused(r, "a FIFO")


def test_a_dotagentd_writable_by_others_is_refused(home: Path, fake: FakeLLM) -> None:
    fake.push({"text": "done"})
    runtime = home / ".agentd"
    runtime.mkdir(exist_ok=True)
    runtime.chmod(0o777)
    r = _cli(home, "run", "--model", "openai:test", "hello")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert ".agentd is writable by others" in r.stderr and "chmod go-w" in r.stderr
    runtime.chmod(0o755)
    r = _cli(home, "run", "--model", "openai:test", "hello")
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder away")
def test_a_dotagentd_of_another_user_is_refused(home: Path, fake: FakeLLM) -> None:
    """Checked as root: a folder of uid 65534 in our home is not ours to trust (as another
    user, a root-owned one would be, like sshd's rule)."""
    runtime = home / ".agentd"
    runtime.mkdir(exist_ok=True)
    os.chown(runtime, 65534, 65534)
    r = _cli(home, "history")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert ".agentd belongs to uid 65534" in r.stderr


def test_a_link_below_dotagentd_is_refused_too(home: Path, fake: FakeLLM,
                                              tmp_path: Path) -> None:
    """`.agentd/daemon -> elsewhere`: the daemon's turn lock and state would land there."""
    decoy = _decoy(tmp_path)
    before = _snapshot(decoy)
    runtime = home / ".agentd"
    runtime.mkdir(exist_ok=True)
    subprocess.run(["rm", "-rf", str(runtime / "daemon")], check=True)
    (runtime / "daemon").symlink_to(decoy)
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"})
    r = _cli(home, "start")
    _end_stray_daemon(r)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert ".agentd/daemon is a symlink" in r.stderr
    assert _snapshot(decoy) == before


def test_a_turn_that_swaps_dotagentd_for_a_link_gets_no_host_write_there(
        home: Path, workdir: Path, fake: FakeLLM, tmp_path: Path) -> None:
    """Through the real loop: a trusted turn with the sandbox off moves `.agentd` away and
    links it to a decoy mid-turn. The host's later writes (the ledger's next row, the
    transcript, the run's end) refuse it with the error; the decoy is byte-for-byte as it
    was and nothing new appeared in it."""
    configure(home, sandbox={"mode": "off"})
    decoy = _decoy(tmp_path)
    before = _snapshot(decoy)
    runtime = home / ".agentd"
    swap = f"mv {runtime} {home}/moved && ln -s {decoy} {runtime} && echo swapped"
    fake.push({"tool_calls": [{"name": "bash", "arguments": {"command": swap}}]},
              {"text": "done"})
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", "openai:test", "go")
    assert r.exit_code != 0
    assert ".agentd is a symlink" in r.stderr, r.stderr + r.stdout
    assert [ln for ln in r.stderr.splitlines() if not ln.startswith("warning:")] == [
        f"error: {home}/.agentd is a symlink, not a folder; agentd keeps its own state there "
        "and will not use it: remove it and run agentd again"]
    assert _snapshot(decoy) == before
    # the swap ran: the first call's ledger row is in the real folder, moved aside
    assert (home / "moved" / "usage.jsonl").is_file() and runtime.is_symlink()


def test_a_warm_run_refuses_a_dotagentd_swapped_under_a_running_daemon(
        home: Path, fake: FakeLLM, tmp_path: Path) -> None:
    """`agentd run` next to a running daemon (the warm path): the client checks `.agentd`
    before it reads the pid file or dials the socket, so a link to another home's runtime
    is refused instead of followed."""
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h"})
    r = _cli(home, "start")
    assert r.returncode == 0, r.stderr
    decoy = _decoy(tmp_path)
    before = _snapshot(decoy)
    try:
        os.rename(home / ".agentd", home / "moved")
        (home / ".agentd").symlink_to(decoy)
        fake.push({"text": "done"})
        _refused(_cli(home, "run", "--model", "openai:test", "hello"), "a symlink")
        assert _snapshot(decoy) == before
    finally:
        (home / ".agentd").unlink()
        os.rename(home / "moved", home / ".agentd")
        assert _cli(home, "stop").returncode == 0
