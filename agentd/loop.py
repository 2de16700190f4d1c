"""One turn of the agent: model → tool calls → results → … until the model stops calling
tools or the step limit is reached. Provider-neutral; failures end the turn as data.

A reply cut off at the output cap (stop reason `length` / `max_tokens`) is never taken as
a finished answer. The model is told so (a note in the conversation, kept in the
transcript) and gets one more call to finish, more briefly; the tool calls of a cut reply
are not run (the last one is likely incomplete) but answered with an error saying why.
A reply cut again right after such a note ends the turn `truncated` (exit 1), with the
text it got so far. `steps` counts the model's replies: a call that failed is no step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agentd.llm.types import (
    TRUNCATED_STOPS,
    Message,
    Provider,
    ProviderError,
    Sampling,
    ToolCall,
    Usage,
)
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
    status: str  # "ok" | "max_steps" | "empty" | "truncated" | "malformed" | "error" |
    # "budget" | "interrupted"
    text: str = ""
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    error: str | None = None


CUT_NOTE = ("[agentd] Your last reply was cut off at the output limit before it was "
            "complete. Finish it now, shorter: give the rest of the answer, or send again "
            "the tool calls that were cut, smaller (write a big file in parts).")
MALFORMED_LIMIT = 3  # replies in a row with only unreadable tool calls end the turn
CUT_CALL = ("error: not run: your reply was cut off at the output limit before it was "
            "complete, so this call may be incomplete; send it again if you still need it")


async def run_loop(provider: Provider, system: str, messages: list[Message], ctx: ToolContext,
                   max_steps: int, events: Events,
                   sampling: Sampling | None = None) -> LoopResult:
    """Run the loop on `messages` (appended to in place) and say how it ended. `sampling`
    goes with every model call (a client's temperature, stop, lower max_tokens)."""
    r = LoopResult("ok")
    noted = False  # the last message is our note about a cut reply
    unread = 0  # replies in a row whose every tool call was unreadable
    for step in range(1, max_steps + 1):
        try:
            reply = await provider.complete(system, messages, SPECS, events.text, sampling)
        except ProviderError as e:
            r.status, r.error = e.kind, str(e)
            return r
        r.steps = step
        messages.append(reply)
        events.message(reply)
        r.usage += reply.usage or Usage()
        r.text = reply.text
        if reply.stop_reason in TRUNCATED_STOPS:
            for call in reply.tool_calls:  # every call gets a result, run or not
                _record(messages, events, call, ToolResult(CUT_CALL, True))
            if noted:
                r.status = "truncated"
                r.error = (f"{provider.name} was cut off at its output limit twice in a row; "
                           "raise [calls] max_tokens for it, or ask for less at once")
                return r
            noted = True
            note = Message("user", CUT_NOTE)
            messages.append(note)
            events.message(note)
            continue
        noted = False
        if not reply.tool_calls:
            if not reply.text.strip():
                r.status, r.error = "empty", f"{provider.name} returned an empty reply"
            return r
        for i, call in enumerate(reply.tool_calls):
            events.tool_call(call)
            try:
                res = await (ctx.runner or run_tool)(ctx, call)
            except asyncio.CancelledError:  # Ctrl-C: every call still gets a result
                for c in reply.tool_calls[i:]:
                    _record(messages, events, c, ToolResult("error: interrupted by the user",
                                                            True))
                raise
            _record(messages, events, call, res)
        unread = unread + 1 if all(c.error for c in reply.tool_calls) else 0
        if unread == MALFORMED_LIMIT:  # it is not getting better: say so (escalate.py)
            r.status = "malformed"
            r.error = (f"{provider.name} sent {unread} replies in a row whose tool calls "
                       "could not be read")
            return r
    r.status = "truncated" if noted else "max_steps"
    r.error = (f"{provider.name} was cut off at its output limit in the last step"
               if noted else f"stopped after {max_steps} steps without a final answer; "
               "raise --max-steps or split the task")
    return r


def _record(messages: list[Message], events: Events, call: ToolCall, res: ToolResult) -> None:
    msg = Message("tool", res.content, tool_call_id=call.id, is_error=res.is_error)
    messages.append(msg)
    events.tool_result(call, msg)
    events.message(msg)
