"""A chain of models: when one is throttled or down, the next one answers.

Retries live here rather than in the SDKs (the adapters are built with `max_retries=0`):
the Anthropic SDK sleeps for whatever Retry-After a server sends, however long, while a
turn with a fallback should rather move on; and only here is the Retry-After seen, which
sets how long the throttled model is skipped.

For each call, each model of the chain in order:
- transient failures (408, 409, 429, 5xx, 529 overloaded, timeouts, refused or broken
  connections) are retried up to the endpoint's `max_retries`, waiting as Retry-After
  says when it says, else 0.5 s, 1 s, 2 s … (at most 8 s); a Retry-After longer than
  `[throttling] max_retry_wait` is not waited for: the chain moves on at once;
- a model that still fails is put in a cool-down (a circuit breaker) for `[throttling]
  cooldown`, or for the Retry-After when that is longer (at most an hour), recorded in
  `.agentd/cooldowns.json` so that later steps and turns, in any process, go straight
  to the next model until it has passed; then the model is tried first again;
- anything else (401/403 a key, 400/404 a request or a model name, a budget refusal) is
  raised at once: another model would not fix it, and the user has to.
Models in a cool-down are not dropped, only tried last, so a chain whose every model is
throttled still makes an attempt instead of failing without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fcntl
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.llm.types import Message, Provider, ProviderError, TextSink, ToolSpec

MAX_COOLDOWN = 3600.0
TRANSIENT_STATUS = {408, 409, 425, 429}
_CONNECTION_ERRORS = {"APIConnectionError", "APITimeoutError", "TransportError",
                      "TimeoutException"}

now: Callable[[], float] = time.time  # tests move the clock …
sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # … and skip the waits

Prepare = Callable[[Provider, str, str, list[Message], list[ToolSpec]],
                   Awaitable[list[Message]]]


def is_transient(e: ProviderError) -> bool:
    """Would the same request succeed later, or on another model?"""
    if e.kind != "error":
        return False
    if e.status is not None:
        return e.status in TRANSIENT_STATUS or e.status >= 500
    cause = e.__cause__
    if cause is None:  # raised by an adapter itself: only a cut-off stream is transient
        return "ended early" in str(e)
    names = {k.__name__ for k in type(cause).__mro__}
    # an error object inside an OpenAI stream is the bare APIError: a server-side failure
    return bool(names & _CONNECTION_ERRORS) or type(cause).__name__ == "APIError"


def _headers(e: ProviderError) -> Any:
    return getattr(getattr(e.__cause__, "response", None), "headers", None) or {}


def retry_after(e: ProviderError) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, retry-after as seconds or as an
    HTTP date), or None."""
    h = _headers(e)
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = h.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            date = email.utils.parsedate_tz(value)
            if date is not None:
                return max(0.0, email.utils.mktime_tz(date) - now())
    return None


def backoff(attempt: int) -> float:
    return min(0.5 * 2 ** attempt, 8.0) * (1 - 0.25 * random.random())


class Breaker:
    """Cool-downs of throttled models, shared by every process of a home through one small
    JSON file (under an flock, replaced atomically). An unreadable file counts as empty:
    the worst it can cost is one more attempt at a throttled model."""

    def __init__(self, path: Path):
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def until(self, spec: str) -> float:
        """When `spec`'s cool-down ends (0: it is not cooling down)."""
        entry = self._read().get(spec)
        end = entry.get("until") if isinstance(entry, dict) else None
        ok = isinstance(end, int | float) and not isinstance(end, bool) and end > now()
        return float(end) if ok else 0.0

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            t = now()
            data = {k: v for k, v in data.items()
                    if isinstance(v, dict) and isinstance(v.get("until"), int | float)
                    and v["until"] > t}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            tmp.replace(self.path)

    def trip(self, spec: str, seconds: float, status: int | None, reason: str) -> None:
        with self._edit() as data:
            data[spec] = {"until": round(now() + seconds, 3), "status": status,
                          "reason": reason[:300]}

    def clear(self, spec: str) -> None:
        """A model answered: forget its cool-down (writes only when there was one)."""
        if spec in self._read():
            with self._edit() as data:
                data.pop(spec, None)


@dataclass
class Member:
    """One model of a chain: its provider (or why it could not be built) and how often a
    transient failure is retried on it."""

    spec: str
    provider: Provider | None
    retries: int = 2
    broken: str = ""


class FallbackProvider:
    """A chain of models behind the Provider protocol. `name` is the model that served the
    last call (or the first of the chain before any)."""

    def __init__(self, members: list[Member], breaker: Breaker, cooldown: float,
                 max_wait: float, prepare: Prepare | None = None):
        self.members, self.breaker = members, breaker
        self.cooldown, self.max_wait, self.prepare = cooldown, max_wait, prepare
        self.name = members[0].spec

    def order(self) -> list[Member]:
        """The chain as it will be tried now: models not cooling down first, in their
        order, then the cooling ones, the soonest to recover first."""
        ends = {m.spec: self.breaker.until(m.spec) for m in self.members}
        ready = [m for m in self.members if not ends[m.spec]]
        return ready + sorted((m for m in self.members if ends[m.spec]),
                              key=lambda m: ends[m.spec])

    def upcoming(self) -> str:
        return next((m.spec for m in self.order() if m.provider), self.name)

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None) -> Message:
        failures: list[ProviderError] = []
        notes: list[str] = []
        for m in self.order():
            if m.provider is None:
                notes.append(f"{m.spec}: {m.broken}")
                continue
            try:
                sent = messages
                if self.prepare:
                    sent = await self.prepare(m.provider, m.spec, system, messages, tools)
                reply = await self._attempts(m, system, sent, tools, on_text)
            except ProviderError as e:
                if not is_transient(e):
                    raise
                wait = retry_after(e) or 0.0
                self.breaker.trip(m.spec, max(self.cooldown, min(wait, MAX_COOLDOWN)),
                                  e.status, str(e))
                failures.append(e)
                continue
            self.breaker.clear(m.spec)
            self.name = m.spec
            return reply
        if len(failures) == 1 and not notes:
            raise failures[0]
        last = failures[-1] if failures else None
        tried = "; ".join([str(e) for e in failures] + notes)
        raise ProviderError(self.members[0].spec, f"no model of the chain answered: {tried}",
                            last.status if last else None,
                            "try again later" if last else "") from last

    async def _attempts(self, m: Member, system: str, messages: list[Message],
                        tools: list[ToolSpec], on_text: TextSink | None) -> Message:
        assert m.provider is not None
        for attempt in range(m.retries + 1):
            try:
                return await m.provider.complete(system, messages, tools, on_text)
            except ProviderError as e:
                if (not is_transient(e) or attempt == m.retries
                        or _headers(e).get("x-should-retry") == "false"):
                    raise
                wait = retry_after(e)
                wait = backoff(attempt) if wait is None else wait
                if wait > self.max_wait:
                    raise
                await sleep(wait)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for m in self.members:
            close = getattr(m.provider, "aclose", None)
            if close:
                await close()
