"""Hard spending caps: checked before every model call, reconciled with the ledger after it.

Before a call, its cost is estimated (request characters / 4 at the model's input price,
plus a reserve of output tokens) and the call is refused if it would take any cap past its
limit. After the call, turn.py books the provider's reported usage in `.agentd/usage.jsonl`
(or, from a server that reported none, the adapter's estimate, which counts the same),
and the next check reads it from there, so the estimate only ever has to be right for one
call: spend never passes a cap by more than one call's misestimate.

What is counted where:
- money caps (daily, monthly, daily per trigger kind) count ledger rows with a known cost,
  from every process of the home (a daemon and a CLI turn share the caps);
- a model the price table knows to be free (ollama, replay, a `[prices]` entry of zeros)
  is never refused by a money cap: it cannot add to the spend;
- a model with no known price costs `null` in the ledger; it is held only to
  `max_tokens_per_turn`, the one cap that does not need a price. Declare its price under
  `[prices]` to put it under the money caps too.

When a cap refuses a call the turn ends with status "budget" (BudgetExceeded), except that
an interactive turn (`cli`, `chat:*`) moves to `budget_fallback` when one is configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from agentd.config import BudgetSettings, Price, Settings
from agentd.llm.estimate import estimate_tokens
from agentd.llm.types import (
    Message,
    Provider,
    ProviderError,
    Sampling,
    TextSink,
    ToolSpec,
    Usage,
)
from agentd.usage import offset_since, price_for, read_ledger

OUTPUT_RESERVE = 1_000  # output tokens assumed for a call before it happens
INTERACTIVE = ("cli", "chat")

now: Callable[[], float] = time.time  # tests move the clock


def is_interactive(trigger: str) -> bool:
    """A person is waiting for this turn (agentd run, agentd chat)."""
    return trigger.split(":", 1)[0] in INTERACTIVE


class BudgetExceeded(ProviderError):
    """A call refused by a cap. `switchable`: an interactive turn may go on with the
    budget fallback model (money caps), or must stop (the per-turn token cap, which
    guards against a runaway turn whatever it costs)."""

    kind = "budget"

    def __init__(self, model: str, message: str, hint: str, switchable: bool = True):
        super().__init__(model, message, hint=hint)
        self.switchable = switchable


def money(x: float) -> str:
    """Cents when they say it all ($5.00, $0.05), else four decimals ($0.0121): a $0.004
    cap must not read as $0.00."""
    return f"${x:,.2f}" if x >= 1 or round(x, 2) == round(x, 6) else f"${x:.4f}"


def unpriced_warning(settings: Settings, model: str) -> str | None:
    """What to say at start when a money cap is set but `model` (or a fallback) has no
    price: its calls cost `null` and no money cap can hold them, which a person who set a
    cap would otherwise find out from the bill."""
    b = settings.budget
    if b.daily_usd is None and b.monthly_usd is None and not b.triggers:
        return None
    models = dict.fromkeys([model, *settings.fallbacks])
    unpriced = [m for m in models if price_for(m, settings.prices) is None]
    if not unpriced:
        return None
    return (f"{', '.join(unpriced)} ha{'ve' if len(unpriced) > 1 else 's'} no price, so the "
            "money caps of [budget] do not apply to it: declare its price under [prices] in "
            "agentd.toml (USD per million tokens)")


def _until(when: datetime, start: datetime) -> str:
    mins = max(1, round((when - start).total_seconds() / 60))
    span = f"{mins} min" if mins < 60 else (f"{mins // 60} h {mins % 60} min" if mins < 1440
                                            else f"{mins // 1440} days")
    return f"{when:%Y-%m-%d %H:%M} (in {span})"


def periods(ts: float) -> tuple[datetime, datetime, datetime, datetime]:
    """Local start of the day and month of `ts`, and when each resets."""
    t = datetime.fromtimestamp(ts).astimezone()
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_day = (day + timedelta(days=1, hours=2)).replace(hour=0)  # safe across DST
    next_month = (month + timedelta(days=32)).replace(day=1)
    return day, next_day, month, next_month


class Budget:
    """The caps of one turn, and what has been spent against them so far."""

    def __init__(self, caps: BudgetSettings, ledger: Path, trigger: str,
                 prices: dict[str, Price], has_fallback: bool = False):
        self.caps, self.ledger, self.trigger, self.prices = caps, ledger, trigger, prices
        self.kind = trigger.split(":", 1)[0]
        self.has_fallback = has_fallback
        self.turn_tokens = 0
        self._offset = 0
        self._rows: list[tuple[float, str, float]] = []  # ts, trigger kind, cost

    @property
    def money_caps(self) -> bool:
        c = self.caps
        return (c.daily_usd is not None or c.monthly_usd is not None
                or self.kind in c.triggers)

    def spent(self) -> tuple[float, float, float]:
        """(today, this month, today for this trigger kind), from the ledger as it is now:
        only the lines appended since the last look are read."""
        day, _, month, _ = periods(now())
        if not self._offset:
            self._offset = offset_since(self.ledger, month.timestamp())
        rows, _, self._offset = read_ledger(self.ledger, self._offset)
        self._rows += [(r.ts, r.kind, r.cost) for r in rows if r.cost]
        d, m = day.timestamp(), month.timestamp()
        today = [(k, c) for ts, k, c in self._rows if ts >= d]
        return (sum(c for _, c in today), sum(c for ts, _, c in self._rows if ts >= m),
                sum(c for k, c in today if k == self.kind))

    def check(self, model: str, system: str, messages: list[Message],
              tools: list[ToolSpec]) -> None:
        """Raise BudgetExceeded if this call could take a cap past its limit."""
        tokens = estimate_tokens(system, messages, tools)
        cap = self.caps.max_tokens_per_turn
        if cap is not None and self.turn_tokens + tokens > cap:
            raise BudgetExceeded(
                model, f"this turn has used {self.turn_tokens:,} tokens and the next call "
                f"needs about {tokens:,} more, over max_tokens_per_turn = {cap:,}",
                "split the task, or raise [budget] max_tokens_per_turn", switchable=False)
        price = price_for(model, self.prices)
        if price is None or not self.money_caps or not any(vars(price).values()):
            return
        estimate = (tokens * price.input + OUTPUT_RESERVE * price.output) / 1e6
        today, month, kind_today = self.spent()
        _, next_day, _, next_month = periods(now())
        c = self.caps
        for name, limit, spent, resets, setting in (
                ("daily", c.daily_usd, today, next_day, "daily_usd"),
                ("monthly", c.monthly_usd, month, next_month, "monthly_usd"),
                (f"daily {self.kind}", c.triggers.get(self.kind), kind_today, next_day,
                 f"triggers.{self.kind}")):
            if limit is None or spent + estimate <= limit:
                continue
            hint = f"raise [budget] {setting} in agentd.toml"
            if is_interactive(self.trigger) and not self.has_fallback:
                hint += ', or set budget_fallback = "ollama:<model>" to go on locally'
            raise BudgetExceeded(
                model, f"{name} budget of {money(limit)} reached: {money(spent)} spent, "
                f"and this call would cost about {money(estimate)}; it resets "
                f"{_until(resets, datetime.fromtimestamp(now()).astimezone())}", hint)

    def note(self, usage: Usage | None) -> None:
        """Count a finished call's tokens against the turn (money comes from the ledger)."""
        if usage:  # an estimate (a server that reported none) counts like a report
            self.turn_tokens += usage.total


class BudgetedProvider:
    """One model's provider with its calls checked against the budget first."""

    def __init__(self, inner: Provider, budget: Budget):
        self.inner, self.budget, self.name = inner, budget, inner.name

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        self.budget.check(self.name, system, messages, tools)
        reply = await self.inner.complete(system, messages, tools, on_text, sampling)
        self.budget.note(reply.usage)
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


class BudgetSwitch:
    """The provider a turn talks to: its model chain, until a money cap refuses a call in
    an interactive turn with a `budget_fallback` chain (`backup`); from then on, for the
    rest of the turn, that chain."""

    def __init__(self, primary: Provider, backup: Provider | None):
        self.primary, self.backup = primary, backup
        self.current = primary
        self.name = primary.name

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        try:
            return await self.current.complete(system, messages, tools, on_text, sampling)
        except BudgetExceeded as e:
            if not e.switchable or self.backup is None or self.current is self.backup:
                raise
            self.current = self.backup
            return await self.current.complete(system, messages, tools, on_text, sampling)
        finally:
            self.name = self.current.name

    async def aclose(self) -> None:
        await self.primary.aclose()
        if self.backup is not None:
            await self.backup.aclose()
