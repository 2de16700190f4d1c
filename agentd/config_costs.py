"""The settings that keep a home working and its spending bounded: `fallbacks`,
`budget_fallback`, `[budget]`, `[throttling]` and `[compaction]` of agentd.toml.

Apart from config.py only to keep each module short; config.py holds the parsing helpers
(imported at call time, as config.py imports this module) and the Settings they fill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config import Settings


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

    cooldown: str = "5m"
    max_retry_wait: str = "30s"


@dataclass
class CompactionSettings:
    """`[compaction]`: when a conversation passes `threshold` of the model's context window,
    older messages are summarised so about `keep` of the window stays verbatim; old tool
    outputs are cut to `tool_output` characters in what is sent (agentd/compact.py)."""

    enabled: bool = True
    threshold: float = 0.8
    keep: float = 0.3
    tool_output: int = 2000


def parse_costs(s: Settings, key: str, value: Any) -> None:
    """The settings that keep a home working and its spending bounded (issue F): the
    fallback chain, the budget and its fallback model, throttling and compaction."""
    from agentd.config import _fill, _typed, parse_duration

    if key == "fallbacks":
        models = _typed("fallbacks", value, list)
        s.fallbacks = [_model_spec(f"fallbacks[{i}]", m) for i, m in enumerate(models)]
    elif key == "budget_fallback":
        s.budget_fallback = _model_spec("budget_fallback", value) if value else None
    elif key == "budget":
        table = dict(_typed("budget", value, dict))
        for kind, cap in _typed("budget.triggers", table.pop("triggers", {}), dict).items():
            s.budget.triggers[kind] = _typed(f"budget.triggers.{kind}", cap, float)
        _fill(s.budget, table, "budget")
    elif key == "throttling":
        _fill(s.throttling, _typed("throttling", value, dict), "throttling")
    else:
        _fill(s.compaction, _typed("compaction", value, dict), "compaction")
    b, c = s.budget, s.compaction
    caps = {"budget.daily_usd": b.daily_usd, "budget.monthly_usd": b.monthly_usd,
            **{f"budget.triggers.{k}": v for k, v in b.triggers.items()}}
    for where, cap in caps.items():
        if cap is not None and cap < 0:
            raise AgentdError(f"{where} must not be negative")
    if b.max_tokens_per_turn is not None and b.max_tokens_per_turn < 1:
        raise AgentdError("budget.max_tokens_per_turn must be at least 1")
    parse_duration(s.throttling.cooldown, "throttling.cooldown")
    parse_duration(s.throttling.max_retry_wait, "throttling.max_retry_wait")
    if not 0 < c.threshold <= 1 or not 0 < c.keep < c.threshold:
        raise AgentdError("compaction needs 0 < keep < threshold <= 1 (fractions of the "
                          "context window)")
    if c.tool_output < 100:
        raise AgentdError("compaction.tool_output must be at least 100 characters")


def _model_spec(where: str, value: Any) -> str:
    from agentd.config import _typed

    spec = _typed(where, value, str)
    label, _, model = spec.partition(":")
    if not label or not model:
        raise AgentdError(f"{where} = {spec!r} is not PROVIDER:MODEL (e.g. ollama:qwen3:8b)")
    return spec
