"""One turn of the agent: model → tool calls → results → … until the model stops calling
tools or the step limit is reached. Provider-neutral; failures end the turn as data."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agentd.llm.types import Message, Provider, ProviderError, ToolCall, Usage
from agentd.tools import ToolContext, ToolResult
from agentd.tools.dispatch import SPECS, run_tool


class Events:
    """What a turn reports as it goes. Subclass and override what you render or store."""

    def text(self, delta: str) -> None: ...
    def message(self, msg: Message) -> None: ...
    def tool_call(self, call: ToolCall) -> None: ...
    def tool_result(self, call: ToolCall, result: Message) -> None: ...


@dataclass
class LoopResult:
    status: str  # "ok" | "max_steps" | "empty" | "error" | "budget" | "interrupted"
    text: str = ""
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    error: str | None = None


async def run_loop(provider: Provider, system: str, messages: list[Message], ctx: ToolContext,
                   max_steps: int, events: Events) -> LoopResult:
    """Run the loop on `messages` (appended to in place) and say how it ended."""
    r = LoopResult("ok")
    for r.steps in range(1, max_steps + 1):
        try:
            reply = await provider.complete(system, messages, SPECS, events.text)
        except ProviderError as e:
            r.status, r.error = e.kind, str(e)
            return r
        messages.append(reply)
        events.message(reply)
        r.usage += reply.usage or Usage()
        r.text = reply.text
        if not reply.tool_calls:
            if not reply.text.strip():
                r.status, r.error = "empty", f"{provider.name} returned an empty reply"
            return r
        for i, call in enumerate(reply.tool_calls):
            events.tool_call(call)
            try:
                res = await run_tool(ctx, call)
            except asyncio.CancelledError:  # Ctrl-C: every call still gets a result
                for c in reply.tool_calls[i:]:
                    _record(messages, events, c, ToolResult("error: interrupted by the user",
                                                            True))
                raise
            _record(messages, events, call, res)
    r.status = "max_steps"
    r.error = (f"stopped after {max_steps} steps without a final answer; "
               "raise --max-steps or split the task")
    return r


def _record(messages: list[Message], events: Events, call: ToolCall, res: ToolResult) -> None:
    msg = Message("tool", res.content, tool_call_id=call.id, is_error=res.is_error)
    messages.append(msg)
    events.tool_result(call, msg)
    events.message(msg)
