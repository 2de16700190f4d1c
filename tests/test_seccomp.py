"""The seccomp filter: decoded back and interpreted instruction by instruction, for both
architectures, then applied for real by bubblewrap on this host."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import stat
import struct
from pathlib import Path

import pytest
from conftest import requires_bwrap, sandbox_workdir

from agentd.tools import ToolContext, ToolResult
from agentd.tools import seccomp as sc
from agentd.tools.bash import run_bash

EPERM = sc.RET_ERRNO | errno.EPERM
ENOSYS = sc.RET_ERRNO | errno.ENOSYS
NOFAMILY = sc.RET_ERRNO | errno.EAFNOSUPPORT
ARCHES = list(sc.SYSCALLS)


@pytest.mark.parametrize("arch", ARCHES)
def test_program_shape(arch: str) -> None:
    blob = sc.program(arch)
    insns = sc.decode(blob)
    nr = sc.SYSCALLS[arch]
    assert len(blob) % 8 == 0 and len(insns) == len(blob) // 8
    x32 = 1 if arch == "x86_64" else 0
    checked = sum(name in nr for name in (*sc.CHMODS, *sc.MKNODS))  # aarch64 lacks some
    mode_blocks = 2 * len(set(sc.CHMODS.values()))  # load, JSET
    mknod_blocks = 5 * len(set(sc.MKNODS.values()))  # load, JSET, AND, JEQ, JEQ
    socket = 1 + len(sc.SOCKET_FAMILIES) + 2  # load, allowed families, AF_UNIX, EAFNOSUPPORT
    # arch check (2) + load nr (1) + x32 + denied list + socket/socketpair/clone dispatch
    # + ENOSYS calls + mode-checked calls + allow, then the blocks, clone (2), and the
    # shared allow/nosys/deny
    assert len(insns) == (3 + x32 + len(sc.DENIED) + 3 + len(sc.NOSYS_CALLS) + checked + 1
                          + mode_blocks + mknod_blocks + socket + 2 + 3)
    assert insns[0] == (sc.LD_W_ABS, 0, 0, sc.ARCH)
    assert insns[1][0] == sc.JEQ_K and insns[1][3] == sc.AUDIT_ARCH[arch]
    assert insns[-3:] == [(sc.RET_K, 0, 0, sc.RET_ALLOW), (sc.RET_K, 0, 0, ENOSYS),
                          (sc.RET_K, 0, 0, EPERM)]
    for i, (code, jt, jf, _) in enumerate(insns):  # every jump lands inside the program
        if code in (sc.JEQ_K, sc.JGE_K, sc.JSET_K):
            assert i + 1 + max(jt, jf) < len(insns)
    # the same bytes the kernel reads: u16 code, u8 jt, u8 jf, u32 k, little-endian
    assert blob[:8] == struct.pack("<HBBI", sc.LD_W_ABS, 0, 0, 4)


def _with(arg: int, value: int) -> list[int]:
    """Syscall arguments with `value` at index `arg` and zeros before it."""
    args = [0] * (arg + 1)
    args[arg] = value
    return args


@pytest.mark.parametrize("arch", ARCHES)
def test_every_decision(arch: str) -> None:
    blob, nr, audit = sc.program(arch), sc.SYSCALLS[arch], sc.AUDIT_ARCH[arch]

    def ret(name: str, arg0: int = 0, a: int = audit) -> int:
        return sc.run(blob, a, nr[name], arg0)

    for name in sc.DENIED:
        assert ret(name) == EPERM, name
    for call in ("socket", "socketpair"):
        assert ret(call, socket.AF_UNIX) == EPERM
        assert ret(call, socket.AF_INET) == sc.RET_ALLOW
        assert ret(call, socket.AF_INET6) == sc.RET_ALLOW
        for family in (socket.AF_VSOCK, socket.AF_PACKET, socket.AF_NETLINK, socket.AF_ALG,
                       31, 0, 46, 0xFFFF):  # 31 = AF_BLUETOOTH; 46 = AF_MAX on 6.x
            assert ret(call, family) == NOFAMILY, (call, family)
    assert ret("socket", (0xFFFF << 32) | socket.AF_INET) == sc.RET_ALLOW  # int: low word
    assert ret("clone", 0x11 | 0x01200000) == sc.RET_ALLOW  # fork(): SIGCHLD|CHILD_*TID
    assert ret("clone", 0x003D0F00) == sc.RET_ALLOW  # pthread_create's flags
    for flag in (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                 0x40000000):  # every CLONE_NEW*
        assert ret("clone", flag | 0x11) == EPERM, hex(flag)
    assert ret("clone3") == ENOSYS and ret("openat2") == ENOSYS
    for name, arg in sc.CHMODS.items():
        if name not in nr:
            continue
        for mode, verdict in ((0o755, sc.RET_ALLOW), (0o4755, EPERM), (0o2755, EPERM),
                              (0o1777, sc.RET_ALLOW), (0o100644, sc.RET_ALLOW)):
            assert sc.run(blob, audit, nr[name], *_with(arg, mode)) == verdict, (name, mode)
    for name, arg in sc.MKNODS.items():
        if name not in nr:
            continue
        for mode, verdict in ((stat.S_IFIFO | 0o644, sc.RET_ALLOW),
                              (stat.S_IFREG | 0o644, sc.RET_ALLOW), (0o644, sc.RET_ALLOW),
                              (stat.S_IFSOCK | 0o644, sc.RET_ALLOW),
                              (stat.S_IFREG | 0o4755, EPERM), (stat.S_IFREG | 0o2755, EPERM),
                              (stat.S_IFIFO | 0o6666, EPERM),
                              (stat.S_IFCHR | 0o666, EPERM), (stat.S_IFBLK | 0o660, EPERM)):
            assert sc.run(blob, audit, nr[name], *_with(arg, mode)) == verdict, (name, mode)
    assert {"openat", "mknodat"} <= set(nr)  # the calls every architecture has
    for allowed in (0, 1, 2, 59, 60, 231):  # read, write, open, execve, exit, exit_group
        assert sc.run(blob, audit, allowed) == sc.RET_ALLOW
    assert sc.run(blob, 0x40000003, 41) == EPERM  # i386 ABI: everything refused
    assert sc.run(blob, 0x40000028, 0) == EPERM  # arm32 ABI
    if arch == "x86_64":
        assert sc.run(blob, audit, 0x40000000 | 41) == EPERM  # x32 ABI
        assert sc.run(blob, audit, 0x40000000) == EPERM


def test_numbers_match_the_kernel_headers() -> None:
    """Cross-check the tables against this machine's headers (installed with libc6-dev)."""
    headers = {"x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
               "aarch64": Path("/usr/include/asm-generic/unistd.h")}
    checked = 0
    for arch, header in headers.items():
        if not header.exists():
            continue
        text = header.read_text()
        for name, number in sc.SYSCALLS[arch].items():
            m = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)", text)
            if m is None and name == "fchmodat2":  # Linux 6.6: newer than Debian 12's headers
                assert number == 452
                continue
            assert m and int(m.group(1)) == number, (arch, name)
            checked += 1
    assert checked or not any(h.exists() for h in headers.values())


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="no seccomp filter for architecture 'riscv64'"):
        sc.program("riscv64")


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    home = tmp_path / "home"
    home.mkdir()
    return ToolContext(home=home.resolve(), workdir=sandbox_workdir(tmp_path / "work"))


def run(ctx: ToolContext, command: str) -> ToolResult:
    return asyncio.run(run_bash(ctx, command, 20))


@requires_bwrap
def test_filter_is_active_inside(ctx: ToolContext) -> None:
    result = run(ctx, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    assert result.content == "NoNewPrivs:\t1\nSeccomp:\t2\n"


@requires_bwrap
def test_refused_calls_inside(ctx: ToolContext) -> None:
    script = (
        "import socket, os\n"
        "for fam in (socket.AF_UNIX,):\n"
        "    try: socket.socket(fam); print('UNIX-OPEN')\n"
        "    except PermissionError: print('UNIX-EPERM')\n"
        "try: socket.socketpair(); print('PAIR-OPEN')\n"
        "except PermissionError: print('PAIR-EPERM')\n"
        "s = socket.socket(socket.AF_INET); print('INET-OK'); s.close()\n"
        "for fam in ('AF_VSOCK', 'AF_PACKET', 'AF_NETLINK'):\n"
        "    try: socket.socket(getattr(socket, fam), socket.SOCK_DGRAM); print(fam, 'OPEN')\n"
        "    except OSError as e: print(fam + '-' + str(e.errno))\n"
        "import stat\n"
        "try: os.mknod('m', stat.S_IFREG | 0o4755); print('MKNOD-SUID-OPEN')\n"
        "except PermissionError: print('MKNOD-SUID-EPERM')\n"
        "os.mkfifo('fifo'); print('FIFO-OK')\n"
        "print(socket.getaddrinfo('localhost', 80)[0][4][1])\n"
        "try: os.unshare(os.CLONE_NEWNET) if hasattr(os, 'unshare') else print('UNSHARE-EPERM')\n"
        "except PermissionError: print('UNSHARE-EPERM')\n"
    )
    (ctx.workdir / "t.py").write_text(script)
    result = run(ctx, "python3 t.py; unshare -U true || echo USERNS-DENIED; "
                      "unshare -n true || echo NETNS-DENIED; cp /bin/true t && chmod 755 t "
                      "&& echo CHMOD-OK; chmod u+s t || echo SUID-DENIED; "
                      "chmod g+s . || echo SGID-DENIED")
    assert not (ctx.workdir / "t").stat().st_mode & 0o6000
    for word in ("AF_VSOCK-97", "AF_PACKET-97", "AF_NETLINK-97", "MKNOD-SUID-EPERM", "FIFO-OK",
                 "\n80\n",  # getaddrinfo copes without netlink
                 "UNIX-EPERM", "PAIR-EPERM", "INET-OK", "UNSHARE-EPERM", "USERNS-DENIED",
                 "NETNS-DENIED", "CHMOD-OK", "SUID-DENIED", "SGID-DENIED"):
        assert word in result.content, result.content
    assert "UNIX-OPEN" not in result.content and "PAIR-OPEN" not in result.content
    assert "OPEN" not in result.content


@requires_bwrap
def test_host_unix_socket_in_a_visible_folder_is_unreachable(ctx: ToolContext) -> None:
    path = ctx.workdir / "fake-docker.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        server.setblocking(False)
        result = run(ctx, f"python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); "
                          f"s.connect('{path}')\" 2>&1 | tail -1; "
                          f"ls -l {path} | cut -c1")
        with pytest.raises(BlockingIOError):
            server.accept()
    assert "PermissionError: [Errno 1] Operation not permitted" in result.content
    assert result.content.endswith("s\n")  # the socket is there, just unusable


@requires_bwrap
def test_ordinary_work_still_runs(ctx: ToolContext) -> None:
    result = run(ctx, """
        set -e
        ls / >/dev/null; seq 1000 | sort -rn | head -1
        git init -q repo && cd repo && echo x > f && git add f
        git -c user.name=a -c user.email=a@b commit -qm one && git log --oneline | wc -l
        python3 -c 'import threading, subprocess, concurrent.futures as f
t = threading.Thread(target=lambda: None); t.start(); t.join()
print(subprocess.run(["echo", "spawned"], capture_output=True, text=True).stdout.strip())
print(sum(f.ThreadPoolExecutor(4).map(abs, [-1, -2])))'
        (sleep 0.1 & wait) && echo waited
    """)
    assert result.content == "1000\n1\nspawned\n3\nwaited\n", result.content
