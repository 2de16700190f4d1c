"""How a transcript reads in a terminal and in JSON: `agentd sessions ID` and the recap that
`agentd chat --resume` prints.

Everything shown is redacted again with the home's redactor (a key configured after the
transcript was written, a row written by hand) and, on a terminal, has its control
characters made visible (agentd/termsafe.py): a transcript holds model and tool output,
which may carry escape sequences. The words are the chat's own: `you>` for the person, the
reply as text, a tool call as its `▸ name what` line, a result as a trimmed preview.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.redact import Redactor, default, from_settings
from agentd.render import call_parts, preview
from agentd.termsafe import terminal_safe
from agentd.transcripts import SessionInfo, when

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from agentd.llm.types import Message

RECAP_EXCHANGES = 3  # what `chat --resume` shows: the last few exchanges
RECAP_LINES = 4  # of each message in the recap


def redactor_for(home: Path) -> Redactor:
    """The home's redactor (its providers' key variables too); the default one when its
    agentd.toml cannot be read, which is no reason to show a key."""
    from agentd.config import load_settings
    from agentd.errors import AgentdError

    try:
        return from_settings(load_settings(home))
    except (AgentdError, OSError, ValueError):
        return default()


def message_json(m: Message, redactor: Redactor) -> dict[str, Any]:
    """One message for `--json`: role, text, tool calls (name, arguments), is_error,
    model; redacted."""
    out: dict[str, Any] = {"role": m.role, "text": m.text}
    if m.tool_calls:
        out["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]
    if m.role == "tool":
        out["is_error"] = m.is_error
    if m.model:
        out["model"] = m.model
    return redactor.redact_data(out)


def print_messages(console: Console, messages: list[Message], redactor: Redactor,
                   lines: int | None = None) -> None:
    """The messages as the chat showed them; `lines` cuts each text to that many lines."""
    def text(t: str) -> str:
        t = terminal_safe(redactor.redact(t)).strip()
        return preview(t, lines) if lines else t

    for m in messages:
        if m.role == "user":
            console.print(f"you> {text(m.text)}", style="bold", markup=False)
        elif m.role == "assistant":
            if m.text.strip():
                console.print(text(m.text), markup=False)
            for call in m.tool_calls:
                name, what = call_parts(replace(call, name=redactor.redact(call.name),
                                                arguments=redactor.redact_data(call.arguments)))
                console.print(f"▸ {name} {what}", style="cyan", markup=False)
        elif m.role == "tool":
            console.print(preview(text(m.text), lines or 6),
                          style="red" if m.is_error else "dim", markup=False)


def recap(messages: list[Message], exchanges: int = RECAP_EXCHANGES) -> list[Message]:
    """The last `exchanges` exchanges: from the `exchanges`-th last user message on."""
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    return messages[starts[-exchanges]:] if len(starts) >= exchanges else messages


def sessions_table(infos: list[SessionInfo]) -> Table:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("when", "session", "trigger", "model", "turns", "cost"):
        table.add_column(col, justify="right" if col in ("turns", "cost") else "left")
    for s in infos:
        usd = "?" if s.cost is None else f"${s.cost:.4f}"
        table.add_row(when(s.updated), terminal_safe(s.id), terminal_safe(s.trigger),
                      terminal_safe(", ".join(s.models) or "?"), str(s.turns), usd)
    return table
