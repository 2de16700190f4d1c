"""Replay a recorded run's model replies, and record a live run's replies.

A recording is JSONL with one assistant message per line (the neutral format of
types.Message); a session transcript from `.agentd/sessions/` works too, since lines that
are not assistant messages are skipped. Replays cost nothing and need no network, which
makes them the demo and a test fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

from agentd.errors import AgentdError
from agentd.llm.types import Message, Provider, ProviderError, Sampling, TextSink, ToolSpec


class ReplayProvider:
    """A recording's replies in order. Running out is not transient: replaying again would
    run out again."""

    def __init__(self, path: Path):
        self.name = f"replay:{path.name}"
        self._replies = self._load(path)
        self._next = 0

    @staticmethod
    def _load(path: Path) -> list[Message]:
        try:
            # "\n" only: splitlines() would also cut at a U+2028 inside a transcript's text
            lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise AgentdError(f"cannot read recording {path}: {e}") from None
        replies = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if isinstance(d, dict) and d.get("role") == "assistant":
                    replies.append(Message.from_dict(d))
            except (ValueError, TypeError) as e:
                raise AgentdError(f"{path}:{n}: not a recorded message ({e})") from None
        if not replies:
            raise AgentdError(f"{path} holds no assistant messages to replay")
        return replies

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        if self._next >= len(self._replies):
            raise ProviderError(self.name, f"the recording has no reply left (all "
                                f"{len(self._replies)} used)", hint="record a longer run")
        reply = self._replies[self._next]
        self._next += 1
        if on_text and reply.text:
            on_text(reply.text)
        return Message("assistant", reply.text, list(reply.tool_calls), model=self.name,
                       usage=reply.usage, stop_reason=reply.stop_reason)

    async def aclose(self) -> None:
        """Nothing to release: the recording was read whole when the provider was made."""


class RecordingProvider:
    """Wraps a provider and appends each reply to a JSONL file as it arrives."""

    def __init__(self, inner: Provider, path: Path):
        self.inner, self.path, self.name = inner, path, inner.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        reply = await self.inner.complete(system, messages, tools, on_text, sampling)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(reply.to_dict()) + "\n")
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()
