"""network = "allowlist": the proxy's rules, its protocol handling, the argv, the config, and
its lifetime (no leaked namespace, fd, thread or task). All traffic stays on loopback: the
resolver is injected, and the one "allowed" target is a loopback server let through by the
test-only `permit` of one exact (address, port); without it loopback is refused.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import open_fds, requires_root, requires_root_bwrap

from agentd.config import parse_settings
from agentd.errors import AgentdError
from agentd.tools import SandboxSettings, ToolContext
from agentd.tools import bwrap as bw
from agentd.tools import netproxy as np
from agentd.tools import sandbox as sb

# --- the rules, as pure functions ------------------------------------------------------------


@pytest.mark.parametrize("host", [
    "127.0.0.1", "[::1]", "::1", "10.0.0.1", "127.1", "2130706433", "0x7f000001", "1.2.3.4.",
    "a\0b.com", "a\rb.com", "a\nb.com", "a b.com", "user@pypi.org", "pypi.org%00", "pypi.org:1",
    "pÿpi.org", "", "-bad.com", "bad-.com", "a..com", "x" * 64 + ".com", "*.pypi.org",
    "pypi_org.com",
])  # fmt: skip
def test_junk_and_ip_literal_hosts_are_refused(host: str) -> None:
    assert np.host_problem(host) is not None


def test_plain_names_pass() -> None:
    for host in ("pypi.org", "files.pythonhosted.org", "api.github.com.", "xn--bcher-kva.de"):
        assert np.host_problem(host) is None


def test_allow_domains_match_exactly_or_as_strict_subdomains() -> None:
    domains = ("pypi.org", "*.github.com")
    assert np.allowed("pypi.org", domains) and np.allowed("pypi.org.", domains)
    assert np.allowed("api.github.com", domains) and np.allowed("a.b.github.com", domains)
    for host in ("github.com", "evilgithub.com", "github.com.evil.org", "www.pypi.org",
                 "pypi.org.evil.org"):
        assert not np.allowed(host, domains), host


@pytest.mark.parametrize("addr", [
    "127.0.0.1", "127.8.9.10", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "100.127.255.254", "224.0.0.1", "239.1.2.3",
    "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1",
    "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    "2002:7f00:1::1", "2002:a00:1::1", "64:ff9b::a00:1", "64:ff9b::7f00:1",
])  # fmt: skip
def test_non_public_addresses_are_refused(addr: str) -> None:
    assert np.address_problem(addr) is not None


def test_public_addresses_pass() -> None:
    for addr in ("93.184.216.34", "151.101.0.223", "2606:4700::1111", "2a04:4e42::223"):
        assert np.address_problem(addr) is None, addr


def test_absolute_form_is_rewritten_to_one_origin_form_request() -> None:
    head = (b"GET http://pypi.org/simple/?q=1#frag HTTP/1.1\r\nHost: 10.0.0.1\r\n"
            b"Proxy-Authorization: Basic eA==\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n")
    method, host, port, request = np.parse(head)
    assert (method, host, port) == ("GET", "pypi.org", 80)
    assert request == (b"GET /simple/?q=1 HTTP/1.1\r\nHost: pypi.org\r\nAccept: */*\r\n"
                       b"Connection: close\r\n\r\n")
    assert np.parse(b"GET http://PyPI.org:8080 HTTP/1.1\r\n\r\n")[1:3] == ("pypi.org", 8080)
    assert np.parse(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")[:3] == (
        "CONNECT", "pypi.org", 443)


@pytest.mark.parametrize("head", [
    b"GET /local HTTP/1.1\r\n\r\n",  # origin-form: not a proxy request
    b"GET https://pypi.org/ HTTP/1.1\r\n\r\n",  # https goes through CONNECT
    b"CONNECT pypi.org HTTP/1.1\r\n\r\n",  # no port
    b"CONNECT user@pypi.org:443 HTTP/1.1\r\n\r\n",
    b"CONNECT pypi.org:99999 HTTP/1.1\r\n\r\n",
    b"CONNECT pypi.org\0.evil.com:443 HTTP/1.1\r\n\r\n",
    b"CONNECT pypi.org:443 HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"CONNECT pypi.org:443 HTTP/1.1\r\nX: a\nInjected: 1\r\n\r\n",
    b"CONNECT pypi.org:443 HTTP/1.1\r\n folded\r\n\r\n",
    b"CONNECT p\xc3\xbfpi.org:443 HTTP/1.1\r\n\r\n",
    b"CONNECT  pypi.org:443 HTTP/1.1\r\n\r\n",
    b"CONNECT pypi.org:443 SPDY/3\r\n\r\n",
])  # fmt: skip
def test_malformed_requests_are_refused(head: bytes) -> None:
    with pytest.raises(np.Refused):
        np.parse(head)


# --- the proxy over real sockets (host loopback only) ------------------------------------


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A loopback server that answers one line with `echo:<line>`, or an HTTP response."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.02)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                data = conn.recv(4096)
                if data.startswith(b"GET "):
                    body = b"hello " + data.split(b"\r\n")[0]
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close"
                                 b"\r\n\r\n%s" % (len(body), body))
                else:
                    conn.sendall(b"echo:" + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    srv.close()


def fake_dns(port: int) -> np.Resolver:
    table = {"allowed.test": ["127.0.0.1"], "loop.test": ["127.0.0.1"],
             "private.test": ["10.0.0.7"], "meta.test": ["169.254.169.254"],
             "mixed.test": ["93.184.216.34", "10.0.0.7"], "cgnat.test": ["100.64.1.1"],
             "v6.test": ["::ffff:127.0.0.1"]}

    async def resolve(host: str, _port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such name {host}")
        return table[host]

    return resolve


def test_proxy(port: int) -> np.Proxy:
    """Allows *.test on `port`; only allowed.test's exact loopback target is permitted."""
    return np.Proxy(("allowed.test", "loop.test", "private.test", "meta.test", "mixed.test",
                     "cgnat.test", "v6.test", "*.sub.test"),
                    connect_ports=frozenset({port, 443}), http_ports=frozenset({port}),
                    resolver=fake_dns(port),
                    permit=frozenset({("allowed.test", "127.0.0.1", port)}))


test_proxy.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


async def exchange(proxy: np.Proxy, raw: bytes) -> bytes:
    """Serve `proxy` on a host loopback listener, send `raw`, return everything read back."""
    listener = socket.create_server(("127.0.0.1", 0))
    addr = listener.getsockname()
    await proxy.start(listener)
    try:
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(raw)
        if not raw.startswith(b"CONNECT"):
            writer.write_eof()
        data = await asyncio.wait_for(reader.read(65536), 5)
        if data.startswith(b"HTTP/1.1 200 Connection established"):
            writer.write(b"ping\n")
            data += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        return data
    finally:
        await proxy.stop()


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_connect_to_an_allowed_name_tunnels(echo_server: int) -> None:
    proxy = test_proxy(echo_server)
    reply = asyncio.run(exchange(proxy, b"CONNECT allowed.test:%d HTTP/1.1\r\n\r\n" % echo_server))
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\necho:ping\n"
    assert proxy.refusals == []


def test_plain_http_is_forwarded_with_connection_close(echo_server: int) -> None:
    reply = asyncio.run(exchange(test_proxy(echo_server),
                                 b"GET http://allowed.test:%d/x?y HTTP/1.1\r\n\r\n" % echo_server))
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"hello GET /x?y HTTP/1.1")


@pytest.mark.parametrize(("target", "status", "why"), [
    ("evil.test:{p}", 403, b"not in [sandbox] allow_domains"),
    ("127.0.0.1:{p}", 403, b"IP literals"),
    ("[::1]:{p}", 403, b"IP literals"),
    ("loop.test:{p}", 403, b"127.0.0.1, not a public address"),  # permit: allowed.test only
    ("allowed.test:443", 403, b"127.0.0.1, not a public address"),  # and one port only
    ("private.test:{p}", 403, b"10.0.0.7, not a public address"),
    ("meta.test:{p}", 403, b"169.254.169.254, not a public address"),
    ("cgnat.test:{p}", 403, b"not a public address"),
    ("mixed.test:{p}", 403, b"10.0.0.7, not a public address"),  # any bad address refuses
    ("v6.test:{p}", 403, b"not a public address"),
    ("allowed.test:22", 403, b"port 22 is not allowed"),
    ("x.sub.test:443", 502, b"cannot resolve"),  # allowed, but no such name
    ("sub.test:443", 403, b"not in [sandbox] allow_domains"),
])  # fmt: skip
def test_refusals(echo_server: int, target: str, status: int, why: bytes) -> None:
    proxy = test_proxy(echo_server)
    raw = b"CONNECT %s HTTP/1.1\r\n\r\n" % target.format(p=echo_server).encode()
    reply = asyncio.run(exchange(proxy, raw))
    assert status_of(reply) == status and why in reply, reply
    assert b"echo:" not in reply


def test_loopback_is_refused_without_the_test_permit(echo_server: int) -> None:
    strict = np.Proxy(("allowed.test",), connect_ports=frozenset({echo_server}),
                      resolver=fake_dns(echo_server))
    reply = asyncio.run(exchange(strict, b"CONNECT allowed.test:%d HTTP/1.1\r\n\r\n"
                                 % echo_server))
    assert status_of(reply) == 403 and strict.refusals


def test_junk_in_the_request_gets_400(echo_server: int) -> None:
    for raw in (b"CONNECT allowed.test\0:443 HTTP/1.1\r\n\r\n",
                b"CONNECT allowed.test\r:443 HTTP/1.1\r\n\r\n",
                b"CONNECT allowed.test\n:443 HTTP/1.1\r\n\r\n"):
        assert status_of(asyncio.run(exchange(test_proxy(echo_server), raw))) == 400


def test_oversized_header_block_gets_431(echo_server: int) -> None:
    raw = b"CONNECT allowed.test:443 HTTP/1.1\r\nX: " + b"a" * np.MAX_HEADER + b"\r\n\r\n"
    assert status_of(asyncio.run(exchange(test_proxy(echo_server), raw))) == 431


def test_stop_ends_open_tunnels(echo_server: int) -> None:
    async def scenario() -> None:
        proxy = test_proxy(echo_server)
        listener = socket.create_server(("127.0.0.1", 0))
        await proxy.start(listener)
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(b"CONNECT allowed.test:%d HTTP/1.1\r\n\r\n" % echo_server)
        assert b" 200 " in await reader.readuntil(b"\r\n\r\n")
        assert len(proxy._tasks) == 1
        await asyncio.wait_for(proxy.stop(), 2)
        assert proxy._tasks == set() and listener.fileno() == -1
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()

    asyncio.run(scenario())


# --- settings and argv -----------------------------------------------------------------------


def test_allowlist_needs_domains_in_one_line() -> None:
    with pytest.raises(AgentdError) as exc:
        parse_settings({"sandbox": {"network": "allowlist"}})
    assert "needs sandbox.allow_domains" in str(exc.value) and "\n" not in str(exc.value)
    s = parse_settings({"sandbox": {"network": "allowlist",
                                    "allow_domains": ["pypi.org", "*.github.com"]}})
    assert s.sandbox.allow_domains == ["pypi.org", "*.github.com"]
    for bad in (["10.0.0.1"], ["*"], ["localhost"], ["a\nb.org"], [3], "pypi.org"):
        with pytest.raises(AgentdError, match=r"sandbox\.allow_domains") as exc:
            parse_settings({"sandbox": {"network": "allowlist", "allow_domains": bad}})
        assert "\n" not in str(exc.value)
    with pytest.raises(AgentdError, match='"none", "allowlist" or "full"'):
        parse_settings({"sandbox": {"network": "some"}})


def test_allowlist_argv_shares_our_namespace_and_sets_the_proxy(tmp_path: Path) -> None:
    ctx = ToolContext(home=tmp_path, workdir=tmp_path,
                      sandbox=SandboxSettings(network="allowlist", allow_domains=["pypi.org"]))
    argv = bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    assert argv[1:5] == ["--unshare-all", "--unshare-user", "--disable-userns", "--share-net"]
    env = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"}
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        assert env[key] == "http://127.0.0.1:3128"
    assert sb.turn_warnings(ctx.sandbox) == []
    ctx.sandbox.network = "none"
    argv = bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    assert "--share-net" not in argv and not any("PROXY" in a.upper() for a in argv)


# --- namespace lifetime ----------------------------------------------------------------------


@requires_root
def test_namespace_has_only_lo_and_leaves_nothing_behind() -> None:
    before = open_fds()
    ns = np.Namespace()
    assert ns.listener is not None and ns.listener.getsockname() == ("127.0.0.1", 3128)
    here = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/self/fd/{ns.fd}") != here
    assert not any(t.name == "agentd-netns" for t in threading.enumerate())
    second = np.Namespace()  # one per command: the same port, another namespace
    assert os.readlink(f"/proc/self/fd/{second.fd}") != os.readlink(f"/proc/self/fd/{ns.fd}")
    ns.close()
    second.close()
    ns.close()  # idempotent
    assert open_fds() == before


@requires_root_bwrap
def test_doctor_reports_the_allowlist_it_observed(tmp_path: Path) -> None:
    from agentd.doctor import run_checks
    from agentd.newhome import init_home

    home = tmp_path / "home"
    init_home(home)
    config = home / "agentd.toml"
    config.write_text(config.read_text().replace(
        "\n# [sandbox]\n", '\n[sandbox]\nnetwork = "allowlist"\nallow_domains = ["pypi.org"]\n', 1))
    checks = {c.name: c for c in run_checks(str(home), tmp_path)}
    c = checks["network allowlist"]
    assert c.status == "ok" and "only lo inside" in c.detail and "pypi.org" in c.detail
