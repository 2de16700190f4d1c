"""Token counts estimated offline, as characters / 4.

Used where no tokenizer's count is at hand: a budget check before a call (reconciled with
the reported usage after it), the decision to compact a conversation (taken at 80 % of the
window), and a call whose server reported no usage (many local servers send none when
streaming), whose ledger row is then marked `estimated`. There is no offline Claude
tokenizer and local models each have their own; characters / 4 is the usual rule of thumb
for English text and code, and being a little off is fine for all three uses.
"""

from __future__ import annotations

import json

from agentd.llm.types import Message, ToolSpec, Usage


def estimate_tokens(system: str, messages: list[Message], tools: list[ToolSpec]) -> int:
    """Tokens in a request: the system prompt, the tool schemas and every message."""
    chars = len(system) + sum(len(t.description) + len(json.dumps(t.parameters)) + len(t.name)
                              for t in tools)
    for m in messages:
        chars += len(m.text) + 8
        chars += sum(len(c.name) + len(json.dumps(c.arguments)) + 16 for c in m.tool_calls)
    return chars // 4


def estimate_usage(system: str, messages: list[Message], tools: list[ToolSpec],
                   reply: Message) -> Usage:
    """The usage of a call whose server reported none: the request and the reply counted
    as characters / 4 (at least one token out when anything came back), marked estimated."""
    chars = len(reply.text) + sum(len(c.name) + len(json.dumps(c.arguments))
                                  for c in reply.tool_calls)
    return Usage(estimate_tokens(system, messages, tools), -(-chars // 4), estimated=True)
