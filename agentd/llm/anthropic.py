"""The Anthropic Messages API behind the neutral Provider protocol.

Always streams (text reaches the user as it is written, and long answers do not hit the
non-streaming timeout). The stream is read as raw events rather than through the SDK's
`messages.stream()` helper because that helper raises on a malformed tool-call JSON
fragment, while we want to hand malformed arguments back as data (ToolCall.error). The
SDK is imported on first use so that `agentd --help` does not pay for it.
"""

from __future__ import annotations

from typing import Any

from agentd.llm.base import DEFAULT_BOUNDS, Bounds, SDKProvider
from agentd.llm.toolparse import parse_arguments
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

DEFAULT_URL = "https://api.anthropic.com"
TRANSIENT_TYPES = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500}


class AnthropicProvider(SDKProvider):
    default_url = DEFAULT_URL

    def __init__(self, model: str, *, api_key: str | None, base_url: str | None,
                 max_retries: int = 2, timeout: float = 600.0,
                 key_env: str = "ANTHROPIC_API_KEY", bounds: Bounds = DEFAULT_BOUNDS) -> None:
        super().__init__(model, label="anthropic", api_key=api_key, base_url=base_url,
                         max_retries=max_retries, timeout=timeout, key_env=key_env,
                         bounds=bounds)

    def _make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(api_key=self._key, base_url=self.base_url,
                                        max_retries=self.max_retries, timeout=self.timeout)

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        params: dict[str, Any] = {
            "model": self.model, "max_tokens": output_cap(self.bounds.max_tokens, sampling),
            "stream": True, "messages": to_anthropic(sanitize_history(messages)),
        }
        # No temperature: the Messages API of current models takes none (nor does the SDK's
        # `create` any longer); a client's temperature is dropped here, its stop kept.
        if sampling is not None and sampling.stop:
            params["stop_sequences"] = list(sampling.stop)
        if system:
            params["system"] = [{"type": "text", "text": system}]
        if tools:
            params["tools"] = [{"name": t.name, "description": t.description,
                                "input_schema": t.parameters} for t in tools]
        add_cache_breakpoints(params)
        return await self._stream(lambda client: client.messages.create, params, on_text)

    async def _read(self, stream: Any, on_text: TextSink | None) -> Message:
        """Fold the event stream into one neutral message, passing text deltas on."""
        text: list[str] = []
        calls: dict[int, tuple[str, str, list[str]]] = {}  # block index -> id, name, json
        usage: Usage | None = None
        stop: str | None = None
        async for ev in stream:
            if ev.type == "message_start":
                u = ev.message.usage
                usage = Usage(u.input_tokens or 0, u.output_tokens or 0,
                              u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0)
            elif ev.type == "content_block_start" and ev.content_block.type == "tool_use":
                calls[ev.index] = (ev.content_block.id, ev.content_block.name, [])
            elif ev.type == "content_block_delta":
                if ev.delta.type == "text_delta" and ev.delta.text:
                    text.append(ev.delta.text)
                    if on_text:
                        on_text(ev.delta.text)
                elif ev.delta.type == "input_json_delta" and ev.index in calls:
                    calls[ev.index][2].append(ev.delta.partial_json)
            elif ev.type == "message_delta" and usage is not None:
                stop = ev.delta.stop_reason or stop
                u = ev.usage  # cumulative; the optional counts are absent when unchanged
                usage.output = u.output_tokens or usage.output
                usage.input = u.input_tokens if u.input_tokens is not None else usage.input
                if u.cache_read_input_tokens is not None:
                    usage.cache_read = u.cache_read_input_tokens
                if u.cache_creation_input_tokens is not None:
                    usage.cache_write = u.cache_creation_input_tokens
        if usage is None:
            raise ProviderError(self.name, "malformed response: the stream had no message",
                                hint=f"is {self._url()} an Anthropic API?")
        if stop is None:  # no message_delta: the answer was cut off, tool JSON may be partial
            raise ProviderError(self.name, "the answer stream ended early", hint="try again",
                                transient=True)
        tool_calls = [ToolCall(cid, name, *parse_arguments("".join(parts)))
                      for _, (cid, name, parts) in sorted(calls.items())]
        return Message("assistant", "".join(text), tool_calls, model=self.name, usage=usage,
                       stop_reason=stop)

    def _error(self, e: Exception) -> ProviderError:
        """One line that says what failed and what to do; never the key, never a traceback.
        Timeouts, refused or broken connections, throttling, overload and server errors
        are transient; a key, a request, a model name or a malformed response are not."""
        import anthropic
        import httpx2

        url = self._url()
        if isinstance(e, anthropic.APITimeoutError | httpx2.TimeoutException):
            return ProviderError(self.name, f"cannot reach {url}: no answer within "
                                 f"{self.timeout:g}s", hint="is the server running?",
                                 transient=True)
        if isinstance(e, anthropic.APIConnectionError):
            return ProviderError(self.name, f"cannot reach {url}: is the server running?",
                                 transient=True)
        if isinstance(e, anthropic.APIStatusError):
            detail = self._clean(e.api_message or str(e.body or e.message))
            if e.status_code < 400:  # an error event mid-stream, which the SDK does not retry
                status = TRANSIENT_TYPES.get(str(e.type))
                return ProviderError(self.name, detail, status, "try again later",
                                     transient=status is not None)
            return self._http_error(detail, e.status_code, e.response.headers)
        if isinstance(e, httpx2.TransportError):  # the SDK leaves these unwrapped mid-stream
            return ProviderError(self.name, f"the connection to {url} broke: "
                                 f"{self._clean(str(e) or type(e).__name__)}", hint="try again",
                                 transient=True)
        if isinstance(e, anthropic.APIResponseValidationError | ValueError):
            return ProviderError(self.name, f"malformed response from {url}: "
                                 f"{self._clean(str(e))}")
        return ProviderError(self.name, f"{type(e).__name__}: {self._clean(str(e))}")


CACHE = {"type": "ephemeral"}  # 5 minutes; writes cost 1.25x input, reads 0.1x


def add_cache_breakpoints(params: dict[str, Any]) -> None:
    """Mark where the prompt cache may be written and read: at most four places (the API's
    limit), in prefix order tools → system → messages.

    1. the last tool: the tool schemas never change, so any turn can read them;
    2. the system prompt: stable within a turn (the day log and clock change it between);
    3. the end of the previous request (the user turn before the last reply): the entry
       the previous step wrote, so this step reads it exactly, however many blocks the
       last step added (the API only looks 20 blocks back from a breakpoint);
    4. the last message: this request is written for the next step to read.
    Explicit marks rather than the top-level automatic `cache_control`: they also cache
    tools and system on their own, and every Messages-API server accepts them. Below the
    model's minimum (1,024+ tokens) the API silently caches nothing: no harm done.
    """
    for key in ("tools", "system"):
        if params.get(key):
            params[key][-1] = {**params[key][-1], "cache_control": CACHE}
    msgs = params["messages"]
    for i in (len(msgs) - 3, len(msgs) - 1):
        if i >= 0 and msgs[i]["content"]:
            blocks = msgs[i]["content"] = list(msgs[i]["content"])
            blocks[-1] = {**blocks[-1], "cache_control": CACHE}


def to_anthropic(messages: list[Message]) -> list[dict[str, Any]]:
    """Neutral history → Messages API turns.

    Tool results travel as `tool_result` blocks in a user turn; consecutive same-role
    entries are merged so roles alternate, as the API requires. Empty text blocks are
    dropped (the API rejects them), and an assistant turn left with nothing goes too.
    """
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        text = [{"type": "text", "text": m.text}] if m.text.strip() else []
        if m.role == "assistant":
            add("assistant", text + [{"type": "tool_use", "id": c.id, "name": c.name,
                                      "input": c.arguments} for c in m.tool_calls])
        elif m.role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": m.tool_call_id,
                          "content": m.text or "(no output)", "is_error": m.is_error}])
        else:
            add("user", text)
    return out
