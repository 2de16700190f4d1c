"""Connection floods below HTTP (issue 10, part 5): half-sent request heads (slowloris),
many connections from one address, more connections than the server holds, and a process
started with few file descriptors. Real `agentd serve` processes on loopback; the
attackers use raw sockets from other loopback addresses (127.0.0.2 and up: all of
127/8 is this machine), so the "normal client" on 127.0.0.1 is a different address."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from bridgekit import ServeProcess, bridge_env, bridge_home
from fakellm import FakeLLM

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: agentd\r\nX-Slow: "


@pytest.fixture
def env(home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Path:
    bridge_env(monkeypatch)
    return home


def attackers(port: int, n: int, per_address: int, first: int = 2
              ) -> Iterator[tuple[socket.socket, float]]:
    """`n` connections, `per_address` from each of 127.0.0.<first>, <first+1>, …, each
    sent half a request head: (socket, when its head began)."""
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(f"127.0.0.{first + i // per_address}", 0))
        s.sendall(HALF_HEAD)
        yield s, time.monotonic()


def healthz_seconds(url: str) -> float:
    """A normal client's /healthz on a fresh connection: how long until its 200."""
    with httpx2.Client(timeout=5) as client:
        started = time.monotonic()
        r = client.get(f"{url}/healthz")
        took = time.monotonic() - started
    assert r.status_code == 200 and r.json() == {"ok": True}
    return took


def closed_by_server(socks: list[socket.socket], timeout: float) -> dict[socket.socket,
                                                                         tuple[float, bytes]]:
    """Wait until the server has closed each socket (recv gives b""): when, and what it
    sent before closing. Sockets still open after `timeout` are left out."""
    sel = selectors.DefaultSelector()
    got: dict[socket.socket, bytes] = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        got[s] = b""
    done: dict[socket.socket, tuple[float, bytes]] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                got[s] += data
                continue
            done[s] = (time.monotonic(), got[s])
            sel.unregister(s)
    sel.close()
    return done


def still_open(s: socket.socket) -> bool:
    """True while the server keeps `s` open (nothing to read, no EOF)."""
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)  # data or b"" (closed): not open and silent
        return False
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


def low_fd_limit() -> None:
    """In the child: a soft limit of 256 open files, far below 1,000 sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def test_a_thousand_half_heads_do_not_lock_out_a_normal_client(env: Path) -> None:
    """1,000 connections that each send half a head, 50 per address (the per-address cap),
    against a server started with only 256 file descriptors: /healthz still answers 200
    within 1 s, and every half-open connection is closed (408) within header_timeout."""
    bridge_home(env, header_timeout="3s")
    with ServeProcess(env, preexec=low_fd_limit) as serve:
        socks = list(attackers(serve.port, 1000, per_address=50))
        began = {s: t for s, t in socks}
        latencies = [healthz_seconds(serve.url) for _ in range(5)]
        assert max(latencies) < 1.0, latencies
        limits = Path(f"/proc/{serve.proc.pid}/limits").read_text()
        soft = int(next(x for x in limits.splitlines() if x.startswith("Max open files"))
                   .split()[3])
        assert soft >= 1000, "serve must raise its open-files limit for its connections"
        closed = closed_by_server(list(began), 3 + 5)
        for s in began:
            s.close()
        assert len(closed) == 1000, f"{1000 - len(closed)} half-open connections not closed"
        late = max(t - began[s] for s, (t, _) in closed.items())
        assert late < 3 + 3, f"a half-open connection lasted {late:.1f}s"
        answered = [data for _, data in closed.values() if data]
        assert len(answered) >= 990 and all(d.startswith(b"HTTP/1.1 408 ") for d in answered)
        assert healthz_seconds(serve.url) < 1.0
    print(f"\n/healthz under 1,000 half-heads (ms): {[round(x * 1000) for x in latencies]}")


def test_one_address_gets_max_connections_per_ip(env: Path) -> None:
    """The 6th connection from one address is closed at once; that address's first five
    stay open, and other addresses are served."""
    bridge_home(env, max_connections_per_ip=5, header_timeout="60s")
    with ServeProcess(env) as serve:
        five = [s for s, _ in attackers(serve.port, 5, per_address=5, first=9)]
        sixth = next(attackers(serve.port, 1, per_address=1, first=9))[0]
        closed = closed_by_server([sixth], 5)
        assert sixth in closed and closed[sixth][1] == b"", "the 6th must be refused"
        assert all(still_open(s) for s in five)
        assert healthz_seconds(serve.url) < 1.0
        for s in [*five, sixth]:
            s.close()
        assert "max_connections_per_ip" in serve.log


def test_when_full_the_longest_waiting_connection_makes_room(env: Path) -> None:
    """max_connections (16) half-heads from 16 addresses fill the server; a normal client
    still gets its 200, and the connection that waited longest is the one closed."""
    bridge_home(env, max_connections=16, header_timeout="60s")
    with ServeProcess(env) as serve:
        socks = [s for s, _ in attackers(serve.port, 16, per_address=1, first=20)]
        assert healthz_seconds(serve.url) < 1.0
        closed = closed_by_server(socks[:1], 5)
        assert socks[0] in closed, "the oldest waiting connection must make room"
        assert all(still_open(s) for s in socks[1:]), "only the oldest goes"
        for s in socks:
            s.close()


def test_a_kept_alive_connection_gets_the_same_deadline(env: Path) -> None:
    """After a whole request and its answer, the same connection sends half of the next
    head: it too is closed at header_timeout (keep-alive is no way around the deadline)."""
    bridge_home(env, header_timeout="2s")
    with ServeProcess(env) as serve:
        s = socket.create_connection(("127.0.0.1", serve.port), timeout=10,
                                     source_address=("127.0.0.30", 0))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: agentd\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"ok":true}'):
            answer += s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 ")
        s.sendall(HALF_HEAD)
        began = time.monotonic()
        closed = closed_by_server([s], 10)
        s.close()
        assert s in closed and closed[s][1].startswith(b"HTTP/1.1 408 ")
        assert closed[s][0] - began < 2 + 2


def test_a_low_hard_fd_limit_lowers_the_connection_cap_and_says_so(env: Path) -> None:
    """With only 512 open files allowed (soft and hard), 1,000 connections cannot fit:
    serve caps itself at what fits beside its own files, warns once, and stays reachable
    with the cap's worth of half-heads open (they make room, not the process fail)."""
    def tight() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))

    bridge_home(env, header_timeout="60s")
    with ServeProcess(env, preexec=tight) as serve:
        assert ("only 512 open files allowed (ulimit -n, hard limit 512): serving at most "
                "256 connections instead of max_connections = 1000") in serve.log
        socks = [s for s, _ in attackers(serve.port, 300, per_address=50, first=40)]
        assert healthz_seconds(serve.url) < 1.0
        closed = closed_by_server(socks[:45], 5)  # the oldest made room for the newest
        assert len(closed) == 45
        assert all(still_open(s) for s in socks[-200:])
        for s in socks:
            s.close()
