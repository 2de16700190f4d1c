"""What the SDK-backed adapters (Anthropic, OpenAI-compatible) have in common.

Both hold a key, a base URL, retry and timeout settings and one SDK client, and both turn
SDK errors into the same kind of one-line ProviderError. That bookkeeping lives here once;
each adapter keeps only what its wire protocol makes different: building its SDK client
(`_make_client`, where the SDK is imported, so importing an adapter stays cheap), the
request and stream format, and which SDK exceptions mean what.

Every call is bounded here, whatever the SDK does: `max_tokens` (the output cap the
adapter sends), `idle_timeout` (no bytes for that long, before the answer starts or within
it) and `call_timeout` (the whole call, however steadily the server keeps sending; the
SDK's own timeout is per read and never stops a stream that keeps trickling).

An adapter is where an SDK's failure is understood, so it is where a ProviderError gets
its `transient` and `retry_after` (llm/types.py): the status codes and headers below
decide them for HTTP errors; connection failures and cut-off streams are transient.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentd.llm.types import Message, ProviderError, TextSink
from agentd.surrogates import replace_surrogates, replace_surrogates_in


@dataclass(frozen=True)
class Bounds:
    """How far one call may go: the output cap sent with every request (a client's own
    max_tokens only lowers it) and the two time limits, in seconds. `own_cap`: the cap was
    set for this model or provider, so a compat profile's smaller default does not lower
    it (llm/compat.py)."""

    max_tokens: int = 8192
    idle_timeout: float = 120.0
    call_timeout: float = 600.0
    own_cap: bool = False


DEFAULT_BOUNDS = Bounds()

TRANSIENT_STATUS = {408, 409, 425, 429}  # and every 5xx (529: Anthropic's "overloaded")


def transient_status(status: int) -> bool:
    """Would the same request succeed later: a timeout, a conflict, throttling, or the
    server's own failure (5xx); not a key, a request or a model name (other 4xx)."""
    return status in TRANSIENT_STATUS or status >= 500


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, retry-after as seconds or as an
    HTTP date), or None."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            date = email.utils.parsedate_tz(value)
            if date is not None:
                return max(0.0, email.utils.mktime_tz(date) - time.time())
    return None


class SDKProvider:
    """Shared state and helpers for a provider that talks through a vendor SDK client.

    Subclasses set `default_url` (shown in messages when neither the config nor the SDK
    named one) and implement `_make_client`.
    """

    default_url: str = ""

    def __init__(self, model: str, *, label: str, api_key: str | None, base_url: str | None,
                 max_retries: int, timeout: float, key_env: str,
                 bounds: Bounds = DEFAULT_BOUNDS) -> None:
        self.name = f"{label}:{model}"
        self.model, self.label, self.key_env = model, label, key_env
        self.base_url, self.max_retries, self.timeout = base_url, max_retries, timeout
        self.bounds = bounds
        self._key = api_key or (os.environ.get(key_env) if key_env else None)
        if not self._key and not key_env:
            self._key = "none"  # a keyless endpoint; the SDK insists on some credential
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _make_client(self) -> Any:
        """A new async SDK client for `self._key`, `base_url`, `max_retries` and `timeout`.

        Overridden by each adapter, which imports its SDK here rather than at module level
        so that `agentd --help` does not pay for it.
        """
        raise NotImplementedError

    def _get_client(self) -> Any:
        """The SDK client, made on first use and again per event loop: its connection pool
        belongs to the loop that opened it, and a CLI may run one asyncio.run per turn."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            if not self._key:
                raise ProviderError(self.name, f"no API key: set ${self.key_env}")
            self._client = self._make_client()
            self._loop = loop
        return self._client

    async def _stream(self, create: Callable[[Any], Any], params: dict[str, Any],
                      on_text: TextSink | None) -> Message:
        """Open the stream with `create(client)` and fold it with `_read`, within the idle
        and total time limits; every failure comes out as one ProviderError (`_error`),
        never an SDK exception.

        The idle limit is one deadline, pushed back by every event that arrives (a
        `wait_for` per event would cost a task each: ~10x the time per event)."""
        try:
            client = self._get_client()  # before the clock starts: it may import the SDK
            async with asyncio.timeout(self.bounds.call_timeout):
                try:
                    async with asyncio.timeout(self.bounds.idle_timeout) as idle:
                        stream = await create(client)(**params)
                        sink = None if on_text is None else (
                            lambda t: on_text(replace_surrogates(t)))
                        async with stream:
                            events = self._pushing(idle, stream)
                            try:
                                reply = await self._read(events, sink)
                            finally:
                                await events.aclose()
                except TimeoutError:  # the idle deadline's own (the SDKs' have their classes)
                    raise self._idle_error() from None
            # A "\ud800" in the provider's JSON: no later write or request could encode it.
            return Message.from_dict(replace_surrogates_in(reply.to_dict()))
        except ProviderError:
            raise
        except TimeoutError:  # the call's deadline
            # Not retried on this model: a call that ran this long would run as long again;
            # a chain moves on to its next model (and cools this one down).
            raise ProviderError(
                self.name, f"the call ran past its time limit of {self.bounds.call_timeout:g}s",
                hint="[calls] call_timeout sets it, [calls] max_tokens bounds the answer",
                transient=True, retry_after=math.inf) from None
        except Exception as e:
            raise self._error(e) from e

    def _idle_error(self) -> ProviderError:
        return ProviderError(self.name, f"{self._url()} sent nothing for "
                             f"{self.bounds.idle_timeout:g}s", hint="the server stalled; "
                             "[calls] idle_timeout sets the wait", transient=True)

    async def _pushing(self, idle: asyncio.Timeout, stream: Any) -> AsyncGenerator[Any, None]:
        """The stream's events, each pushing the idle deadline back."""
        loop = asyncio.get_running_loop()
        async for event in stream:
            idle.reschedule(loop.time() + self.bounds.idle_timeout)
            yield event

    async def _read(self, stream: Any, on_text: TextSink | None) -> Message:
        raise NotImplementedError

    def _error(self, e: Exception) -> ProviderError:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the client's connections, but only on the loop that owns them (closing them
        from another loop would fail); a client of a finished loop is just dropped."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._loop = None

    def _http_error(self, detail: str, status: int, headers: Mapping[str, str] | None
                    ) -> ProviderError:
        """The error for an HTTP error response: transient by its status, with the wait its
        Retry-After asks for. A server saying `x-should-retry: false` on a transient status
        (OpenAI's quota errors do) means "not here, not soon": the wait is infinite, so a
        chain moves on to its next model at once (and cools this one down) instead of
        retrying it, and a chain of one raises it at once."""
        h = headers or {}
        transient = transient_status(status)
        wait = math.inf if transient and h.get("x-should-retry") == "false" else retry_after(h)
        return ProviderError(self.name, detail, status, self._hint(status),
                             transient=transient, retry_after=wait)

    def _url(self) -> str:
        """Where requests went: the SDK may have taken it from its own *_BASE_URL variable."""
        url = self._client.base_url if self._client is not None else self.base_url
        return str(url or self.default_url).rstrip("/")

    def _hint(self, status: int | None) -> str:
        """What the user can do about an HTTP status: the key, the model name, or waiting."""
        if status in (401, 403):
            return f"check ${self.key_env}" if self.key_env else "check the API key"
        if status == 404:
            return f"model {self.model} not found; name models as {self.label}:<model-id>"
        if status is not None and (status in (408, 409, 429) or status >= 500):
            n = self.max_retries
            tries = f"retried {n} time{'s' if n > 1 else ''}; " if n else ""
            return f"{tries}try again later"
        return ""

    def _clean(self, text: str) -> str:
        """One short line, with the key blanked out should a server echo it."""
        if self._key and len(self._key) >= 8:  # real keys are long; "none" is a word
            text = text.replace(self._key, "***")
        line = " ".join(text.split())
        return line if len(line) <= 200 else line[:199] + "…"
