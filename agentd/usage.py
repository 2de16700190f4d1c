"""Token and cost accounting: a dated price table and the append-only usage ledger.

An unknown model costs `None`, never a guess: a wrong number is worse than no number.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentd import jsonl
from agentd.config import Price
from agentd.llm.types import Usage

PRICES_AS_OF = "2026-11"

# USD per million tokens: input, output, cache read, cache write (5-minute).
# Sources: the providers' pricing pages as of PRICES_AS_OF. Override in agentd.toml [prices].
PRICES: dict[str, Price] = {
    "anthropic:claude-opus-5-5": Price(4.0, 20.0, 0.40, 5.0),
    "anthropic:claude-sonnet-5-5": Price(2.0, 10.0, 0.10, 2.5),
    "anthropic:claude-haiku-5-5": Price(0.10, 0.50, 0.01, 0.125),  # prompts <= 100k tokens
    "anthropic:claude-opus-4-8": Price(5.0, 25.0, 0.50, 6.25),
    "anthropic:claude-opus-4-5": Price(5.0, 25.0, 0.50, 6.25),
    "anthropic:claude-sonnet-4-5": Price(3.0, 15.0, 0.30, 3.75),
    "anthropic:claude-sonnet-4-6": Price(3.0, 15.0, 0.30, 3.75),
    "anthropic:claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    "openai:gpt-5.5": Price(5.0, 30.0, 0.50),
    "openai:gpt-5.4": Price(2.5, 15.0, 0.25),
    "openai:gpt-5.4-mini": Price(0.75, 4.5, 0.075),
    "openai:gpt-5.4-nano": Price(0.20, 1.25, 0.02),
    # earlier OpenAI models still served (list prices, unchanged since launch; 2026-11)
    "openai:gpt-5": Price(1.25, 10.0, 0.125),
    "openai:gpt-5-mini": Price(0.25, 2.0, 0.025),
    "openai:gpt-5-nano": Price(0.05, 0.40, 0.005),
    "openai:gpt-4.1": Price(2.0, 8.0, 0.50),
    "openai:gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "openai:gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "openai:gpt-4o": Price(2.50, 10.0, 1.25),
    "openai:gpt-4o-mini": Price(0.15, 0.60, 0.075),
}


def price_for(model: str, overrides: dict[str, Price]) -> Price | None:
    """The price of `provider:model`. Local servers (ollama) are free; unknown → None."""
    if model in overrides:
        return overrides[model]
    if model.startswith(("ollama:", "replay:")):
        return Price(0.0, 0.0)
    return PRICES.get(model)


def cost(usage: Usage, price: Price | None) -> float | None:
    if price is None:
        return None
    total = (usage.input * price.input + usage.output * price.output
             + usage.cache_read * price.cache_read + usage.cache_write * price.cache_write)
    return round(total / 1e6, 9)


def append_ledger(path: Path, run_id: str, model: str, trigger: str, usage: Usage,
                  usd: float | None) -> None:
    """One line per model call in `.agentd/usage.jsonl` (an agentd.jsonl line: a trigger
    holds a hook's or a session's name); appends are atomic at this size. A call whose
    server reported no usage gets `"estimated": true` (its counts are characters / 4)."""
    jsonl.append(path, ledger_line(Row(
        time.time(), run_id, model, trigger, usage.input, usage.output, usage.cache_read,
        usage.cache_write, usd, usage.estimated)))


def ledger_line(row: Row) -> dict[str, Any]:
    """A row as its ledger line (what `parse_row` reads back): the one place the line's
    fields are spelled, for the ledger and for the fleet's copy of it (fleet/carry.py)."""
    return {"ts": round(row.ts, 3), "run": row.run, "model": row.model,
            "trigger": row.trigger, "input": row.input, "output": row.output,
            "cache_read": row.cache_read, "cache_write": row.cache_write,
            "cost": row.cost} | ({"estimated": True} if row.estimated else {})


@dataclass(frozen=True)
class Row:
    """One ledger line, validated: what budgets and `agentd usage` add up."""

    ts: float
    run: str
    model: str
    trigger: str
    input: int
    output: int
    cache_read: int
    cache_write: int
    cost: float | None
    estimated: bool = False  # counts estimated: the server reported no usage

    @property
    def kind(self) -> str:
        """The trigger kind: `chat:<session>` → chat, `cron:<job>` → cron."""
        return self.trigger.split(":", 1)[0]


_COUNTS = ("input", "output", "cache_read", "cache_write")


def parse_row(line: str | bytes) -> Row | None:
    """A ledger line as a Row, or None when it is not one (torn, hand-edited, hostile).

    The ledger is append-only and anyone can write to it, so nothing that reads it may
    crash on it: wrong types, negative or non-finite numbers and missing fields all mean
    "skip this line"."""
    try:
        d = jsonl.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(d, dict):
        return None
    ts, usd = d.get("ts"), d.get("cost")
    counts = [d.get(k, 0) for k in _COUNTS]
    if not _number(ts) or not isinstance(d.get("model"), str):
        return None
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts):
        return None
    if usd is not None and (not _number(usd) or usd < 0):
        return None
    run, trigger = d.get("run", ""), d.get("trigger", "")
    if not isinstance(run, str) or not isinstance(trigger, str):
        return None
    return Row(float(ts), run, d["model"], trigger or "?", *counts,
               None if usd is None else float(usd), d.get("estimated") is True)


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def read_ledger(path: Path, offset: int = 0) -> tuple[list[Row], int, int]:
    """(rows, lines skipped, new offset) of the ledger from byte `offset` on.

    Reading stops after the last complete line, so a row being appended by another
    process right now is read next time instead of being counted as malformed."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], 0, offset
    end = data.rfind(b"\n") + 1
    rows, skipped = [], 0
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        row = parse_row(line)
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    return rows, skipped, offset + end


def offset_since(path: Path, since: float) -> int:
    """A byte offset in the ledger from which on every row is at or after `since`, found
    by bisection, so a budget check or a report reads this month, not every month.

    The ledger is appended in time order (to within the moments two processes race), so
    starting a day early loses nothing; the rows before `since` it still reads are
    filtered by their timestamps anyway. Unreadable lines are stepped over."""
    since -= 86400
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return 0
    with f:
        lo, hi = 0, f.seek(0, 2)
        while hi - lo > 65536:
            mid = (lo + hi) // 2
            f.seek(mid)
            f.readline()  # the rest of a line begun before mid
            row = None
            for _ in range(100):
                line = f.readline()
                if not line or (row := parse_row(line)) is not None:
                    break
            if row is None or row.ts >= since:
                hi = mid
            else:
                lo = mid
        if lo:
            f.seek(lo)
            f.readline()
            lo = f.tell()
    return lo


@dataclass
class Ledger:
    """The one writer of a run's rows in the usage ledger: every model call of a turn,
    the loop's replies and the runtime's own calls (a compaction's summary) alike, goes
    through `record`, so the turn's reported `cost` counts them all."""

    path: Path
    run_id: str
    trigger: str
    prices: dict[str, Price]
    costs: list[float | None] = field(default_factory=list)  # this run's calls, in order

    def record(self, model: str, usage: Usage) -> float | None:
        """Book one call: a ledger row, priced from the table (None: price unknown)."""
        usd = cost(usage, price_for(model, self.prices))
        append_ledger(self.path, self.run_id, model, self.trigger, usage, usd)
        self.costs.append(usd)
        return usd

    @property
    def cost(self) -> float | None:
        """What this run's calls have cost so far; None once any of them had no known
        price (a partial sum would read as the whole)."""
        if any(c is None for c in self.costs):
            return None
        return round(sum(c for c in self.costs if c is not None), 9)

    def total(self, model: str) -> float | None:
        """The run's cost for its report: `cost`, or, when no call was booked (the first
        one failed), $0 only if `model` has a known price: a failed turn of an unpriced
        model is "cost unknown", as a finished one would be."""
        if not self.costs and price_for(model, self.prices) is None:
            return None
        return self.cost
