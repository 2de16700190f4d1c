"""network = "allowlist" with real bubblewrap, through the real loop: the sandbox reaches
listed names through agentd's proxy and nothing else, and leaves nothing behind.

No traffic beyond loopback: the proxy's resolver is injected (test names map to loopback,
private and metadata addresses), and the one reachable target is a loopback HTTP server that
a test-only permit lets `allowed.test` reach on its one port. Everything else is refused by
the production rules."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from attack import run_attack, set_sandbox
from conftest import open_fds, requires_root_bwrap
from fakellm import FakeLLM

from agentd.tools import SandboxSettings, ToolContext, netproxy
from agentd.tools import bash as bash_tool
from agentd.tools.bash import run_bash

pytestmark = [requires_root_bwrap]


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.headers['Host']} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A loopback web server, and agentd's proxy pointed at it with a fake resolver."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    port = srv.server_address[1]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    names = {"allowed.test": ["127.0.0.1"], "loop.test": ["127.0.0.1"],
             "private.test": ["10.1.2.3"], "meta.test": ["169.254.169.254"]}

    async def resolve(host: str, _port: int) -> list[str]:
        if host not in names:
            raise OSError("unknown name")
        return names[host]

    def proxy_for(ctx: ToolContext) -> netproxy.Proxy:
        return netproxy.Proxy(tuple(ctx.sandbox.allow_domains),
                              connect_ports=frozenset({443, port}),
                              http_ports=frozenset({80, port}), resolver=resolve,
                              permit=frozenset({("allowed.test", "127.0.0.1", port)}))

    monkeypatch.setattr(bash_tool, "proxy_for", proxy_for)
    yield port
    srv.shutdown()
    srv.server_close()


DOMAINS = ["allowed.test", "loop.test", "private.test", "meta.test"]
RAW = ("python3 -c \"import socket,sys; s=socket.create_connection(('127.0.0.1', 3128)); "
       "s.sendall(sys.argv[1].encode().replace(b'NUL', bytes(1)) + b' HTTP/1.1\\r\\n\\r\\n'); "
       "print(s.recv(200).split(b'\\r\\n')[0])\" ")


def test_allowlist_through_the_real_loop(fake: FakeLLM, home: Path, workdir: Path,
                                         target: int) -> None:
    set_sandbox(home, network="allowlist", allow_domains=DOMAINS)
    p = target
    a = run_attack(
        fake, home, workdir,
        # allowed: absolute-form HTTP, a CONNECT tunnel, and Python's own proxy support
        f"curl -sS -m 5 http://allowed.test:{p}/a; curl -sS -m 5 -p http://allowed.test:{p}/b; "
        f"python3 -c \"import urllib.request as u; "
        f"print(u.urlopen('http://allowed.test:{p}/c', timeout=5).read().decode())\"",
        # refused by the proxy: unlisted, IP literals (incl. metadata), names resolving inward
        f"curl -sS -m 5 http://evil.test:{p}/; curl -sS -m 5 http://169.254.169.254/latest/; "
        f"curl -sS -m 5 http://loop.test:{p}/; curl -sS -m 5 http://private.test:{p}/; "
        f"curl -sS -m 5 http://meta.test/; curl -sS -m 5 -p https://93.184.216.34/ 2>&1; "
        f"echo END",
        # junk in the host, sent raw to the proxy
        RAW + f"$'CONNECT allowed.test\\r.x:{p}'; " + RAW + f"'CONNECT allowedNUL.test:{p}'; "
        + RAW + f"'CONNECT allowed.test%0d%0a:{p}'; " + RAW + f"$'GET http://allowed.test\\n:{p}/'"
        + "; " + RAW + f"'CONNECT allowed.test:{p}'",
        # around the proxy: direct to the host's loopback server, an outside address, DNS
        f"curl -sS -m 3 --noproxy '*' http://127.0.0.1:{p}/; echo rc=$?; "
        "timeout 3 bash -c 'echo > /dev/tcp/1.1.1.1/80'; echo rc=$?; "
        "python3 -c \"import socket; socket.create_connection(('10.0.0.1', 443), 2)\" 2>&1 "
        "| tail -1; time (getent hosts pypi.org; echo rc=$?); "
        "tail -n +3 /proc/net/dev | cut -d: -f1",
    )
    assert a.results[0].strip().splitlines() == [f"hello from allowed.test:{p} /a",
                                                 f"hello from allowed.test:{p} /b",
                                                 f"hello from allowed.test:{p} /c"]
    refused = a.results[1]
    assert "evil.test is not in [sandbox] allow_domains" in refused
    assert "agentd proxy: IP literals are not allowed" in refused  # http to the metadata IP
    assert "CONNECT tunnel failed, response 403" in refused  # https to an IP literal
    assert "loop.test resolves to 127.0.0.1, not a public address" in refused
    assert "private.test resolves to 10.1.2.3, not a public address" in refused
    assert "meta.test resolves to 169.254.169.254, not a public address" in refused
    assert "hello" not in refused and "[network refused GET evil.test" in refused
    assert a.results[2].splitlines()[:5] == ["b'HTTP/1.1 400 Bad Request'"] * 4 + [
        "b'HTTP/1.1 200 Connection established'"]  # a well-formed request, for contrast
    around = a.results[3]
    assert "Failed to connect to 127.0.0.1" in around and "rc=0" not in around
    assert around.count("Network is unreachable") >= 2  # bash says it twice
    assert "real\t0m0." in around  # DNS fails at once: no resolver is reachable
    assert around.split()[-1] == "lo"
    assert not any("hello" in r for r in a.results[1:])


def users_of(netns: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if pid.isdigit() and os.readlink(f"/proc/{pid}/ns/net") == netns:
                found.append(pid)
    return found


def test_nothing_is_left_behind_even_after_a_timeout(tmp_path: Path, target: int) -> None:
    ctx = ToolContext(home=tmp_path, workdir=tmp_path,
                      sandbox=SandboxSettings(network="allowlist", allow_domains=DOMAINS))

    async def scenario() -> tuple[str, str, str]:
        before = open_fds()
        # a tunnel and a half-sent request stay open while the command is killed
        r = await run_bash(ctx, "readlink /proc/self/ns/net; "
                           f"(exec 3<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT allowed.test:"
                           f"{target} HTTP/1.1\\r\\n\\r\\n' >&3; sleep 30) & "
                           "(exec 4<>/dev/tcp/127.0.0.1/3128; printf 'GET ' >&4; sleep 30) & "
                           "sleep 0.5; setsid sleep 30", 1.5)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == [] and open_fds() == before
        none = await run_bash(ToolContext(home=tmp_path, workdir=tmp_path), "env; "
                              f"curl -sS -m 2 http://allowed.test:{target}/; echo rc=$?")
        return r.content, none.content, r.content.split()[0]

    content, none, netns = asyncio.run(scenario())
    assert "timed out" in content and netns.startswith("net:[")
    assert users_of(netns) == [] and os.readlink("/proc/self/ns/net") != netns
    assert not any(t.name == "agentd-netns" for t in threading.enumerate())
    # network = "none" is unchanged: no proxy variables, no way out
    assert "PROXY" not in none.upper() and "rc=0" not in none
