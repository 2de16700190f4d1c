"""Abuse handling below the endpoints: rate limits, the body cap, and the outermost guard.

`Guard` is a pure ASGI middleware wrapped around the whole app, so it runs before routing,
authentication and any parsing:

1. a token bucket per client address (before auth: unauthenticated floods are cut here)
   → 429 with Retry-After;
2. a declared Content-Length over the cap → 413 at once, before any of the body is read;
3. a body streamed past the cap (chunked, or lying about its length): `receive` raises
   `BodyTooLarge` at the first byte over and the guard answers 413, so at most the cap
   (plus one chunk) is ever held in memory. Either way the connection is then closed
   after a short "lingering close": the 413 is sent whole, then what the client still
   sends is read and thrown away (LINGER_BYTES, LINGER_SECONDS at most), because closing a
   socket with unread data makes the kernel send a reset that can destroy the 413 before
   the client reads it;
4. a body that stalls for BODY_TIMEOUT between two pieces, or is still arriving after
   BODY_DEADLINE (a trickle of one byte every few seconds) → 408, the slot freed;
5. anything that still escapes the app becomes a JSON 500 without details, logged as one
   line; the server never dies of a request.

Per-sender buckets (after auth) are taken by the endpoints with `Buckets.take`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from agentd.bridge.http import BodyTooLarge, ascii_int, error_body, retry_after

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Buckets:
    """Token buckets by key (an address, a sender). At most `max_keys` are kept, least
    recently used dropped first, so a flood of distinct keys cannot grow memory."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when a request may go ahead (one token taken), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self._b.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._b[key] = (tokens, now)
        if len(self._b) > self.max_keys:
            self._b.popitem(last=False)
        return wait


def address_key(ip: str) -> str:
    """What per-address limits count: the IPv4 address (also when IPv4-mapped), or the
    IPv6 /64, since one IPv6 host is usually given a whole /64 to rotate through."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return address_key(str(client[0])) if client else "unknown"


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: dict[str, str] | None = None, close: bool = False) -> None:
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        hdrs.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


TOO_LARGE = "the body is over the {} byte limit"
BODY_TIMEOUT = 30.0  # seconds between two pieces of a request body (slow uploads hold a slot)
BODY_DEADLINE = 120.0  # seconds for a whole body: 1 MiB at under 9 KB/s is an attack


class BodyTooSlow(BaseException):
    """Raised from `receive` when a body stalls; answered 408 (a BaseException for the
    same reason as BodyTooLarge)."""
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 << 20


async def too_large(send: Send, receive: Receive, cap: int) -> None:
    """413, sent whole, then a bounded drain of the rest of the body (discarded)."""
    data = json.dumps(error_body(413, TOO_LARGE.format(cap), "body_too_large")).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data, "more_body": True})
    deadline, drained = time.monotonic() + LINGER_SECONDS, 0
    try:
        while drained < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = await asyncio.wait_for(receive(), left)
            if msg["type"] != "http.request":
                break
            drained += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
    except TimeoutError:
        pass
    await send({"type": "http.response.body", "body": b""})


class Guard:
    """See the module docstring. `limits()` gives (max_body, ip buckets) at call time, so a
    reloaded agentd.toml applies without a restart; `log(msg)` records an escaped error."""

    def __init__(self, app: App, limits: Callable[[], tuple[int, Buckets]],
                 log: Callable[[str], None], closing: Callable[[], bool] = lambda: False):
        self.app, self.limits, self.log, self.closing = app, limits, log, closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap, buckets = self.limits()
        wait = buckets.take(client_ip(scope))
        if wait:
            await send_json(send, 429, error_body(429, "too many requests from this address",
                                                  "rate_limited"), retry_after(wait))
            return
        if self.closing() and scope.get("path") != "/healthz":
            await send_json(send, 503, error_body(503, "the agent is shutting down",
                                                  "shutting_down"), retry_after(30))
            return
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            await too_large(send, receive, cap)
            return
        seen = 0
        started = body_done = False
        deadline = time.monotonic() + BODY_DEADLINE

        async def capped() -> Message:
            nonlocal seen, body_done
            if body_done:  # later calls wait for a disconnect (streaming): no deadline
                return await receive()
            left = deadline - time.monotonic()
            try:
                msg = await asyncio.wait_for(receive(), min(BODY_TIMEOUT, max(0.0, left)))
            except TimeoutError:
                raise BodyTooSlow() from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                body_done = not msg.get("more_body")
                if seen > cap:
                    raise BodyTooLarge()
            return msg

        async def watched(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, capped, watched)
        except BodyTooLarge:
            if not started:
                await too_large(send, receive, cap)
        except BodyTooSlow:
            if not started:
                await send_json(send, 408, error_body(408, "the body arrived too slowly",
                                                      "request_timeout"), close=True)
        except Exception as e:
            if type(e).__name__ != "ClientDisconnect":
                self.log(f"{scope.get('method')} {scope.get('path', '')[:80]}: internal "
                         f"error ({type(e).__name__})")
            if not started:
                await send_json(send, 500, error_body(500, "internal error", "internal"),
                                close=True)


def _content_length(scope: Scope) -> int | None:
    """The declared length (ASCII digits only); one too long to parse is over any cap."""
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            return ascii_int(v) if len(v) <= 18 else (1 << 62 if v.isdigit() else None)
    return None
