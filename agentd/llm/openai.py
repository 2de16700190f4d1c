"""OpenAI Chat Completions behind the neutral Provider protocol.

Chat Completions rather than the Responses API because it is what OpenAI-compatible
servers (Ollama, vLLM, llama.cpp, gateways) speak, so one adapter covers them all; `label`
names which one this is. Always streams, with `include_usage` so token counts arrive in a
last chunk. The SDK is imported on first use so that `agentd --help` does not pay for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any

from agentd.llm.types import (
    Message,
    ProviderError,
    TextSink,
    ToolCall,
    ToolSpec,
    Usage,
    sanitize_history,
)

DEFAULT_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    def __init__(self, model: str, *, api_key: str | None, base_url: str | None,
                 max_retries: int = 2, timeout: float = 600.0, label: str = "openai",
                 key_env: str = "OPENAI_API_KEY"):
        self.name = f"{label}:{model}"
        self.model, self.label, self.key_env = model, label, key_env
        self.base_url, self.max_retries, self.timeout = base_url, max_retries, timeout
        self._key = api_key or (os.environ.get(key_env) if key_env else None)
        if not self._key and not key_env:
            self._key = "none"  # a keyless local server; the SDK insists on some key
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> Any:
        """The SDK client, made on first use and again per event loop: its connection pool
        belongs to the loop that opened it, and a CLI may run one asyncio.run per turn."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            if not self._key:
                raise ProviderError(self.name, f"no API key: set ${self.key_env}")
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=self._key, base_url=self.base_url, max_retries=self.max_retries,
                timeout=self.timeout)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
        self._client = self._loop = None

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None) -> Message:
        params: dict[str, Any] = {
            "model": self.model, "stream": True, "stream_options": {"include_usage": True},
            "messages": to_openai(system, sanitize_history(messages)),
        }
        if tools:
            params["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in tools]
        try:
            client = self._get_client()
            stream = await client.chat.completions.create(**params)
            async with stream:
                return await self._read(stream, on_text)
        except ProviderError:
            raise
        except Exception as e:
            raise self._error(e) from e

    async def _read(self, stream: Any, on_text: TextSink | None) -> Message:
        """Fold the chunks into one neutral message, passing text deltas on."""
        text: list[str] = []
        calls: dict[int, list[Any]] = {}  # index -> [id, name, [argument fragments]]
        usage: Usage | None = None
        stop: str | None = None
        chunks = 0
        async for chunk in stream:
            chunks += 1
            if chunk.usage:
                usage = _usage(chunk.usage)
            for choice in (chunk.choices or [])[:1]:
                stop = choice.finish_reason or stop
                delta = choice.delta
                if delta is None:
                    continue
                if delta.content:
                    text.append(delta.content)
                    if on_text:
                        on_text(delta.content)
                for tc in delta.tool_calls or []:
                    index = getattr(tc, "index", None)
                    if index is None:  # some compatible servers omit it: a new id, a new call
                        known = {slot[0] for slot in calls.values()}
                        new = bool(tc.id) and tc.id not in known
                        index = len(calls) if new else max(calls, default=0)
                    slot = calls.setdefault(index, ["", "", []])
                    slot[0] = tc.id or slot[0]
                    if tc.function:
                        slot[1] = slot[1] or tc.function.name or ""
                        slot[2].append(tc.function.arguments or "")
        if not chunks:
            raise ProviderError(self.name, "malformed response: the stream was empty",
                                hint=f"is {self._url()} an OpenAI-compatible API?")
        if stop is None:  # no finish_reason: the answer was cut off, tool JSON may be partial
            raise ProviderError(self.name, "the answer stream ended early", hint="try again")
        tool_calls: list[ToolCall] = []
        for _, (cid, name, parts) in sorted(calls.items()):
            if not cid or cid in {c.id for c in tool_calls}:  # ids must be unique
                cid = f"call_{uuid.uuid4().hex[:16]}"
            tool_calls.append(ToolCall(cid, name, *parse_arguments("".join(parts))))
        return Message("assistant", "".join(text), tool_calls, model=self.name,
                       usage=usage or Usage(), stop_reason=stop)

    def _error(self, e: Exception) -> ProviderError:
        """One line that says what failed and what to do; never the key, never a traceback."""
        import openai

        url = self._url()
        if isinstance(e, openai.APITimeoutError):
            return ProviderError(self.name, f"cannot reach {url}: no answer within "
                                 f"{self.timeout:g}s", hint="is the server running?")
        if isinstance(e, openai.APIConnectionError):
            return ProviderError(self.name, f"cannot reach {url}: is the server running?")
        if isinstance(e, openai.APIStatusError):
            body = e.body if isinstance(e.body, dict) else {}
            detail = body.get("message") or (e.body if isinstance(e.body, str) else e.message)
            return ProviderError(self.name, self._clean(str(detail)), e.status_code,
                                 self._hint(e.status_code))
        if isinstance(e, openai.APIError):  # an error object inside the stream
            return ProviderError(self.name, self._clean(e.message), hint="try again later")
        if isinstance(e, ValueError):  # JSON or schema errors in the body
            return ProviderError(self.name, f"malformed response from {url}: "
                                 f"{self._clean(str(e))}")
        return ProviderError(self.name, f"{type(e).__name__}: {self._clean(str(e))}")

    def _url(self) -> str:
        """Where requests went: the SDK may have taken it from its own *_BASE_URL variable."""
        url = self._client.base_url if self._client is not None else self.base_url
        return str(url or DEFAULT_URL).rstrip("/")

    def _hint(self, status: int | None) -> str:
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


def _usage(u: Any) -> Usage:
    """prompt_tokens counts cached tokens too; neutral `input` excludes them."""
    details = u.prompt_tokens_details
    read = (details.cached_tokens if details else None) or 0
    write = (getattr(details, "cache_write_tokens", None) if details else None) or 0
    return Usage(max(0, (u.prompt_tokens or 0) - read - write), u.completion_tokens or 0,
                 read, write)


def to_openai(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral history → Chat Completions messages (system first, results as role tool)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.text or None}
            if m.tool_calls:
                msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.name, "arguments": json.dumps(c.arguments)}} for c in m.tool_calls]
            else:
                msg["content"] = m.text  # content may only be null beside tool calls
            out.append(msg)
        elif m.role == "tool":
            text = m.text
            if m.is_error and not text.lower().startswith("error"):
                text = f"error: {text}"
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": text})
        else:
            out.append({"role": "user", "content": m.text})
    return out


def parse_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """(arguments, error) for a tool call's JSON text; never raises on what a model sent."""
    if not raw.strip():
        return {}, None  # some servers send "" for a call without arguments
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        return {}, f"invalid JSON arguments: {e.msg} at char {e.pos}"
    except RecursionError:
        return {}, "invalid JSON arguments: nested too deeply"
    if not isinstance(value, dict):
        return {}, f"invalid JSON arguments: expected an object, got {type(value).__name__}"
    return value, None
