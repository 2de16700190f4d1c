"""Terminal rendering of a turn with rich: text as it streams, one line per tool call, a
trimmed view of each result, and a summary line. Imported only by `agentd run`."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentd.history import Entry
from agentd.llm.types import Message, ToolCall
from agentd.loop import Events
from agentd.skills import Skill
from agentd.termsafe import terminal_safe
from agentd.turn import TurnReport

PREVIEW_LINES = 6


def describe_call(call: ToolCall) -> str:
    """The one thing worth showing about a call: the command or the path (redacted
    already: the turn hands out tool calls with secrets replaced)."""
    a = call.arguments
    if call.name == "bash":
        return str(a.get("command", ""))
    return str(a.get("path", "")) or json.dumps(a)[:200]


def preview(text: str, lines: int = PREVIEW_LINES) -> str:
    rows = text.splitlines() or [""]
    shown = [r if len(r) <= 160 else r[:160] + "…" for r in rows[:lines]]
    if len(rows) > lines:
        shown.append(f"… ({len(rows) - lines} more lines)")
    return "\n".join(shown)


class LiveRenderer(Events):
    def __init__(self, console: Console):
        self.console = console
        self._mid_line = False

    def text(self, delta: str) -> None:
        self.console.print(terminal_safe(delta), end="", markup=False, highlight=False)
        self._mid_line = not delta.endswith("\n")

    def _newline(self) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False

    def tool_call(self, call: ToolCall) -> None:
        self._newline()
        line = Text("▸ ", style="cyan")
        line.append(call.name, style="bold cyan")
        line.append(" " + terminal_safe(describe_call(call)))
        self.console.print(line, overflow="ellipsis", no_wrap=True)

    def tool_result(self, call: ToolCall, result: Message) -> None:
        style = "red" if result.is_error else "dim"
        self.console.print(Text(terminal_safe(preview(result.text)), style=style),
                           highlight=False)

    def finish(self) -> None:
        self._newline()


def summary(report: TurnReport) -> str:
    u, r = report.result.usage, report.result
    usd = "cost unknown" if report.cost is None else f"${report.cost:.4f}"
    models = ", ".join(report.models) or report.model
    return (f"{models} · {r.steps} step{'s' * (r.steps != 1)} · tokens {u.input:,} in / "
            f"{u.output:,} out / {u.cache_read:,} cache read / {u.cache_write:,} cache write "
            f"· {usd} · {report.seconds:.1f} s")


def as_json(report: TurnReport, exit_code: int) -> dict[str, Any]:
    r = report.result
    return {"status": r.status, "exit_code": exit_code, "text": r.text, "error": r.error,
            "model": report.model, "models": report.models, "steps": r.steps,
            "tool_calls": report.tool_calls,
            "usage": {"input": r.usage.input, "output": r.usage.output,
                      "cache_read": r.usage.cache_read, "cache_write": r.usage.cache_write},
            "cost": report.cost, "seconds": report.seconds, "run_id": report.run_id,
            "session": str(report.session) if report.session else None}


def history_table(entries: list[Entry]) -> Table:
    """`agentd history`: one row per commit, newest first."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("when", "run"):
        table.add_column(col, no_wrap=True)
    table.add_column("trigger", overflow="fold")
    table.add_column("model", overflow="fold", ratio=1)
    table.add_column("summary", overflow="fold", ratio=2, min_width=20)
    table.add_column("files", overflow="fold", ratio=2)
    for e in entries:
        t = e.trailers
        files = ", ".join(e.files[:3]) + (f" +{len(e.files) - 3}" if len(e.files) > 3 else "")
        cells = (t.get("Agentd-Run", e.sha[:8]), t.get("Agentd-Trigger", "-"),
                 t.get("Agentd-Model", "-"), e.subject, files)
        table.add_row(f"{e.when:%Y-%m-%d %H:%M}", *(Text(terminal_safe(c)) for c in cells))
    return table


def skills_table(skills: list[Skill]) -> Table:
    """`agentd skills`: name, source, status, description."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("name", "source", "status", "description"):
        table.add_column(col, overflow="fold")
    for s in skills:
        status = "available" if s.available else f"unavailable: {s.missing}"
        table.add_row(*(Text(terminal_safe(c)) for c in (s.name, s.source, status,
                                                          s.description)),
                      style=None if s.available else "dim")
    return table
