"""One renderer for a turn, wherever it is shown.

`agentd run`, `agentd cron run` and `agentd chat` draw a turn on the owner's terminal with
rich (`LiveRenderer`); the daemon's LogEvents writes the same turn as log lines
(`call_line`). The words are the same either way: a tool call is one line, `▸ name what`;
a result is a trimmed preview; a turn ends with its `summary` line.

Piped (stdout not a terminal), nothing is hard-wrapped: rich would wrap every line at 80
columns there, so `make_console()` gives it a width no line reaches and lets text run on; a
script, `grep` or `less -S` gets one line per line. rich is imported only when something is
drawn, so the daemon, which only logs lines, never loads it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TextIO

from agentd.loop import Events
from agentd.oneline import one_line
from agentd.termsafe import terminal_safe

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from agentd.history import Entry
    from agentd.llm.types import Message, ToolCall
    from agentd.skills import Skill
    from agentd.turn import TurnReport

PREVIEW_LINES = 6
CALL_CHARS = 200  # what a tool-call line shows of the command or path
PIPE_WIDTH = 10_000  # rich's width when not a terminal: wider than any line agentd prints


def make_console(file: TextIO | None = None) -> Console:
    """The rich console everything of a turn is drawn on (stdout unless `file`). Not a
    terminal: no colour, no wrapping at 80 columns (rich's default there)."""
    from rich.console import Console

    out = Console(file=file, highlight=False)
    if out.is_terminal:
        return out
    return Console(file=file, highlight=False, width=PIPE_WIDTH, soft_wrap=True)


def describe_call(call: ToolCall) -> str:
    """The one thing worth showing about a call: the command or the path (redacted
    already: the turn hands out tool calls with secrets replaced)."""
    a = call.arguments
    if call.name == "bash":
        return str(a.get("command", ""))
    return str(a.get("path", "")) or json.dumps(a)[:CALL_CHARS]


def call_parts(call: ToolCall, limit: int = CALL_CHARS) -> tuple[str, str]:
    """(name, what) of a tool call, each safe on one line: whitespace runs as one space,
    controls escaped, `what` cut to `limit` characters."""
    return one_line(call.name, 80), one_line(describe_call(call), limit)


def call_line(call: ToolCall, limit: int = CALL_CHARS) -> str:
    """`▸ name what`: a tool call as one plain line (the daemon's log); the terminal shows
    the same parts styled."""
    name, what = call_parts(call, limit)
    return f"▸ {name} {what}"


def preview(text: str, lines: int = PREVIEW_LINES) -> str:
    rows = text.splitlines() or [""]
    shown = [r if len(r) <= 160 else r[:160] + "…" for r in rows[:lines]]
    if len(rows) > lines:
        shown.append(f"… ({len(rows) - lines} more lines)")
    return "\n".join(shown)


def summary(report: TurnReport) -> str:
    """The footer line. Counts a server did not report (estimated as characters / 4) and
    the cost derived from them read "~": an estimate must not pass for a measurement."""
    u, r = report.result.usage, report.result
    est = "~" if u.estimated else ""
    usd = "cost unknown" if report.cost is None else f"{est}${report.cost:.4f}"
    models = " → ".join(report.models) if report.escalations else (
        ", ".join(report.models) or report.model)
    return (f"{models} · {r.steps} step{'s' * (r.steps != 1)} · tokens {est}{u.input:,} in "
            f"/ {est}{u.output:,} out / {u.cache_read:,} cache read / {u.cache_write:,} cache "
            f"write · {usd} · {report.seconds:.1f} s")


class LiveRenderer(Events):
    """A turn on the terminal as it happens: text as it streams, a line per tool call, a
    preview of each result; `done` ends it with the summary line."""

    def __init__(self, out: Console | None = None):
        self.console = out if out is not None else make_console()
        self._mid_line = False

    def text(self, delta: str) -> None:
        # soft_wrap: a reply arrives in pieces, and rich would wrap each piece on its own
        self.console.print(terminal_safe(delta), end="", markup=False, highlight=False,
                           soft_wrap=True)
        self._mid_line = not delta.endswith("\n")

    def _newline(self) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False

    def tool_call(self, call: ToolCall) -> None:
        from rich.text import Text

        self._newline()
        name, what = call_parts(call)
        line = Text("▸ ", style="cyan")
        line.append(name, style="bold cyan")
        line.append(" " + what)
        self.console.print(line, overflow="ellipsis", no_wrap=True)

    def tool_result(self, call: ToolCall, result: Message) -> None:
        from rich.text import Text

        style = "red" if result.is_error else "dim"
        self.console.print(Text(terminal_safe(preview(result.text)), style=style),
                           highlight=False)

    def finish(self) -> None:
        self._newline()

    def done(self, report: TurnReport) -> None:
        """The turn is over: end a half-written line, then the summary."""
        self.finish()
        self.console.print(summary(report), style="dim", highlight=False, markup=False)


def as_json(report: TurnReport, exit_code: int) -> dict[str, Any]:
    r = report.result
    return {"status": r.status, "exit_code": exit_code, "text": r.text, "error": r.error,
            "model": report.model, "models": report.models, "steps": r.steps,
            "escalated": report.escalations, "tool_calls": report.tool_calls,
            "usage": {"input": r.usage.input, "output": r.usage.output,
                      "cache_read": r.usage.cache_read, "cache_write": r.usage.cache_write,
                      "estimated": r.usage.estimated},
            "cost": report.cost, "seconds": report.seconds, "run_id": report.run_id,
            "session": str(report.session) if report.session else None}


def history_table(entries: list[Entry]) -> Table:
    """`agentd history`: one row per commit, newest first."""
    from rich.table import Table
    from rich.text import Text

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
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("name", "source", "status", "description"):
        table.add_column(col, overflow="fold")
    for s in skills:
        status = "available" if s.available else f"unavailable: {s.missing}"
        table.add_row(*(Text(terminal_safe(c)) for c in (s.name, s.source, status,
                                                          s.description)),
                      style=None if s.available else "dim")
    return table
