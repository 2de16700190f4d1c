"""Local first, frontier when needed: a turn that ends badly on one model is continued, from
its transcript, by the next model of `escalate_to`.

A small local model does most background work well and some of it badly. Retrying the
whole turn on a frontier model would pay again for what the local model did right and run
its side effects twice; instead the next model gets the same conversation (every tool call
the first one made, and its results, are facts in the home already) plus one line saying
why it takes over. It gets its own step allowance; the money caps of the budget hold for
the turn as a whole, because every model books into the same ledger.

What counts as ending badly: the provider failed after its fallbacks (`error`), an empty
reply (`empty`), the step limit (`max_steps`), a reply cut at the output cap twice in a row
(`truncated`), three replies in a row whose tool calls could not be read (`malformed`).
Not the budget, and not an interrupt: those are the person's limits.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentd.llm.types import Message, Provider, Sampling, Usage
from agentd.loop import Events, LoopResult, run_loop
from agentd.tools import ToolContext

ESCALATE_ON = frozenset({"error", "empty", "max_steps", "truncated", "malformed"})


def chain_for(spec: str, escalate_to: Sequence[str]) -> list[str]:
    """The models a turn that starts on `spec` may go through, in order: `spec`, then the
    `escalate_to` models after it (a model that is already in the chain is not repeated;
    a turn that starts on one of them goes only to the ones after it)."""
    rest = list(escalate_to)
    if spec in rest:
        rest = rest[rest.index(spec) + 1:]
    return list(dict.fromkeys([spec, *rest]))


def handover(model: str, result: LoopResult) -> str:
    """The line the next model reads (and the transcript keeps) when it takes over."""
    why = result.error or result.status
    return (f"[agentd] The previous model ({model}) stopped without finishing this task "
            f"({result.status}: {why}). You are taking over: its tool calls above really "
            "ran. Continue the task from where it stopped and give the final answer.")


async def run_escalating(providers: Sequence[tuple[str, Provider]], system: str,
                         messages: list[Message], ctx: ToolContext, max_steps: int,
                         events: Events, escalations: list[str],
                         sampling: Sampling | None = None) -> LoopResult:
    """Run the loop on the first provider; while it ends badly and a next one is left,
    append the handover line and run the loop again on the next. Each handover is added
    to `escalations` ("local:m → anthropic:m (max_steps)"). Returns the last result, with
    the steps of every model counted."""
    steps, usage = 0, Usage()
    result = LoopResult("ok")
    for i, (spec, provider) in enumerate(providers):
        if i:
            note = Message("user", handover(providers[i - 1][0], result))
            messages.append(note)
            events.message(note)
        result = await run_loop(provider, system, messages, ctx, max_steps, events, sampling)
        steps, usage = steps + result.steps, usage + result.usage
        if result.status not in ESCALATE_ON or i + 1 == len(providers):
            break
        escalations.append(f"{spec} → {providers[i + 1][0]} ({result.status})")
    result.steps, result.usage = steps, usage
    return result
