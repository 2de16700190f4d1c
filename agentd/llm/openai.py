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
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from agentd.llm.base import DEFAULT_BOUNDS, Bounds, SDKProvider
from agentd.llm.compat import (
    PROFILES,
    Compat,
    advice,
    as_text_history,
    profile_cap,
    profile_of_owners,
    shape_problem,
    tools_prompt,
)
from agentd.llm.estimate import estimate_usage
from agentd.llm.toolparse import parse_arguments, text_tool_calls
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
                 key_env: str = "OPENAI_API_KEY", compat: Compat | None = None,
                 probe: dict[str, bool] | None = None, bounds: Bounds = DEFAULT_BOUNDS) -> None:
        super().__init__(model, label=label, api_key=api_key, base_url=base_url,
                         max_retries=max_retries, timeout=timeout, key_env=key_env,
                         bounds=bounds)
        self.compat = compat or Compat()
        self._sent: dict[str, bool] = {}  # the last request's shape, to explain a rejection
        self._probe = probe  # profile = "auto": the switches set beside it, until it asked

    def _make_client(self) -> Any:
        import openai

        return openai.AsyncOpenAI(api_key=self._key, base_url=self.base_url,
                                  max_retries=self.max_retries, timeout=self.timeout)

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        params: dict[str, Any] = {
            "model": self.model, "stream": True, "stream_options": {"include_usage": True},
        }
        if self._probe is not None:
            await self._detect()
        self._shape(params, system, messages, tools)
        self._bound(params, sampling)
        if self.compat.text_tool_calls and tools:
            reply = await self._text_calls(params, tools, on_text)
        elif not params["stream"]:
            reply = await self._stream(_whole, params, on_text)
        else:
            reply = await self._stream(lambda client: client.chat.completions.create, params,
                                       on_text)
            if tools and not reply.tool_calls and text_tool_calls(reply.text,
                                                                  _names(tools))[1]:
                raise ProviderError(self.name, "the model wrote its tool call as text, which "
                                    "this server does not turn into a call",
                                    hint=advice(self.label, "text_tool_calls", True))
        if reply.usage is None:  # the server counted nothing: count what went each way
            reply.usage = estimate_usage(system, messages, tools, reply)
        return reply

    # -- compatibility profiles (llm/compat.py) --------------------------------------------

    async def _detect(self) -> None:
        """profile = "auto": ask the server's model list who it is, once; when it does not
        say (or does not answer within 5 s), the profile guessed by name and port stays."""
        overrides, self._probe = self._probe or {}, None
        try:
            client = self._get_client().with_options(timeout=5.0, max_retries=0)
            page = await client.models.list()
            owners = [str(getattr(m, "owned_by", "")) for m in page.data]
        except Exception:  # the request itself will say what is wrong with the server
            return
        name = profile_of_owners(owners)
        if name:
            self.compat = replace(PROFILES[name][1], **overrides)

    def _shape(self, params: dict[str, Any], system: str, messages: list[Message],
               tools: list[ToolSpec]) -> None:
        """Messages, tools, tool_choice and streaming as this server's switches want them;
        what was sent is remembered so a rejection can name the switch that may fix it."""
        sw = self.compat
        history = sanitize_history(messages)
        if sw.text_tool_calls:
            system = f"{system}\n\n{tools_prompt(tools)}".strip() if tools else system
            history = as_text_history(history)
        params["messages"] = to_openai(system, history, sw.null_content_as_empty)
        native = bool(tools) and not sw.text_tool_calls
        if native:
            params["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in tools]
            if sw.send_tool_choice:
                params["tool_choice"] = "auto"
            if not sw.stream_with_tools:
                params["stream"] = False
                params.pop("stream_options", None)
        self._sent = {"tools": native, "stream": params["stream"],
                      "tool_choice": "tool_choice" in params,
                      "null_content": any(m.get("role") == "assistant" and m.get("content")
                                          is None for m in params["messages"])}

    async def _text_calls(self, params: dict[str, Any], tools: list[ToolSpec],
                          on_text: TextSink | None) -> Message:
        """A server without native tool calling: the calls are read from the reply's text,
        so the text reaches `on_text` only after that, without the calls in it."""
        reply = await self._stream(lambda client: client.chat.completions.create, params,
                                   None)
        rest, found = text_tool_calls(reply.text, _names(tools))
        calls = [ToolCall(f"call_{uuid.uuid4().hex[:16]}", *call) for call in found]
        if rest and on_text:
            on_text(rest)
        if calls:
            reply.text, reply.tool_calls = rest, calls
            if reply.stop_reason == "stop":  # a cut-off reply ("length") stays cut off
                reply.stop_reason = "tool_calls"
        return reply

    def _shape_error(self, detail: str, status: int | None) -> ProviderError | None:
        """A rejection that repeats every time because of the request's shape, reported as
        such with the switch that may fix it; None when nothing points at the shape."""
        found = shape_problem(detail, status, self._sent)
        if found is None:
            return None
        what, switch, value = found
        return ProviderError(self.name, f"the server rejected the request's shape ({what}): "
                             f"{detail}", status, advice(self.label, switch, value))

    def _bound(self, params: dict[str, Any], sampling: Sampling | None) -> None:
        """The output cap under the name this server knows, and the client's sampling."""
        self._get_client()  # the URL may come from the SDK's $OPENAI_BASE_URL
        own = self.label == "openai" and "api.openai.com" in self._url()
        cap = profile_cap(self.bounds.max_tokens, self.compat, self.bounds.own_cap)
        params["max_completion_tokens" if own else "max_tokens"] = output_cap(cap, sampling)
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
            shape = self._shape_error("the stream was empty", None)
            if shape:
                raise shape
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
            detail = self._clean(str(detail))
            if e.status_code not in (401, 403, 404, 408, 409, 429):
                shape = self._shape_error(detail, e.status_code)
                if shape:
                    return shape
            return self._http_error(detail, e.status_code, e.response.headers)
        if isinstance(e, openai.APIResponseValidationError | ValueError):  # JSON or schema
            return ProviderError(self.name, f"malformed response from {url}: "
                                 f"{self._clean(str(e))}")
        if isinstance(e, openai.APIError):  # an error object inside the stream: the server's
            shape = self._shape_error(self._clean(e.message), None)
            if shape:
                return shape
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


def _names(tools: list[ToolSpec]) -> set[str]:
    return {t.name for t in tools}


class _Whole:
    """A completion that was not streamed, as a stream of one chunk, so `_read` folds both
    (and `_stream` maps both errors) the same way."""

    def __init__(self, completion: Any) -> None:
        self.completion = completion

    async def __aenter__(self) -> _Whole:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def __aiter__(self) -> Any:
        c = self.completion
        choices = [SimpleNamespace(finish_reason=ch.finish_reason, delta=ch.message)
                   for ch in (c.choices or [])[:1]]
        yield SimpleNamespace(usage=c.usage, choices=choices)


def _whole(client: Any) -> Any:
    """`create` for `_stream` that asks for the whole completion at once."""
    async def once(**params: Any) -> _Whole:
        return _Whole(await client.chat.completions.create(**params))
    return once


def to_openai(system: str, messages: list[Message],
              null_as_empty: bool = False) -> list[dict[str, Any]]:
    """Neutral history → Chat Completions messages (system first, results as role tool).
    `null_as_empty`: "" instead of null beside tool calls, for servers that reject null."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == "assistant":
            empty = "" if null_as_empty else None
            msg: dict[str, Any] = {"role": "assistant", "content": m.text or empty}
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
