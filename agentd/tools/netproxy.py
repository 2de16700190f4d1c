"""`network = "allowlist"`: a per-command network namespace whose only way out is this proxy.

How it fits together (verified with bwrap 0.8.0 as root, which cannot join a namespace):

- `Namespace()` creates a fresh network namespace holding only `lo` (brought up), and a
  listening socket on 127.0.0.1:3128 *inside* it. The unshare happens in a dedicated,
  short-lived thread (never an executor thread: a pooled thread left in the namespace would
  later resolve and connect from it). agentd keeps the namespace fd and the listener.
- The command's process joins the namespace between fork and exec (`setns` in preexec_fn),
  then bwrap runs with `--unshare-all --share-net`: every other namespace is new, the network
  is ours. Nothing in it routes anywhere: direct connections and DNS fail.
- `Proxy` serves that listener from agentd's event loop, in the host's namespace: CONNECT to
  port 443 and absolute-form plain HTTP to port 80, one request per connection, only to
  hosts in `allow_domains` (exact, or `*.example.com` for strict subdomains). It resolves
  the name itself, refuses the whole name if *any* address is not globally routable
  (loopback, private, link-local incl. 169.254.169.254, CGNAT, multicast, reserved, and the
  same inside IPv4-mapped/6to4/Teredo/NAT64 forms), and connects to the checked address,
  so DNS rebinding can't slip in between. Hostnames must be plain LDH names: IP literals,
  NUL/CR/LF, spaces, `@`, `%`, non-ASCII and numeric TLDs (`127.1`) are refused.
- Bounded: 64 connections, a 16 KiB header block read within 10 s, 60 s idle timeout.
  One log line per decision (logger "agentd.netproxy"); the refusals are also returned so
  the tool result can say why. Everything is closed when the command ends.

Needs CAP_SYS_ADMIN (agentd as root) to create the namespace; otherwise bash refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

PROXY_HOST, PROXY_PORT = "127.0.0.1", 3128
PROXY_URL = f"http://{PROXY_HOST}:{PROXY_PORT}"
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MAX_HEADER, MAX_CONNS = 16 * 1024, 64
HEADER_TIMEOUT, CONNECT_TIMEOUT, IDLE_TIMEOUT = 10.0, 10.0, 60.0
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
               "proxy-authenticate", "te", "trailer", "upgrade", "host"}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_BAD_NETS = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "64:ff9b::/96",
                                               "64:ff9b:1::/48")]
log = logging.getLogger("agentd.netproxy")
_libc = ctypes.CDLL(None, use_errno=True)

Resolver = Callable[[str, int], Awaitable[list[str]]]


def proxy_env() -> dict[str, str]:
    """What the command sees: every common spelling, and loopback (its own) left direct."""
    env = {k: PROXY_URL for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                                  "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
    return env


def host_problem(host: str) -> str | None:
    """Why `host` is not a plain DNS name we may resolve, or None. Lowercase it first."""
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return "empty or too long host name"
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name.strip("[]"))
        return "IP literals are not allowed, only names in allow_domains"
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return f"not a valid host name: {host!r}"
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        return "numeric host names are not allowed"
    return None


def domain_problem(pattern: str) -> str | None:
    """For config validation: a pattern is `name` or `*.name`, lowercase-able, no IP."""
    if not isinstance(pattern, str):
        return f"{pattern!r} is not a string"
    name = pattern.lower().removeprefix("*.")
    problem = host_problem(name)
    if problem is None and "." not in name.strip("."):
        problem = "needs at least two labels (example.com)"
    return f"{pattern!r}: {problem}" if problem else None


def allowed(host: str, domains: Iterable[str]) -> bool:
    host = host.rstrip(".")
    for pattern in domains:
        p = pattern.lower().rstrip(".")
        if host == p or (p.startswith("*.") and host.endswith(p[1:])):
            return True
    return False


def address_problem(addr: str) -> str | None:
    """Why connecting to `addr` is refused, or None for a globally routable unicast one."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    inner: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        inner += [a for a in (ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())) if a]
        if ip in _BAD_NETS[1]:
            inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    for a in inner:
        if not a.is_global or a.is_multicast or any(a in n for n in _BAD_NETS):
            return f"{addr}, not a public address"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Namespace:
    """A fresh network namespace with `lo` up and the proxy's listener inside it."""

    def __init__(self) -> None:
        self.fd = -1
        self.listener: socket.socket | None = None
        error: list[BaseException] = []
        worker = threading.Thread(target=self._create, args=(error,), name="agentd-netns")
        worker.start()
        worker.join()
        if error:
            self.close()
            raise error[0]

    def _create(self, error: list[BaseException]) -> None:
        try:  # this thread alone enters the new namespace, and ends right after
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot create a network namespace for network = "
                                   f'"allowlist" (needs root): {os.strerror(err)}')
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
                flags = struct.unpack("16sH22x", ifr)[1] | IFF_UP
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags))
            self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind((PROXY_HOST, PROXY_PORT))
            listener.listen(MAX_CONNS)
            self.listener = listener
        except BaseException as exc:
            error.append(exc)

    def enter(self) -> None:
        """Called in the child between fork and exec: join the namespace, or die."""
        if _libc.setns(self.fd, CLONE_NEWNET) != 0:
            os._exit(126)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass
class Proxy:
    """Serves one Namespace's listener for the lifetime of one command.

    `resolver` and `permit` exist for tests only: `permit` is a set of exact (name, address,
    port) triples let through despite the address rules (a loopback test server); production
    code never sets either."""

    domains: tuple[str, ...]
    connect_ports: frozenset[int] = frozenset({443})
    http_ports: frozenset[int] = frozenset({80})
    resolver: Resolver = system_resolve
    permit: frozenset[tuple[str, str, int]] = frozenset()
    refusals: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, listener: socket.socket) -> None:
        self._server = await asyncio.start_server(self._handle, sock=listener,
                                                  limit=MAX_HEADER)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._tasks) > MAX_CONNS:
                await _reply(writer, 503, "too many connections")
                return
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:  # only stop() cancels us; ending normally keeps
            pass  # 3.11's start_server callback from logging the cancellation as an error
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT)
        except asyncio.LimitOverrunError:
            return await _reply(writer, 431, "request header block too large")
        what = "request"
        try:
            method, host, port, request = parse(head)
            what = f"{method} {host}:{port}"
            addr = await self._check(method, host, port)
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(addr, port),
                                                CONNECT_TIMEOUT)
        except Refused as exc:
            self.refusals.append(f"{what}: {exc}")
            log.info("deny %s: %s", what, exc)
            return await _reply(writer, exc.status, str(exc))
        except (OSError, TimeoutError) as exc:
            log.info("fail %s: %s", what, exc)
            return await _reply(writer, 502, f"cannot connect: {exc}")
        log.info("allow %s via %s", what, addr)
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_w.write(request)
        try:
            last = [asyncio.get_running_loop().time()]
            await asyncio.gather(_pipe(reader, up_w, last), _pipe(up_r, writer, last))
        finally:
            up_w.close()

    async def _check(self, method: str, host: str, port: int) -> str:
        """The checked address to connect to, or Refused."""
        problem = host_problem(host)
        if problem:
            raise Refused(403 if "literal" in problem else 400, problem)
        if not allowed(host, self.domains):
            raise Refused(403, f"{host} is not in [sandbox] allow_domains")
        ports = self.connect_ports if method == "CONNECT" else self.http_ports
        if port not in ports:
            raise Refused(403, f"port {port} is not allowed for {method} "
                               f"(only {', '.join(map(str, sorted(ports)))})")
        try:
            addrs = await asyncio.wait_for(self.resolver(host, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise Refused(502, f"cannot resolve {host}: {exc}") from None
        if not addrs:
            raise Refused(502, f"{host} has no address")
        for addr in addrs:
            problem = None if (host, addr, port) in self.permit else address_problem(addr)
            if problem:
                raise Refused(403, f"{host} resolves to {problem}")
        return addrs[0]


def parse(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, rewritten request head) from a client's header block."""
    if any((b < 0x20 and b not in b"\r\n\t") or b > 0x7E for b in head):
        raise Refused(400, "NUL, control or non-ASCII bytes in the request")
    lines = head[:-4].decode("ascii").split("\r\n")
    if any("\r" in line or "\n" in line or line[:1] == " " for line in lines):
        raise Refused(400, "bare CR/LF or folded lines in the request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "malformed request line")
    method, target, version = parts
    if method == "CONNECT":
        authority, path = target, ""
    elif target[:7].lower() == "http://":
        m = re.fullmatch(r"([^/?#]*)([^#]*).*", target[7:])
        assert m is not None  # matches any string
        authority, path = m.groups()
        path = path if path.startswith("/") else "/" + path
    else:
        raise Refused(400, "only CONNECT (https) or absolute http:// URLs go through the proxy")
    host, colon, port_s = authority.rpartition(":")
    if not colon and method != "CONNECT":
        host, port_s = authority, "80"
    if "@" in authority or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise Refused(400, f"bad authority {authority!r}")
    host = host.lower()
    headers = [h for h in lines[1:] if h.split(":", 1)[0].strip().lower() not in HOP_HEADERS]
    request = "\r\n".join([f"{method} {path} {version}", f"Host: {authority}", *headers,
                           "Connection: close", "", ""]).encode("ascii")
    return method, host, int(port_s), request


async def _reply(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = f"agentd proxy: {reason}\n".encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large",
              502: "Bad Gateway", 503: "Service Unavailable"}[status]
    writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: "
                 f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(OSError):
        await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                last: list[float]) -> None:
    """Copy until EOF, then half-close; give up when *neither* direction moved for
    IDLE_TIMEOUT (a long download with a silent client is not idle)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
            except TimeoutError:
                if loop.time() - last[0] >= IDLE_TIMEOUT:
                    raise
                continue
            if not data:
                break
            last[0] = loop.time()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, TimeoutError):
        writer.close()
