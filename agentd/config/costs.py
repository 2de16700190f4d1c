"""The settings that keep a home working and its spending bounded: `fallbacks`,
`budget_fallback`, `[budget]`, `[throttling]` and `[compaction]` of agentd.toml.

Apart from settings.py only to keep each module short: settings.py imports this module and
fills its own fields with these parsers; this module imports only the table and value
parsers beneath both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentd.config.tables import fill, typed
from agentd.config.values import Duration
from agentd.errors import AgentdError


@dataclass
class BudgetSettings:
    """`[budget]`: spending caps, checked before every model call (agentd/budget.py).
    None means no cap. `triggers` holds daily USD caps per trigger kind (heartbeat, cron,
    webhook, inbox, cli, chat)."""

    daily_usd: float | None = None
    monthly_usd: float | None = None
    max_tokens_per_turn: int | None = None
    triggers: dict[str, float] = field(default_factory=dict)


@dataclass
class ThrottleSettings:
    """`[throttling]`: a throttled model is retried, then skipped for `cooldown` by every
    turn of this home (agentd/llm/fallback.py). Durations as "30s", "5m"."""

    cooldown: Duration = Duration("5m")
    max_retry_wait: Duration = Duration("30s")


@dataclass
class CompactionSettings:
    """`[compaction]`: when a conversation passes `threshold` of the model's context window,
    older messages are summarised so about `keep` of the window stays verbatim; old tool
    outputs are cut to `tool_output` characters in what is sent (agentd/compact.py)."""

    enabled: bool = True
    threshold: float = 0.8
    keep: float = 0.3
    tool_output: int = 2000


def model_spec(where: str, value: Any) -> str:
    """A `PROVIDER:MODEL` setting (fallbacks, budget_fallback), checked for its shape."""
    spec = typed(where, value, str)
    label, _, model = spec.partition(":")
    if not label or not model:
        raise AgentdError(f"{where} = {spec!r} is not PROVIDER:MODEL (e.g. ollama:qwen3:8b)")
    return spec


def parse_budget(b: BudgetSettings, value: Any) -> None:
    """Fill `b` from `[budget]` and its `[budget.triggers]` table of per-kind daily caps."""
    table = dict(typed("budget", value, dict))
    for kind, cap in typed("budget.triggers", table.pop("triggers", {}), dict).items():
        b.triggers[kind] = typed(f"budget.triggers.{kind}", cap, float)
    fill(b, table, "budget")


def check_costs(b: BudgetSettings, c: CompactionSettings) -> None:
    """The ranges of [budget] and [compaction], once the whole file is read."""
    caps = {"budget.daily_usd": b.daily_usd, "budget.monthly_usd": b.monthly_usd,
            **{f"budget.triggers.{k}": v for k, v in b.triggers.items()}}
    for where, cap in caps.items():
        if cap is not None and cap < 0:
            raise AgentdError(f"{where} must not be negative")
    if b.max_tokens_per_turn is not None and b.max_tokens_per_turn < 1:
        raise AgentdError("budget.max_tokens_per_turn must be at least 1")
    if not 0 < c.threshold <= 1 or not 0 < c.keep < c.threshold:
        raise AgentdError("compaction needs 0 < keep < threshold <= 1 (fractions of the "
                          "context window)")
    if c.tool_output < 100:
        raise AgentdError("compaction.tool_output must be at least 100 characters")
