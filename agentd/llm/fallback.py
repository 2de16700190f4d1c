"""A chain of models: when one is throttled or down, the next one answers.

Retries live here rather than in the SDKs (the adapters are built with `max_retries=0`):
the Anthropic SDK sleeps for whatever Retry-After a server sends, however long, while a
turn with a fallback should rather move on; and only here is the Retry-After seen, which
sets how long the throttled model is skipped.

What a failure means is the adapter's call (ProviderError.transient and .retry_after,
llm/types.py); this module reads those two fields and nothing else of an error. For each
call, each model of the chain in order:
- transient failures (408, 409, 429, 5xx, 529 overloaded, timeouts, refused or broken
  connections, a cut-off stream) are retried up to the endpoint's `max_retries`, waiting
  as Retry-After says when it says, else 0.5 s, 1 s, 2 s … (at most 8 s); a Retry-After
  longer than `[throttling] max_retry_wait` is not waited for: the chain moves on at once;
- a model that still fails is put in a cool-down (a circuit breaker) for `[throttling]
  cooldown`, or for the Retry-After when that is longer (at most an hour), recorded in
  `.agentd/cooldowns.json` so that later steps and turns, in any process, go straight
  to the next model until it has passed; then the model is tried first again;
- a transient failure whose server said `x-should-retry: false` (an infinite
  retry_after) is not retried on that model: the chain cools it down and moves on;
- anything else (401/403 a key, 400/404 a request or a model name, a budget refusal) is
  raised at once, never retried: another attempt or model would not fix it, and the user
  has to.
Models in a cool-down are not dropped, only tried last, so a chain whose every model is
throttled still makes an attempt instead of failing without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import random
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.llm.types import Message, Provider, ProviderError, Sampling, TextSink, ToolSpec

MAX_COOLDOWN = 3600.0
MAX_BYTES = 1 << 20  # the cool-down file holds a few models: more is not ours

now: Callable[[], float] = time.time  # tests move the clock …
sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # … and skip the waits

Prepare = Callable[[Provider, str, str, list[Message], list[ToolSpec]],
                   Awaitable[list[Message]]]


def backoff(attempt: int) -> float:
    return min(0.5 * 2 ** attempt, 8.0) * (1 - 0.25 * random.random())


class Breaker:
    """Cool-downs of throttled models, shared by every process of a home through one small
    JSON file (under an flock, replaced atomically). An unreadable file counts as empty:
    the worst it can cost is one more attempt at a throttled model."""

    def __init__(self, path: Path):
        self.path = path

    def _read(self) -> dict[str, Any]:
        """The file's object. It lives in `.agentd/`, which bash can write with the sandbox
        off: a symlink there is not followed and a FIFO not read (it would hang the turn)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return {}
        try:
            with open(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return {}
                data = json.loads(f.read(MAX_BYTES))
        except (OSError, ValueError, RecursionError):
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
        """Read, change and replace the file under its lock. The lock is opened without
        following a symlink (one planted there is removed) and the new file is written to
        an exclusive temp name: nothing planted in `.agentd/` is written through. A folder
        that is not a real one (a symlinked `.agentd`) gets nothing: the turn's own writes
        refuse it with the error (agentd.home `private_dir`)."""
        try:
            planted = not stat.S_ISDIR(os.lstat(self.path.parent).st_mode)
        except FileNotFoundError:
            planted = False
        if planted:
            yield {}
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_suffix(".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            lock.unlink()
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        with open(fd, "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            data = self._read()
            yield data
            t = now()
            data = {k: v for k, v in data.items()
                    if isinstance(v, dict) and isinstance(v.get("until"), int | float)
                    and v["until"] > t}
            tmp_fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cooldowns.",
                                           suffix=".tmp")
            try:
                with open(tmp_fd, "w", encoding="utf-8") as f:
                    f.write(json.dumps(data, indent=1) + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

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

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
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
                reply = await self._attempts(m, system, sent, tools, on_text, sampling)
            except ProviderError as e:
                if not e.transient:
                    raise
                wait = e.retry_after or 0.0
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
                            last.status if last else None, "try again later" if last else "",
                            transient=last is not None) from last

    async def _attempts(self, m: Member, system: str, messages: list[Message],
                        tools: list[ToolSpec], on_text: TextSink | None,
                        sampling: Sampling | None = None) -> Message:
        assert m.provider is not None
        for attempt in range(m.retries + 1):
            try:
                return await m.provider.complete(system, messages, tools, on_text, sampling)
            except ProviderError as e:
                if not e.transient or attempt == m.retries:
                    raise
                wait = backoff(attempt) if e.retry_after is None else e.retry_after
                if wait > self.max_wait:
                    raise
                await sleep(wait)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for m in self.members:
            if m.provider is not None:
                await m.provider.aclose()
