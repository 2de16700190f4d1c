"""Issue 10, part 3 (and 4's masking): the sandbox runs unprivileged, makes no set-id file or
device, opens no exotic socket, can't fill RAM through a tmpfs, and strangers don't see the
owner's private data. Each attack runs through the real loop and real bubblewrap, from a
trusted (CLI) turn and from an untrusted (webhook) one; the host is checked afterwards.

What each test stands on (checked by reverting that defence and seeing the test fail):
- root-only files, file ownership, handing over: the drop to [sandbox] uid
  (agentd/tools/owner.py; revert: `sandbox_owner` returning None);
- set-id files, socket families: the seccomp rules (agentd/tools/seccomp.py); a device
  mknod is refused by the kernel too (no CAP_MKNOD in a user namespace), so for devices the
  filter is belt and braces, pinned by tests/test_seccomp.py;
- /dev/shm and the masks: `--size` before every `--tmpfs` and /dev remounted read-only;
- .agentd: the tmpfs over it for untrusted turns and the file tools' `hidden_paths`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from attack import Attack, marker, run_attack, run_untrusted, set_sandbox
from conftest import SANDBOX_OWNER, requires_bwrap, requires_root_bwrap
from fakellm import FakeLLM

pytestmark = requires_bwrap

Drive = Callable[..., Attack]


@pytest.fixture(params=["trusted", "untrusted"])
def drive(request: pytest.FixtureRequest) -> Drive:
    """Run the attack from the owner's CLI turn, or from a stranger's webhook turn."""
    return run_attack if request.param == "trusted" else run_untrusted


@pytest.fixture
def root_secret() -> Iterator[Path]:
    """A 0600 root file outside every masked folder, as a key under /opt would be."""
    folder = Path("/opt") / marker()
    folder.mkdir(mode=0o755)
    secret = folder / "key.pem"
    secret.write_text("ROOT-ONLY-MATERIAL\n")
    secret.chmod(0o600)
    try:
        yield secret
    finally:
        secret.unlink()
        folder.rmdir()


def setid_files(*roots: Path) -> list[str]:
    """Every file with a set-uid or set-gid bit under `roots` (symlinks not followed)."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder, name)
                if not path.is_symlink() and path.lstat().st_mode & 0o6000:
                    found.append(str(path))
    return found


@requires_root_bwrap
def test_root_only_files_are_unreadable(drive: Drive, fake: FakeLLM, home: Path,
                                        workdir: Path, root_secret: Path) -> None:
    a = drive(fake, home, workdir, f"cat /etc/shadow {root_secret}; id -u",
              {"name": "bash", "arguments": {"command": "grep -E '^(Uid|Gid|CapEff|CapPrm"
                                                        "|CapBnd|NoNewPrivs)' /proc/self/status"}})
    assert a.results[0].count("Permission denied") == 2, a.results[0]
    assert "65534" in a.results[0]
    assert "ROOT-ONLY-MATERIAL" not in a.seen and "root:" not in a.seen
    status = dict(line.split(":\t", 1) for line in a.results[1].splitlines() if ":\t" in line)
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    for caps in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"] == "1"


def test_no_set_id_file_can_be_made(drive: Drive, fake: FakeLLM, home: Path,
                                    workdir: Path) -> None:
    script = ("import os, stat\n"
              "for how, make in (\n"
              "    ('mknod', lambda p: os.mknod(p, stat.S_IFREG | 0o4755)),\n"
              "    ('mknod-sgid', lambda p: os.mknod(p, stat.S_IFREG | 0o2755)),\n"
              "    ('open', lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o4755))),\n"
              "):\n"
              "    try:\n"
              "        make(f'{os.environ[\"AGENTD_HOME\"]}/outbox/{how}')\n"
              "        print(how, 'MADE')\n"
              "    except PermissionError as e:\n"
              "        print(how, 'EPERM', e.errno)\n"
              "os.mknod(os.environ['AGENTD_HOME'] + '/outbox/plain', stat.S_IFREG | 0o644)\n"
              "os.mkfifo(os.environ['AGENTD_HOME'] + '/outbox/fifo')\n"
              "print('PLAIN-AND-FIFO-OK')\n")
    a = drive(fake, home, workdir, f"python3 -c {_quote(script)}")
    for how in ("mknod", "mknod-sgid", "open"):
        assert f"{how} EPERM 1" in a.results[0], a.results[0]
    assert "MADE" not in a.results[0] and "PLAIN-AND-FIFO-OK" in a.results[0]
    assert setid_files(home, workdir) == []
    assert not (home / "outbox" / "mknod").exists()


def test_no_device_node_can_be_made(drive: Drive, fake: FakeLLM, home: Path,
                                    workdir: Path) -> None:
    script = ("import os, stat\n"
              "for kind in (stat.S_IFCHR, stat.S_IFBLK):\n"
              "    try:\n"
              "        os.mknod(os.environ['AGENTD_HOME'] + f'/outbox/dev{kind}', kind | 0o666,\n"
              "                 os.makedev(1, 3)); print('MADE')\n"
              "    except PermissionError: print('EPERM')\n")
    a = drive(fake, home, workdir, f"python3 -c {_quote(script)}")
    assert a.results[0].split() == ["EPERM", "EPERM"]
    assert not any(p.name.startswith("dev") for p in (home / "outbox").iterdir())


def test_only_inet_sockets(drive: Drive, fake: FakeLLM, home: Path, workdir: Path) -> None:
    script = ("import socket\n"
              "for name in ('AF_VSOCK', 'AF_PACKET', 'AF_NETLINK', 'AF_ALG', 'AF_UNIX',\n"
              "             'AF_INET', 'AF_INET6'):\n"
              "    try:\n"
              "        socket.socket(getattr(socket, name), socket.SOCK_DGRAM if name in\n"
              "                      ('AF_NETLINK',) else socket.SOCK_STREAM if name != \n"
              "                      'AF_ALG' else socket.SOCK_SEQPACKET).close()\n"
              "        print(name, 'OPEN')\n"
              "    except OSError as e: print(name, 'REFUSED', e.errno)\n")
    a = drive(fake, home, workdir, f"python3 -c {_quote(script)}")
    lines = dict(line.split(" ", 1) for line in a.results[0].splitlines())
    for name in ("AF_VSOCK", "AF_PACKET", "AF_NETLINK", "AF_ALG"):
        assert lines[name] == "REFUSED 97", (name, lines[name])  # EAFNOSUPPORT
    assert lines["AF_UNIX"] == "REFUSED 1"  # EPERM, as before
    assert lines["AF_INET"] == "OPEN" and lines["AF_INET6"] == "OPEN"


def test_dev_shm_and_every_tmpfs_are_capped(drive: Drive, fake: FakeLLM, home: Path,
                                            workdir: Path) -> None:
    set_sandbox(home, tmp_size_mb=8)
    fill = "; ".join(f"head -c 32M /dev/zero > {d}/fill; echo {d} rc=$?"
                     for d in ("/dev/shm", "/tmp", "/var/tmp", "/run", "/root", "/home"))
    a = drive(fake, home, workdir,
              "fallocate -l 32M /dev/shm/f; echo rc=$?; " + fill,
              "touch /dev/planted; echo rc=$?; echo ok > /dev/null && echo NULL-OK")
    assert "No space left on device" in a.results[0] and a.results[0].startswith(
        "fallocate: fallocate failed: No space left on device\nrc=1"), a.results[0]
    for d in ("/dev/shm", "/tmp", "/var/tmp", "/run", "/root", "/home"):
        assert f"{d} rc=1" in a.results[0], (d, a.results[0])
    assert a.results[0].count("No space left on device") == 7
    assert "Read-only file system" in a.results[1] and "NULL-OK" in a.results[1]


def test_strangers_do_not_see_the_owners_private_data(fake: FakeLLM, home: Path,
                                                      workdir: Path) -> None:
    private = home / ".agentd"
    (private / "sessions").mkdir(parents=True, exist_ok=True)
    (private / "sessions" / "owner-chat.jsonl").write_text('{"text": "OWNER-SECRET"}\n')
    (private / "daemon.log").write_text("DAEMON-LOG-LINE\n")
    (private / "usage.jsonl").write_text('{"usd": 1}\n')
    probe = ("ls -A $AGENTD_HOME/.agentd; ls $AGENTD_HOME/.agentd/sessions; "
             "cat $AGENTD_HOME/.agentd/daemon.log; touch $AGENTD_HOME/.agentd/x; echo END")
    reads = [{"name": "read", "arguments": {"path": f"{home}/.agentd/{name}"}}
             for name in ("sessions/owner-chat.jsonl", "daemon.log")]
    a = run_untrusted(fake, home, workdir, probe, *reads)
    assert "No such file or directory" in a.results[0] and "END" in a.results[0]
    for text in ("OWNER-SECRET", "DAEMON-LOG-LINE", "usage.jsonl"):
        assert text not in a.seen, text
    assert "owner-chat" not in a.results[0]  # not listed (the read calls name it themselves)
    assert a.errors[1:] == [True, True]
    assert all("private data, not readable in this turn" in r for r in a.results[1:])
    assert not (private / "x").exists()
    # the owner's own turn still sees it, read-only, as before
    t = run_attack(fake, home, workdir, probe, reads[1])
    assert "owner-chat.jsonl" in t.results[0] and "DAEMON-LOG-LINE" in t.results[0]
    assert "Read-only file system" in t.results[0] and not t.errors[1]


def test_what_the_sandbox_makes_is_not_roots_and_still_writable(
        fake: FakeLLM, home: Path, workdir: Path) -> None:
    planted = home / "memory" / "tool.sh"  # a set-uid file left by earlier host-side code
    planted.write_text("#!/bin/sh\n")
    planted.chmod(0o4755)
    a = run_attack(fake, home, workdir,
                   "echo hi > $AGENTD_HOME/notes.md && mkdir -p $AGENTD_HOME/memory/x && "
                   "echo w > work.txt && echo BASH-WROTE",
                   {"name": "write", "arguments": {"path": f"{home}/new/deep/file.md",
                                                   "content": "one\n"}},
                   "echo two >> $AGENTD_HOME/new/deep/file.md && touch $AGENTD_HOME/new/n "
                   "&& echo APPENDED")
    assert "BASH-WROTE" in a.results[0] and "APPENDED" in a.results[2], a.results
    assert (home / "new" / "deep" / "file.md").read_text() == "one\ntwo\n"
    assert (workdir / "work.txt").read_text() == "w\n"
    made = [home / "notes.md", home / "memory" / "x", workdir / "work.txt", home / "new" / "n"]
    if SANDBOX_OWNER is not None:  # as root: theirs, not root's; the runtime's stay root's
        for path in [*made, home / "new" / "deep" / "file.md", planted]:
            assert (path.stat().st_uid, path.stat().st_gid) == SANDBOX_OWNER, path
        for name in (".git", "agentd.toml", ".agentd", "."):
            assert (home / name).stat().st_uid == 0, name
        assert (home.stat().st_gid, home.stat().st_mode & 0o070) == (SANDBOX_OWNER[1], 0o070)
    assert not planted.stat().st_mode & 0o6000
    u = run_untrusted(fake, home, workdir, "echo reply > $AGENTD_HOME/outbox/r.md && echo OK")
    assert "OK" in u.results[0] and (home / "outbox" / "r.md").read_text() == "reply\n"
    if SANDBOX_OWNER is not None:
        assert (home / "outbox" / "r.md").stat().st_uid == SANDBOX_OWNER[0]


@requires_root_bwrap
def test_a_workdir_root_owns_stays_read_only_and_the_turn_says_why(
        fake: FakeLLM, home: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "project"
    theirs.mkdir()
    (theirs / "main.py").write_text("print('hi')\n")
    a = run_attack(fake, home, theirs, "cat main.py; touch x; echo rc=$?",
                   {"name": "write", "arguments": {"path": "y.py", "content": "x"}},
                   "touch $AGENTD_HOME/ok && echo HOME-OK")
    assert "print('hi')" in a.results[0] and "Read-only file system" in a.results[0]
    assert a.results[0].endswith("[running as root: the workdir " + str(theirs) + " is "
                                 "read-only to the sandbox (uid 65534); chown it to 65534 or "
                                 "run agentd as a normal user]")
    assert a.errors[1] and "read-only in this turn" in a.results[1]
    assert "HOME-OK" in a.results[2] and "running as root" not in a.results[2]  # said once
    assert sorted(p.name for p in theirs.iterdir()) == ["main.py"]
    assert (theirs / "main.py").stat().st_uid == 0  # the user's tree was not given away


def _quote(script: str) -> str:
    """One shell word holding `script`."""
    import shlex

    return shlex.quote(script)



