"""Compaction: when a conversation nears the model's context window, what is *sent* shrinks
and what is *stored* does not.

Before a call, if the request (estimated at characters / 4) passes `[compaction]
threshold` of the window of the model about to answer, the older messages are summarised
by that model into a structured summary (goal, constraints, progress, decisions, next
steps, files read and changed). From then on the model is sent that summary, then the
recent messages verbatim (about `keep` of the window), with the tool outputs older than
the last step cut to `tool_output` characters. The session transcript keeps every message;
a `{"type": "compaction", "summary", "first_kept", "trim_until"}` row records where the
summary starts to stand in for them, and `session.load_messages` resumes from it.

The cut never falls between a tool call and its result: the first kept message is never
a tool result. The summary call is booked like any other model call, and both it and the
compaction row go through the turn's own writers (its usage.Ledger and its
session.SessionLog, handed over by chain.build_provider), so the turn's reported cost
includes the summary and the transcript has one writer.

The day log needs nothing here: turn.py writes it after every turn, so every earlier turn
a summary stands in for is already in memory/daily/, and the current one will be.
"""

from __future__ import annotations

import json

from agentd.config import Settings
from agentd.llm.estimate import estimate_tokens
from agentd.llm.types import Message, Provider, ToolSpec
from agentd.session import SUMMARY_HEAD, SessionLog, is_summary, summary_message, trim_output
from agentd.usage import Ledger

DEFAULT_WINDOW = 32_768
# Context windows in tokens by `provider:model` prefix, first match wins; a provider's
# `context_window` in agentd.toml overrides them (for local servers: what they run with).
WINDOWS: tuple[tuple[str, int], ...] = (
    ("anthropic:claude-", 200_000),
    ("openai:gpt-5", 400_000),
    ("openai:gpt-4.1", 1_000_000),
    ("openai:", 128_000),
    ("ollama:", DEFAULT_WINDOW),
)
SUMMARISER = """\
You compact the conversation of an autonomous agent (with its user and its tools) so the \
agent can continue it from your summary alone. Write the summary under these headings, in \
this order, as short bullet points:
## Goal
## Constraints
## Progress
## Decisions
## Next steps
## Files read
## Files changed
Keep exact paths, commands, names, numbers and error messages. Quote the user's latest \
request verbatim under Goal. If an earlier summary is included, fold it in. Write only \
the summary."""


def context_window(spec: str, settings: Settings) -> int:
    ep = settings.endpoint(spec.partition(":")[0])
    if ep is not None and ep.context_window:
        return ep.context_window
    return next((n for prefix, n in WINDOWS if spec.startswith(prefix)), DEFAULT_WINDOW)


def render(messages: list[Message], clip: int = 1500) -> str:
    """A conversation as plain text for the summariser: no tool-call pairing to get wrong,
    and long tool outputs clipped so the summary request stays within the window."""
    out = []
    for m in messages:
        if m.role == "tool":
            out.append(f"### tool result{' (error)' if m.is_error else ''}\n"
                       f"{trim_output(m, clip).text}")
            continue
        calls = "".join(f"\n→ {c.name} {json.dumps(c.arguments, ensure_ascii=False)[:600]}"
                        for c in m.tool_calls)
        out.append(f"### {m.role}\n{m.text}{calls}")
    return "\n\n".join(out)


class Compactor:
    """The compaction state of one turn: the summary in force and where the verbatim part
    starts, as positions in the loop's message list (which only ever grows)."""

    def __init__(self, settings: Settings, log: SessionLog | None, ledger: Ledger | None):
        self.settings, self.conf = settings, settings.compaction
        self.log, self.ledger = log, ledger
        self.summary: Message | None = None
        self.cut = 0  # messages[cut:] are sent after the summary
        self.trim_until = 0  # tool outputs before this position are trimmed when sent

    def view(self, messages: list[Message]) -> list[Message]:
        """What is sent: the summary, then the kept messages, old tool outputs trimmed."""
        if self.summary is None:
            return messages
        kept = [trim_output(m, self.conf.tool_output) if self.cut + i < self.trim_until else m
                for i, m in enumerate(messages[self.cut:])]
        return [self.summary, *kept]

    async def prepare(self, provider: Provider, spec: str, system: str,
                      messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
        """The messages to send to `spec`, compacted first if they would not fit."""
        sent = self.view(messages)
        if not self.conf.enabled or spec.startswith("replay:"):
            return sent
        window = context_window(spec, self.settings)
        if estimate_tokens(system, sent, tools) <= self.conf.threshold * window:
            return sent
        k = self._cut(sent, window)
        if k is None:
            return sent
        reply = await provider.complete(SUMMARISER, [Message("user", render(sent[:k]))], [])
        if self.ledger and reply.usage:
            self.ledger.record(reply.model or spec, reply.usage)
        if not reply.text.strip():
            return sent
        offset = len(messages) - len(sent)  # list position = view index + offset
        cut = k + offset
        last_step = max(i for i, m in enumerate(messages) if m.role == "assistant" or i == cut)
        self.summary, self.cut = summary_message(reply.text), cut
        self.trim_until = max(cut, last_step)
        self._record(messages, reply)
        return self.view(messages)

    def _cut(self, sent: list[Message], window: int) -> int | None:
        """Where the verbatim part should start (an index into `sent`): the earliest
        message, never a tool result, from which on the rest fits in `keep` of the window;
        None when there is nothing worth summarising."""
        budget = self.conf.keep * window
        first = 2 if is_summary(sent[0]) else 1  # a lone old summary is not worth redoing
        valid = [k for k in range(first, len(sent)) if sent[k].role != "tool"]
        if not valid:
            return None
        for k in valid:
            if estimate_tokens("", sent[k:], []) <= budget:
                return k
        return valid[-1]

    def _record(self, messages: list[Message], reply: Message) -> None:
        """Append the compaction row to the transcript, in the transcript's own numbering
        of messages: its tail is the tail of the loop's list, message for message."""
        if self.log is None or not self.log.path.exists():
            return
        rows = 0
        with self.log.path.open(encoding="utf-8", newline="\n") as f:
            for line in f:
                try:
                    rows += json.loads(line).get("type") == "message"
                except (ValueError, AttributeError):
                    continue  # counted the way load_messages reads them
        shift = rows - len(messages)
        if shift + self.cut < 0:
            return  # the transcript does not match the conversation: record nothing
        usage = vars(reply.usage) if reply.usage else None
        self.log.compaction(
            self.summary.text.removeprefix(SUMMARY_HEAD) if self.summary else "",
            shift + self.cut, trim_until=shift + self.trim_until,
            tool_output=self.conf.tool_output, model=reply.model, usage=usage)
