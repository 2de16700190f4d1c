"""OpenAI Chat Completions behind the neutral Provider protocol.

Chat Completions rather than the Responses API because it is what OpenAI-compatible
servers (Ollama, vLLM, llama.cpp, gateways) speak, so one adapter covers them all; `label`
names which one this is. Always streams, with `include_usage` so token counts arrive in a
last chunk; a server that sends none anyway (many local ones) gets its usage estimated
(llm/estimate.py) and marked so. Every request carries the output cap: as
`max_completion_tokens` to OpenAI's own API (its reasoning models refuse `max_tokens`),
as `max_tokens` to compatible servers (which know only that). The SDK is imported on first
use so that `agentd --help` does not pay for it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from agentd.llm.base import DEFAULT_BOUNDS, Bounds, SDKProvider, parse_arguments
from agentd.llm.estimate import estimate_usage
from agentd.llm.types import (
    Message,
    ProviderError,
    Sampling,
    TextSink,
    ToolCall,
    ToolSpec,
    Usage,
    output_cap,
    sanitize_history,
)

DEFAULT_URL = "https://api.openai.com/v1"


class OpenAIProvider(SDKProvider):
    default_url = DEFAULT_URL

    def __init__(self, model: str, *, api_key: str | None, base_url: str | None,
                 max_retries: int = 2, timeout: float = 600.0, label: str = "openai",
                 key_env: str = "OPENAI_API_KEY", bounds: Bounds = DEFAULT_BOUNDS) -> None:
        super().__init__(model, label=label, api_key=api_key, base_url=base_url,
                         max_retries=max_retries, timeout=timeout, key_env=key_env,
                         bounds=bounds)

    def _make_client(self) -> Any:
        import openai

        return openai.AsyncOpenAI(api_key=self._key, base_url=self.base_url,
                                  max_retries=self.max_retries, timeout=self.timeout)

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        params: dict[str, Any] = {
            "model": self.model, "stream": True, "stream_options": {"include_usage": True},
            "messages": to_openai(system, sanitize_history(messages)),
        }
        self._bound(params, sampling)
        if tools:
            params["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in tools]
        reply = await self._stream(lambda client: client.chat.completions.create, params,
                                   on_text)
        if reply.usage is None:  # the server counted nothing: count what went each way
            reply.usage = estimate_usage(system, messages, tools, reply)
        return reply

    def _bound(self, params: dict[str, Any], sampling: Sampling | None) -> None:
        """The output cap under the name this server knows, and the client's sampling."""
        self._get_client()  # the URL may come from the SDK's $OPENAI_BASE_URL
        own = self.label == "openai" and "api.openai.com" in self._url()
        params["max_completion_tokens" if own else "max_tokens"] = output_cap(
            self.bounds.max_tokens, sampling)
        if sampling is not None:
            if sampling.temperature is not None:
                params["temperature"] = sampling.temperature
            if sampling.stop:
                params["stop"] = list(sampling.stop)

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
            raise ProviderError(self.name, "the answer stream ended early", hint="try again",
                                transient=True)
        tool_calls: list[ToolCall] = []
        for _, (cid, name, parts) in sorted(calls.items()):
            if not cid or cid in {c.id for c in tool_calls}:  # ids must be unique
                cid = f"call_{uuid.uuid4().hex[:16]}"
            tool_calls.append(ToolCall(cid, name, *parse_arguments("".join(parts))))
        return Message("assistant", "".join(text), tool_calls, model=self.name,
                       usage=usage, stop_reason=stop)

    def _error(self, e: Exception) -> ProviderError:
        """One line that says what failed and what to do; never the key, never a traceback.
        Timeouts, refused or broken connections, throttling, overload, server errors and
        an error object inside the stream are transient; the rest is not."""
        import httpx2
        import openai

        url = self._url()
        if isinstance(e, openai.APITimeoutError):
            return ProviderError(self.name, f"cannot reach {url}: no answer within "
                                 f"{self.timeout:g}s", hint="is the server running?",
                                 transient=True)
        if isinstance(e, openai.APIConnectionError):
            return ProviderError(self.name, f"cannot reach {url}: is the server running?",
                                 transient=True)
        if isinstance(e, openai.APIStatusError):
            body = e.body if isinstance(e.body, dict) else {}
            detail = body.get("message") or (e.body if isinstance(e.body, str) else e.message)
            return self._http_error(self._clean(str(detail)), e.status_code, e.response.headers)
        if isinstance(e, openai.APIResponseValidationError | ValueError):  # JSON or schema
            return ProviderError(self.name, f"malformed response from {url}: "
                                 f"{self._clean(str(e))}")
        if isinstance(e, openai.APIError):  # an error object inside the stream: the server's
            return ProviderError(self.name, self._clean(e.message), hint="try again later",
                                 transient=True)
        if isinstance(e, httpx2.TransportError):  # the SDK leaves these unwrapped mid-stream
            return ProviderError(self.name, f"the connection to {url} broke: "
                                 f"{self._clean(str(e) or type(e).__name__)}", hint="try again",
                                 transient=True)
        return ProviderError(self.name, f"{type(e).__name__}: {self._clean(str(e))}")


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
