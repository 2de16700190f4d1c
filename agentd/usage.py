"""Token and cost accounting: a dated price table and the append-only usage ledger.

An unknown model costs `None`, never a guess: a wrong number is worse than no number.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    """One line per model call in `.agentd/usage.jsonl`; appends are atomic at this size."""
    row = {"ts": round(time.time(), 3), "run": run_id, "model": model, "trigger": trigger,
           "input": usage.input, "output": usage.output, "cache_read": usage.cache_read,
           "cache_write": usage.cache_write, "cost": usd}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
