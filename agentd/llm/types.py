"""Provider-neutral conversation types.

Every adapter converts to and from these, so a transcript written while talking to one
provider can be continued on another. Nothing here imports an SDK.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

# neutral ground shared with agentd/tools (agentd/toolspec.py); importable from here too
from agentd.toolspec import ToolCall, ToolSpec

Role = Literal["user", "assistant", "tool"]


@dataclass
class Usage:
    """Token counts for one model call, normalised across providers.

    `input` excludes cached tokens: the prompt size is input + cache_read + cache_write.
    (Anthropic reports it that way; OpenAI's prompt_tokens includes cached tokens, so the
    adapter subtracts them.)

    `estimated`: the provider reported no usage (many local servers send none when
    streaming), so the adapter counted characters / 4 of what it sent and received
    (llm/estimate.py). Budgets count these tokens like any others; reports mark them "~".
    A sum is estimated when any part of it is.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True)
class Sampling:
    """What a client asked of the model's sampling (the bridge's OpenAI endpoint passes a
    chat client's `temperature`, `max_tokens` and `stop` through). None / () means the
    provider's own setting; `max_tokens` never raises the configured output cap."""

    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens,
                "stop": list(self.stop)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sampling:
        return cls(data.get("temperature"), data.get("max_tokens"),
                   tuple(data.get("stop") or ()))


@dataclass
class Message:
    """One entry of a conversation.

    role "user": `text`. role "assistant": `text`, `tool_calls`, `model`, `usage`,
    `stop_reason`. role "tool": `text` is the result for `tool_call_id`, `is_error` marks a
    failure.
    """

    role: Role
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    is_error: bool = False
    model: str | None = None
    usage: Usage | None = None
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready dict: empty and default fields are left out."""
        d = asdict(self)
        if d["usage"] and not d["usage"]["estimated"]:
            del d["usage"]["estimated"]  # only an estimate says so: old readers see no change
        return {k: v for k, v in d.items() if k == "role" or v not in (None, "", [], False)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        if d.get("role") not in ("user", "assistant", "tool"):
            raise ValueError(f"unknown message role {d.get('role')!r}")
        calls = [ToolCall(**c) for c in d.get("tool_calls") or []]
        usage = Usage(**d["usage"]) if d.get("usage") else None
        return cls(
            role=d["role"],
            text=str(d.get("text") or ""),
            tool_calls=calls,
            tool_call_id=d.get("tool_call_id"),
            is_error=bool(d.get("is_error")),
            model=d.get("model"),
            usage=usage,
            stop_reason=d.get("stop_reason"),
        )


class ProviderError(Exception):
    """A model call that failed.

    `str()` is the one line shown to the user: provider, HTTP status when there is one,
    and what to do about it. `kind` becomes the turn's status: "error", or "budget" for a
    call refused by a spending cap (agentd/budget.py).

    The adapter that raises it knows its SDK and says what the failure means to a caller,
    so nothing upstream has to guess from SDK class names or message text:
    - `transient`: the same request may succeed later or on another model (throttling,
      overload, a 5xx, a timeout, a broken connection, a cut-off stream). A fallback
      chain (llm/fallback.py) retries these and moves on; anything else (a key, a bad
      request, an unknown model, a budget refusal) is raised at once, since another
      attempt would fail the same way;
    - `retry_after`: seconds the server asked to wait before trying again, or None.
    """

    kind = "error"

    def __init__(self, provider: str, message: str, status: int | None = None, hint: str = "",
                 *, transient: bool = False, retry_after: float | None = None):
        self.provider, self.status, self.hint = provider, status, hint
        self.transient, self.retry_after = transient, retry_after
        code = f" {status}" if status else ""
        super().__init__(f"{provider}:{code} {message}" + (f" — {hint}" if hint else ""))


TextSink = Callable[[str], None]

# stop reasons that mean "cut off at the output cap": OpenAI's and Anthropic's words
TRUNCATED_STOPS = frozenset({"length", "max_tokens"})


def output_cap(configured: int, sampling: Sampling | None) -> int:
    """The max_tokens a request carries: the configured cap, lowered (never raised) by a
    client's own max_tokens."""
    asked = sampling.max_tokens if sampling is not None else None
    return min(configured, asked) if asked and asked > 0 else configured


class Provider(Protocol):
    """One model behind one wire protocol, or a wrapper around others (a fallback chain,
    a budget check). `name` is the `provider:model` string."""

    name: str

    async def complete(
        self,
        system: str,
        messages: list[Message],
        tools: list[ToolSpec],
        on_text: TextSink | None = None,
        sampling: Sampling | None = None,
    ) -> Message:
        """Send the conversation, stream text deltas to `on_text`, return the assistant
        message (with usage and the model name). `sampling` is the turn's request of the
        model (temperature, stop, a lower max_tokens); a wrapper passes it on unchanged.
        Raises ProviderError on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections; a wrapper closes what it wraps. Called once per turn, on
        the event loop the calls ran on."""
        ...


def sanitize_history(messages: list[Message]) -> list[Message]:
    """Make a history safe to hand to any provider.

    Tool-call ids are normalised to `call_<n>` (providers restrict their shape), every tool
    call gets exactly one result (a synthetic error if the transcript lost it, e.g. after a
    crash), and results without a matching call are dropped.
    """
    out: list[Message] = []
    ids: dict[str, list[str]] = {}  # original id -> new ids, in call order (ids can repeat)
    pending: list[str] = []
    n = 0

    def close_pending() -> None:
        for cid in pending:
            out.append(Message("tool", "error: no result was recorded for this call",
                               tool_call_id=cid, is_error=True))
        pending.clear()

    for m in messages:
        if m.role == "tool":
            new = next((i for i in ids.get(m.tool_call_id or "", []) if i in pending), None)
            if new is None:
                continue
            pending.remove(new)
            out.append(Message("tool", m.text, tool_call_id=new, is_error=m.is_error))
            continue
        close_pending()
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for c in m.tool_calls:
                n += 1
                new = f"call_{n}"
                ids.setdefault(c.id, []).append(new)
                pending.append(new)
                calls.append(ToolCall(new, c.name, c.arguments, c.error))
            m = Message("assistant", m.text, calls, model=m.model, usage=m.usage,
                        stop_reason=m.stop_reason)
        out.append(m)
    close_pending()
    return out
