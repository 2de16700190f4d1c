"""Connection-level defences: a deadline for the request head, caps on open connections
(per client address and in all), and enough file descriptors for them.

Why here, and why on uvicorn. uvicorn's only read timeout is the keep-alive one, armed
after a response; a connection that sends half a request head (slowloris) is held forever,
and its `limit_concurrency` counts such connections, so 1,000 of them turned every other
client away with 503. The Guard (limits.py) cannot help: an ASGI app first runs once a
head is complete. uvicorn does let the host pass its own protocol class (`http=`), and
the daemon already embeds uvicorn in its one event loop, so rather than swap the server
(and that embedding) for one timer, `protocol_class` subclasses uvicorn's `H11Protocol`:

- every connection waiting for a request head (a new one, or a kept-alive one after its
  response) has `header_timeout` to deliver it whole, trickled or not; then it is closed
  (with a 408 if it had sent part of a head). A head over 16 KiB is a 431, however it
  arrives;
- at most `max_connections_per_ip` connections per client address (an IPv6 /64 counts as
  one address); more are closed at once. Trusted proxies are exempt: many clients share
  their address;
- at most `max_connections` in all. When full, the connection that has waited longest for
  a head is closed to make room (a client that sends its request at once is never the
  one that has waited longest); when none is waiting, the newcomer is closed.

uvicorn's `limit_concurrency` is off: it counted the idle connections too, and the cap
here bounds requests in flight as well (one per connection). `raise_fd_limit` makes sure
the process can hold that many sockets. A reloaded agentd.toml (SIGHUP) changes
`header_timeout` and `max_connections_per_ip` at once; `max_connections` and the trusted
proxies at the next start.
"""

from __future__ import annotations

import ipaddress
import json
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from agentd.bridge.http import error_body
from agentd.bridge.limits import address_key

if TYPE_CHECKING:
    import asyncio

    from agentd.config import Settings

MAX_HEAD = 16 * 1024  # request line and headers: h11's own cap for a head in pieces
FD_RESERVE = 256  # descriptors kept for everything else (logs, git, the sandbox, clients)
MIN_CONNECTIONS = 16


def proxy_matcher(proxies: list[str]) -> Callable[[str], bool]:
    """A test for "this address is one of `trusted_proxies`" (addresses or networks, or
    "*" as uvicorn takes it)."""
    if "*" in proxies:
        return lambda ip: True
    nets = []
    for p in proxies:
        try:
            nets.append(ipaddress.ip_network(p.strip(), strict=False))
        except ValueError:
            continue

    def match(ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in nets)

    return match


def raise_fd_limit(connections: int) -> tuple[int, str | None]:
    """Raise the soft RLIMIT_NOFILE so `connections` sockets fit next to FD_RESERVE others
    (only as far as needed: child processes inherit it). Returns the connection cap that
    fits, and a warning when the hard limit forced a lower one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return connections, None
    fit = max(MIN_CONNECTIONS, soft - FD_RESERVE)
    return fit, (f"only {soft} open files allowed (ulimit -n, hard limit {hard}): serving at "
                 f"most {fit} connections instead of max_connections = {connections}")


class Connections:
    """The open connections of one server, shared by all its protocol instances: counts
    per address and in all, and the ones waiting for a head, oldest first."""

    def __init__(self, settings: Callable[[], Settings], total: int,
                 warn: Callable[[str, str], None]):
        self.settings, self.total, self.warn = settings, total, warn
        self.exempt = proxy_matcher(settings().bridge.trusted_proxies)
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.waiting: dict[Any, None] = {}  # protocol → None; dicts keep insertion order

    @property
    def header_timeout(self) -> float:
        return self.settings().bridge.header_timeout.seconds

    def admit(self, ip: str) -> str | None:
        """Count a new connection from `ip`, making room if needed; None when admitted,
        else why it is refused."""
        key = address_key(ip)
        if not self.exempt(ip):
            cap = self.settings().bridge.max_connections_per_ip
            if self.by_address.get(key, 0) >= cap:
                self.warn(f"conn:{key}", f"refused connections from {key}: {cap} already "
                          "open (max_connections_per_ip)")
                return "per address"
        if self.open >= self.total:
            if not self.waiting:
                self.warn("conn:full", f"refused connections: all {self.total} are busy "
                          "(max_connections)")
                return "full"
            oldest = next(iter(self.waiting))
            oldest.drop("evicted")
            self.warn("conn:evict", f"{self.total} connections open (max_connections): "
                      "closed the ones that waited longest for a request")
        self.open += 1
        self.by_address[key] = self.by_address.get(key, 0) + 1
        return None

    def release(self, ip: str) -> None:
        key = address_key(ip)
        self.open -= 1
        left = self.by_address.get(key, 1) - 1
        if left > 0:
            self.by_address[key] = left
        else:
            self.by_address.pop(key, None)


def _response(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole error response, written to the socket outside h11 (no request began)."""
    body = json.dumps(error_body(status, message, code)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


TIMEOUT_RESPONSE = _response(408, "Request Timeout", "the request head arrived too slowly",
                             "request_timeout")
TOO_LARGE_RESPONSE = _response(431, "Request Header Fields Too Large",
                               f"the request head is over {MAX_HEAD // 1024} KiB",
                               "header_too_large")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline and the connection caps (see the module
    docstring). `pool` is set on the subclass `protocol_class` makes."""

    pool: Connections

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._address = ""
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else "unknown"
        if self.pool.admit(self._address) is not None:
            transport.close()  # refused: closed at once, no reply
            return
        self._counted = True
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None and self._head_too_large(data):
            self.pool.warn("conn:431", "refused a request head over "
                           f"{MAX_HEAD // 1024} KiB")
            self.transport.write(TOO_LARGE_RESPONSE)
            self.transport.close()
            self._stop_timer()
            return
        super().data_received(data)
        self._watch_head()

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the head being received, with `data`, passes MAX_HEAD. h11 checks its
        own limit only while a head is incomplete, so one that arrives whole in a single
        read (up to 256 KiB) would otherwise be taken."""
        pending = self.conn.trailing_data[0]
        end = (pending[-3:] + data).find(b"\r\n\r\n")
        size = len(pending) + (len(data) if end < 0 else end - min(3, len(pending)))
        return size > MAX_HEAD

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._counted:
            self._counted = False
            self.pool.release(self._address)
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """Arm the deadline while a head is awaited (h11: the client is IDLE), disarm it
        once a request has begun. Trickling bytes does not restart it."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.pool.header_timeout,
                                                    self.drop, "timeout")
            self.pool.waiting[self] = None
        elif not waiting:
            self._stop_timer()

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.pool.waiting.pop(self, None)

    def drop(self, why: str) -> None:
        """Close a connection still waiting for its head: its deadline passed ("timeout";
        a client that sent part of a head is told 408 first), or room was needed."""
        self._stop_timer()
        if self.transport.is_closing():
            return
        if why == "timeout" and self.conn.trailing_data[0]:  # part of a head: say why
            self.pool.warn("conn:timeout", "closed connections that sent part of a "
                           "request head but not all of it within header_timeout")
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_class(connections: Connections) -> type[GuardedH11Protocol]:
    """The class to give uvicorn (`Config(http=...)`), bound to one server's counts."""
    return type("BridgeH11Protocol", (GuardedH11Protocol,), {"pool": connections})
