"""§9 attacks 1-7 (security.md): escaping the filesystem, stealing secrets, reaching the
network or the host's sockets, gaining privileges, and tampering with the runtime's own
files. Each runs through `agentd run` with real bubblewrap; the host is checked afterwards."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from attack import git_state, requires_bwrap, run_attack
from fakellm import FakeLLM

pytestmark = requires_bwrap

KEY = "sk-test-KEYVALUE"  # what the fake fixture exports as OPENAI_API_KEY


def test_1_writes_outside_are_read_only(fake: FakeLLM, home: Path, workdir: Path,
                                        tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    a = run_attack(fake, home, workdir,
                   "touch /etc/agentd-x; echo $?",
                   f"touch ../outside/x {outside}/y; echo $?",
                   f"ln -s {outside} link && touch link/z; echo $?",
                   "ln /etc/hostname hard; echo $?",
                   {"name": "write", "arguments": {"path": "link/w", "content": "x"}},
                   {"name": "write", "arguments": {"path": "../outside/w", "content": "x"}})
    assert "Read-only file system" in a.results[0]
    # the test's tmp folder is under the host's /tmp: inside, a tmpfs hides it altogether
    assert "No such file or directory" in a.results[1] and a.results[1].endswith("1\n")
    assert "No such file or directory" in a.results[2] and a.results[2].endswith("1\n")
    assert "Invalid cross-device link" in a.results[3]  # no hardlink out of a bind mount
    assert a.errors[4] and "leads outside" in a.results[4]  # link/w: through the symlink
    assert a.errors[5] and "outside the home" in a.results[5]
    assert not Path("/etc/agentd-x").exists() and list(outside.iterdir()) == []


def test_2_credentials_of_the_host_are_invisible(fake: FakeLLM, home: Path,
                                                 workdir: Path) -> None:
    user_home = Path(os.environ["HOME"])  # the scratch HOME conftest set for this test
    (user_home / ".ssh").mkdir()
    (user_home / ".ssh" / "id_rsa").write_text("PRIVATE-SSH-MATERIAL\n")
    (user_home / ".aws").mkdir()
    (user_home / ".aws" / "credentials").write_text("aws_secret=AWS-MATERIAL\n")
    a = run_attack(fake, home, workdir,
                   f"cat {user_home}/.ssh/id_rsa {user_home}/.aws/credentials; ls -A /root /home",
                   {"name": "read", "arguments": {"path": f"{user_home}/.ssh/id_rsa"}})
    assert a.results[0].count("No such file or directory") == 2
    assert a.errors[1] and "outside the home" in a.results[1]
    for text in (a.seen, a.session, a.cli.stdout):
        assert "PRIVATE-SSH-MATERIAL" not in text and "AWS-MATERIAL" not in text


def test_3_the_api_key_is_not_in_the_sandbox(fake: FakeLLM, home: Path, workdir: Path) -> None:
    a = run_attack(fake, home, workdir,
                   "env; cat /proc/1/environ /proc/1/cmdline; echo; "
                   "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | sort -u",
                   f"ls /proc/{os.getpid()} 2>&1; ps -e --no-headers | wc -l")
    for text in a.results:  # absent, not merely redacted
        assert KEY not in text and "[REDACTED" not in text and "OPENAI_API_KEY" not in text
    assert "--clearenv" in a.results[0]  # pid 1 really was read
    assert "No such file or directory" in a.results[1]  # agentd's pid isn't visible
    assert int(a.results[1].split()[-1]) < 10


def test_4_no_network(fake: FakeLLM, home: Path, workdir: Path,
                      listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    llm_port = fake.openai_url.split(":")[2].split("/")[0]  # agentd's own loopback peer
    a = run_attack(fake, home, workdir,
                   f"echo hi > /dev/tcp/127.0.0.1/{port}; echo rc=$?",
                   f"curl -sS -m 3 http://127.0.0.1:{llm_port}/v1/models; echo rc=$?",
                   "time (getent hosts example.com; echo rc=$?)",
                   "timeout 3 bash -c 'echo > /dev/tcp/1.1.1.1/80'; echo rc=$?",
                   "python3 -c \"import socket; socket.create_connection(('10.0.0.1', 80), 2)\"",
                   "ip -o link 2>/dev/null | wc -l; cat /proc/net/dev | tail -n +3 | wc -l")
    for i in range(4):
        assert "rc=0" not in a.results[i], a.results[i]
    assert "Connection refused" in a.results[0]
    assert "real\t0m0." in a.results[2]  # DNS fails fast, no timeout
    assert "Network is unreachable" in a.results[3] and "Network is unreachable" in a.results[4]
    assert a.results[5].split()[-1] == "1"  # only lo
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert all(q.path != "/v1/models" for q in fake.requests)


def test_5_host_unix_sockets(fake: FakeLLM, home: Path, workdir: Path,
                             tmp_path: Path) -> None:
    visible, hidden = workdir / "docker.sock", tmp_path / "dbus.sock"
    servers = []
    for path in (visible, hidden):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.listen()
        s.setblocking(False)
        servers.append(s)
    try:
        probe = ("python3 -c \"import socket,sys; s=socket.socket(socket.AF_UNIX); "
                 "s.connect(sys.argv[1])\" {} 2>&1 | tail -1")
        a = run_attack(fake, home, workdir, probe.format(visible), probe.format(hidden),
                       f"curl -sS --unix-socket {visible} http://x/ 2>&1; echo rc=$?")
        for s in servers:
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in servers:
            s.close()
    assert "PermissionError" in a.results[0]  # seccomp: no AF_UNIX socket at all
    assert "PermissionError" in a.results[1]
    assert "rc=0" not in a.results[2]


def test_6_no_privilege(fake: FakeLLM, home: Path, workdir: Path) -> None:
    a = run_attack(fake, home, workdir,
                   "mount -o remount,rw / ; mount -o remount,bind,rw / ; touch /x; echo END",
                   "unshare -U true; unshare -m true; echo END",
                   "cp /bin/bash ./rootbash && chmod 4755 rootbash; ls -l rootbash; "
                   "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
                   "sudo -n true 2>&1 | tail -1; su -c true 2>&1 | tail -1; echo END")
    refused = a.results[0].lower()  # as root's uid 0 mapped in, or as the sandbox uid
    assert "read-only file system" in refused
    assert "permission denied" in refused or "must be superuser" in refused
    assert a.results[1].count("Operation not permitted") == 2
    assert "-rwxr-xr-x" in a.results[2]  # the setuid bit was refused
    assert "CapEff:\t0000000000000000" in a.results[2] and "NoNewPrivs:\t1" in a.results[2]
    assert not (workdir / "rootbash").stat().st_mode & 0o6000
    assert not Path("/x").exists()


def test_7_the_runtimes_files_stay_read_only(fake: FakeLLM, home: Path, workdir: Path) -> None:
    before = git_state(home)
    toml = (home / "agentd.toml").read_text()
    agentd_dir = home / ".agentd"
    a = run_attack(
        fake, home, workdir,
        f"cd {home}; echo 'touch /tmp/pwned' > .git/hooks/pre-commit; chmod +x "
        ".git/hooks/pre-commit; git config core.hooksPath /tmp; echo 'mode = \"off\"' >> "
        "agentd.toml; touch .agentd/planted; mv .git git2; rm -rf .agentd; "
        "ln -sfn /tmp .agentd; echo END",
        {"name": "write", "arguments": {"path": f"{home}/.git/config", "content": "x"}},
        {"name": "edit", "arguments": {"path": f"{home}/agentd.toml", "old_text": "[sandbox]",
                                       "new_text": "[sandbox]\nmode = \"off\""}},
        {"name": "write", "arguments": {"path": f"{home}/.agentd/sessions/x.jsonl",
                                        "content": "{}"}})
    assert "END" in a.results[0] and "Read-only file system" in a.results[0]
    assert all(a.errors[1:]) and all("protected" in r for r in a.results[1:])
    assert git_state(home) == before and (home / "agentd.toml").read_text() == toml
    assert agentd_dir.is_dir() and not agentd_dir.is_symlink()
    assert not (agentd_dir / "planted").exists() and not (home / "git2").exists()
