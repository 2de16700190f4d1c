"""The warm path: `agentd run` hands its turn to the home's running daemon
(agentd/warm.py, agentd/daemon/warm.py). Driven with the real CLI in a subprocess, a real
`agentd daemon`, real bwrap and git, against the fake model server on both protocols.

The daemon is started WITHOUT provider keys or base URLs: a warm turn that reaches the
fake server proves the CLI carried them. Every wait is for an event (a log line, a file,
a request the fake server got), never a fixed sleep."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import requires_bwrap, requires_root_bwrap
from daemonkit import Daemon, git, uncommitted, wait_for
from fakellm import FakeLLM
from prockit import Proc, scripted_turn

from agentd import warmwire

AGENTD = [sys.executable, "-m", "agentd"]
KEYS = ("sk-ant-test-KEYVALUE", "sk-test-KEYVALUE")  # the fake fixture's
MODELS = {"openai": "openai:test", "anthropic": "anthropic:claude-test"}
TURN = ({"tool_calls": [{"name": "bash", "arguments": {"command": "echo hi > hello.txt"}}],
         "usage": {"input": 100, "output": 7}},
        {"text": "made hello.txt", "usage": {"input": 120, "output": 3}})


def daemon_env() -> dict[str, str]:
    """The test's environment minus the provider keys and base URLs."""
    return {k: v for k, v in os.environ.items()
            if not k.endswith(("_API_KEY", "_BASE_URL"))}


@pytest.fixture
def daemon(home: Path, fake: FakeLLM) -> Iterator[Daemon]:
    with Daemon(home, env=daemon_env()) as d:
        d.ready()
        yield d
        d.stop()


def cli(workdir: Path, *args: str, cold: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), **({"AGENTD_COLD": "1"} if cold else {})}
    return subprocess.run([*AGENTD, "run", *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=120)


def timeless(text: str) -> str:
    """Output with the turn's duration (and ids) taken out."""
    text = re.sub(r"· [0-9.]+ s$", "· T s", text, flags=re.M)
    return re.sub(r"\d{8}-\d{6}-[0-9a-f]{6}", "RUN", text)


def body(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    data = json.loads(result.stdout)
    for key in ("seconds", "run_id", "session"):
        data.pop(key)
    return data


def warm_turns(d: Daemon) -> int:
    return d.count(r"person: cli pid \d+: turn ok")


def no_key_in(home: Path, d: Daemon) -> None:
    """The keys the CLI carried are nowhere the daemon writes: its log, the home's files
    (transcripts, ledger, runs.jsonl, day log) or the home's history."""
    texts = [d.log, git(home, "log", "-p", "--all")]
    for path in home.rglob("*"):
        if path.is_file() and ".git" not in path.relative_to(home).parts:
            texts.append(path.read_text(errors="replace"))
    assert not [k for k in KEYS for t in texts if k in t]


@requires_bwrap
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_warm_turn_prints_what_a_cold_one_does(
        fake: FakeLLM, home: Path, workdir: Path, daemon: Daemon, protocol: str) -> None:
    model = MODELS[protocol]
    outputs = {}
    for mode in ("cold", "warm"):
        for args in ((), ("--json",)):
            fake.push(*TURN)
            (workdir / "hello.txt").unlink(missing_ok=True)
            r = cli(workdir, "--home", str(home), "-m", model, *args, "make hello",
                    cold=mode == "cold")
            assert r.returncode == 0, r.stderr
            assert (workdir / "hello.txt").read_text() == "hi\n"
            assert uncommitted(home) == []
            outputs[mode, args] = r
    assert warm_turns(daemon) == 2  # each warm turn ran in the daemon, none of the cold
    cold, warm = outputs["cold", ()], outputs["warm", ()]
    assert timeless(warm.stdout) == timeless(cold.stdout)
    assert warm.stderr == cold.stderr == outputs["warm", ("--json",)].stderr == ""
    assert body(outputs["warm", ("--json",)]) == body(outputs["cold", ("--json",)])
    assert "▸ bash echo hi > hello.txt" in outputs["warm", ()].stdout
    # the daemon had no key: the CLI's reached the fake server on every warm call
    posts = [q for q in fake.requests if q.method == "POST"]
    sent = [q.headers.get("x-api-key") or q.headers.get("authorization", "") for q in posts]
    assert len(sent) == 8 and all(any(k in s for k in KEYS) for s in sent)
    rows = [json.loads(x) for x in (home / ".agentd/daemon/runs.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["person"] * 2 and all(r["status"] == "ok"
                                                                 for r in rows)
    trailers = git(home, "log", "-1", "--format=%(trailers:only,unfold)")
    assert "Agentd-Trigger: cli" in trailers
    no_key_in(home, daemon)


@requires_bwrap
def test_continue_and_piped_stdin_reach_the_daemons_turn(
        fake: FakeLLM, home: Path, workdir: Path, daemon: Daemon) -> None:
    fake.push({"text": "noted"}, {"text": "still noted"})
    first = subprocess.run([*AGENTD, "run", "-q", "--home", str(home), "-m", MODELS["openai"],
                            "remember this"], cwd=workdir, input="the piped part\n",
                           text=True, capture_output=True, timeout=120)
    again = cli(workdir, "-q", "--home", str(home), "-c", "and now?")
    assert (first.stdout, again.stdout) == ("noted\n", "still noted\n"), again.stderr
    assert warm_turns(daemon) == 2
    last = [q for q in fake.requests if q.method == "POST"][-1].body["messages"]
    said = json.dumps(last)
    assert "remember this" in said and "the piped part" in said and "and now?" in said
    assert len(list((home / ".agentd/sessions").glob("*.jsonl"))) == 1


@requires_bwrap
def test_an_error_of_the_turn_reads_the_same_warm(
        fake: FakeLLM, home: Path, workdir: Path, daemon: Daemon) -> None:
    """A key the CLI does not have is missing for the warm turn too (the daemon's own
    environment does not stand in), and a failed call exits 1 alike."""
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    cold = cli(workdir, "--home", str(home), "-m", MODELS["anthropic"], "x", cold=True,
               env=env)
    warm = cli(workdir, "--home", str(home), "-m", MODELS["anthropic"], "x", env=env)
    assert cold.returncode == warm.returncode == 2
    assert warm.stderr == cold.stderr == ("error: anthropic: no API key: set "
                                          "$ANTHROPIC_API_KEY\n")
    assert daemon.count(r"turn not started: anthropic: no API key") == 1
    fake.push({"error": 400, "message": "bad request"})
    fake.push({"error": 400, "message": "bad request"})
    results = [cli(workdir, "--home", str(home), "-m", MODELS["openai"], "y", cold=c)
               for c in (True, False)]
    assert [r.returncode for r in results] == [1, 1]
    assert timeless(results[0].stdout) == timeless(results[1].stdout)
    assert results[0].stderr == results[1].stderr


@requires_bwrap
def test_ctrl_c_interrupts_the_daemons_turn(fake: FakeLLM, home: Path, workdir: Path,
                                            daemon: Daemon, tmp_path: Path) -> None:
    marker = f"31.{os.getpid()}7"
    scripted_turn(fake, home, workdir, marker)
    run = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-m",
               MODELS["openai"], "find things")
    try:
        run.until((workdir / "started").exists, "the command to start")
        daemon.wait_log(r"cli pid \d+: ▸ bash")  # it runs in the daemon
        run.proc.send_signal(signal.SIGINT)
        assert run.wait() == 130, run.stderr
    finally:
        run.close()
    assert run.stderr.splitlines() == ["error: interrupted"]
    daemon.wait_log(r"turn interrupted by its client")
    assert git(home, "log", "-1", "--format=%s").strip() == "find things"
    trailers = git(home, "log", "-1", "--format=%(trailers:only,unfold)")
    assert "Agentd-Status: interrupted" in trailers and "Agentd-Trigger: cli" in trailers
    assert (home / "notes/found.md").read_text() == "written before\n"
    assert uncommitted(home) == []
    assert daemon.proc.poll() is None  # the daemon goes on


@requires_bwrap
def test_a_run_behind_another_turn_says_whom_it_waits_for(
        fake: FakeLLM, home: Path, workdir: Path, daemon: Daemon, tmp_path: Path) -> None:
    """As a cold run would: one line naming the holder (here the first run's daemon turn),
    then its turn, in order."""
    hold = threading.Event()
    fake.push({**TURN[0], "hold": hold}, TURN[1], *TURN)
    first = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-q", "-m",
                 MODELS["openai"], "make hello")
    second = None
    try:
        first.until(lambda: [q for q in fake.requests if q.method == "POST"],
                    "the first turn's model call")
        second = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-q", "-m",
                      MODELS["openai"], "make hello")
        second.until(lambda: "waiting" in second.stderr, "the second run to wait")
        hold.set()
        assert first.wait() == 0 and second.wait() == 0, first.stderr + second.stderr
    finally:
        first.close()
        if second is not None:
            second.close()
    assert second.stderr == (f"another turn is running in this home (pid "
                             f"{daemon.proc.pid}, trigger person: cli pid {first.pid}); "
                             "waiting…\n")
    assert first.stdout == second.stdout == "made hello.txt\n" and first.stderr == ""
    assert warm_turns(daemon) == 2


# -- hostile ends ------------------------------------------------------------------------


def pid_file(home: Path, pid: int) -> None:
    (home / ".agentd/daemon.pid").write_text(f"{pid}\n")


def listen_at(home: Path) -> socket.socket:
    """A socket of this test process at the daemon's socket path."""
    folder = warmwire.runtime_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(warmwire.in_dir(fd, warmwire.SOCKET_NAME))
    finally:
        os.close(fd)
    sock.listen()
    sock.settimeout(30)
    return sock


def assert_cold_ok(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push(*TURN)
    r = cli(workdir, "--home", str(home), "-m", MODELS["openai"], "-q", "make hello")
    assert (r.returncode, r.stdout, r.stderr) == (0, "made hello.txt\n", "")


@requires_bwrap
def test_a_symlink_at_the_socket_path_is_not_followed(fake: FakeLLM, home: Path,
                                                      workdir: Path, tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    with listen_at(planted) as sock:
        link = warmwire.runtime_dir(home) / warmwire.SOCKET_NAME
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(warmwire.runtime_dir(planted) / warmwire.SOCKET_NAME)
        pid_file(home, os.getpid())
        assert_cold_ok(fake, home, workdir)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()  # nobody connected


@requires_bwrap
def test_a_socket_not_served_by_the_daemon_gets_no_request(
        fake: FakeLLM, home: Path, workdir: Path) -> None:
    """The peer's pid (SO_PEERCRED) is not the pid file's: the CLI hangs up unheard."""
    with listen_at(home) as sock:
        pid_file(home, os.getppid())  # alive, but not who listens
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = sock.accept()
            with conn:
                got.append(conn.recv(1 << 20))

        t = threading.Thread(target=serve)
        t.start()
        assert_cold_ok(fake, home, workdir)
        t.join(30)
    assert got == [b""]


def fake_daemon(home: Path, answer: Callable[[socket.socket, dict[str, object]], None]
                ) -> tuple[socket.socket, threading.Thread, list[dict[str, object]]]:
    """This test process as the home's daemon (its pid in the pid file): it reads the
    request and answers with `answer`."""
    sock = listen_at(home)
    pid_file(home, os.getpid())
    requests: list[dict[str, object]] = []

    def serve() -> None:
        conn, _ = sock.accept()
        with conn, conn.makefile("rb") as f:
            requests.append(json.loads(f.readline()))
            answer(conn, requests[-1])

    t = threading.Thread(target=serve)
    t.start()
    return sock, t, requests


GARBAGE = {
    "not json": b"this is not json\n",
    "not an object": b"[1, 2]\n",
    "truncated": b'{"t": "wai',
    "unknown frame": b'{"t": "launch"}\n',
    "malformed wait": b'{"t": "wait"}\n',
    "oversized": b'{"t": "text", "d": "' + b"x" * (warmwire.FRAME_LIMIT + 10),
}


@requires_bwrap
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_garbage_from_the_daemon_before_the_turn_means_the_cold_path(
        fake: FakeLLM, home: Path, workdir: Path, garbage: str) -> None:
    sock, t, requests = fake_daemon(home, lambda c, _: c.sendall(GARBAGE[garbage]))
    with sock:
        assert_cold_ok(fake, home, workdir)
        t.join(30)
    req = requests[0]
    assert req["task"] == "make hello" and req["model"] == MODELS["openai"]
    assert req["env"]["OPENAI_API_KEY"] == KEYS[1]  # type: ignore[index]
    assert "ANTHROPIC_API_KEY" not in req["env"]  # type: ignore[operator]  (not needed)


@pytest.mark.parametrize("garbage", ["not json", "truncated", "unknown frame"])
def test_garbage_from_the_daemon_mid_turn_is_one_line(home: Path, workdir: Path,
                                                      fake: FakeLLM, garbage: str) -> None:
    def answer(conn: socket.socket, _: object) -> None:
        conn.sendall(b'{"t": "start"}\n{"t": "text", "d": "partial"}\n' + GARBAGE[garbage])

    sock, t, _ = fake_daemon(home, answer)
    with sock:
        r = cli(workdir, "--home", str(home), "-m", MODELS["openai"], "make hello")
        t.join(30)
    assert r.returncode == 1 and r.stdout == "partial"
    assert r.stderr.startswith("error: the daemon's turn broke off (")
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


CLIENT_GARBAGE = [b"garbage\n", b"[]\n", b'{"v": 1, "task": "x"}\n', b'{"v": 1, "tas',
                  b"x" * (warmwire.FRAME_LIMIT + 10)]


@requires_bwrap
def test_garbage_from_a_client_is_one_warning_and_the_daemon_goes_on(
        fake: FakeLLM, home: Path, workdir: Path, daemon: Daemon) -> None:
    path = warmwire.runtime_dir(home) / warmwire.SOCKET_NAME
    for n, garbage in enumerate(CLIENT_GARBAGE, 1):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.settimeout(30)
            try:
                s.sendall(garbage)
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b""  # hung up on
            except (BrokenPipeError, ConnectionResetError):
                pass  # hung up on mid-way (the oversized one)
        daemon.wait_log(r"warm: warning: client pid \d+: gave up on it", n=n)
    assert "Traceback" not in daemon.log
    fake.push(*TURN)
    r = cli(workdir, "--home", str(home), "-m", MODELS["openai"], "-q", "make hello")
    assert (r.returncode, r.stdout) == (0, "made hello.txt\n")
    assert warm_turns(daemon) == 1


@requires_root_bwrap
def test_a_client_in_another_mount_namespace_runs_its_turn_itself(
        fake: FakeLLM, home: Path, workdir: Path, daemon: Daemon) -> None:
    """As in the agent's sandbox, or a container: the same paths may be other folders."""
    fake.push(*TURN)
    r = subprocess.run(["unshare", "--mount", *AGENTD, "run", "--home", str(home), "-m",
                        MODELS["openai"], "-q", "make hello"], cwd=workdir, text=True,
                       capture_output=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "made hello.txt\n", "")
    daemon.wait_log(r"left to the CLI to run: it runs in another mount namespace")
    assert warm_turns(daemon) == 0


def test_the_socket_is_private_to_the_daemons_user(home: Path, daemon: Daemon) -> None:
    path = warmwire.runtime_dir(home) / warmwire.SOCKET_NAME
    assert oct(path.lstat().st_mode & 0o777) == oct(0o600)


@requires_bwrap
def test_a_daemon_stopped_mid_turn(fake: FakeLLM, home: Path, workdir: Path,
                                   tmp_path: Path) -> None:
    """SIGTERM lets the warm turn finish (the CLI prints it as usual); SIGKILL mid-turn is
    one `error:` line and exit 1, never a hang."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        hold = threading.Event()
        fake.push({**TURN[0], "hold": hold}, TURN[1])
        with Daemon(home, env=daemon_env()) as d:
            d.ready()
            run = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "-q",
                       "-m", MODELS["openai"], "make hello")
            try:
                run.until(lambda: d.count(r"turn started") == 1, "the warm turn to start")
                wait_for(lambda: [q for q in fake.requests if q.method == "POST"], 60,
                         "the model call")
                d.signal(sig)
                if sig == signal.SIGTERM:
                    d.wait_log(r"letting the running person turn")
                hold.set()
                code = run.wait()
            finally:
                run.close()
            if sig == signal.SIGTERM:
                assert (code, run.stdout, run.stderr) == (0, "made hello.txt\n", "")
                assert d.stop() == 0
            else:
                assert code == 1 and run.stderr.startswith("error: the daemon's turn broke")
                assert len(run.stderr.splitlines()) == 1
        fake.requests.clear()
