"""`agentd usage`: the ledger added up, for people (a table and bars) and for scripts (JSON).

Nothing here trusts the ledger: lines that are not rows are skipped and counted (the
report says how many), and a call whose cost is unknown (`null`: a model with no price)
is shown as unknown, never as free: "$1.20 + ?" means $1.20 plus calls of unknown cost.
Counts estimated because a server reported none (ledger rows marked `estimated`) make
their group's numbers read "~1,234" (and `estimated_calls` in the JSON).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agentd.budget import money as usd
from agentd.budget import periods
from agentd.config import Settings
from agentd.savings import local_share
from agentd.usage import Row, offset_since, read_ledger

BY = ("model", "trigger", "day")
BAR_WIDTH = 40
_EIGHTHS = " ▏▎▍▌▋▊▉"


def _day(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts).astimezone():%Y-%m-%d}"


def _key(row: Row, by: str) -> str:
    return row.model if by == "model" else row.kind if by == "trigger" else _day(row.ts)


def _totals(rows: list[Row]) -> dict[str, Any]:
    prompt = sum(r.input + r.cache_read + r.cache_write for r in rows)
    known = [r.cost for r in rows if r.cost is not None]
    return {"calls": len(rows), "input": sum(r.input for r in rows),
            "cache_write": sum(r.cache_write for r in rows),
            "cached": sum(r.cache_read for r in rows), "output": sum(r.output for r in rows),
            "cache_hit": round(sum(r.cache_read for r in rows) / prompt, 4) if prompt else None,
            "cost": round(sum(known), 6), "unknown_cost_calls": len(rows) - len(known),
            "estimated_calls": sum(r.estimated for r in rows)}


def report(ledger: Path, settings: Settings, days: int, by: str,
           now: float | None = None) -> dict[str, Any]:
    """The JSON-ready report of the last `days` days (today included), grouped `by`."""
    now = datetime.now().timestamp() if now is None else now
    today, _, month, _ = periods(now)
    first = (today - timedelta(days=days - 1) + timedelta(hours=2)).replace(hour=0)
    start = min(first, month).timestamp()  # the budget lines need the whole month
    rows, skipped, _ = read_ledger(ledger, offset_since(ledger, start))
    recent = [r for r in rows if first.timestamp() <= r.ts]
    by_day: dict[str, list[Row]] = defaultdict(list)
    for r in recent:
        by_day[_day(r.ts)].append(r)
    groups: dict[str, list[Row]] = by_day if by == "day" else defaultdict(list)
    if by != "day":
        for r in recent:
            groups[_key(r, by)].append(r)
    order = sorted(groups) if by == "day" else sorted(
        groups, key=lambda k: -sum(r.cost or 0 for r in groups[k]))
    per_day = []
    for i in range(days):
        day = f"{first + timedelta(days=i, hours=2):%Y-%m-%d}"
        t = _totals(by_day.get(day, []))
        per_day.append({"day": day, "cost": t["cost"], "unknown_cost_calls":
                        t["unknown_cost_calls"], "calls": t["calls"]})
    kinds: dict[str, list[Row]] = defaultdict(list)
    for r in recent:
        kinds[r.kind].append(r)
    return {"days": days, "by": by, "since": f"{first:%Y-%m-%d}", "skipped_lines": skipped,
            "groups": [{by: k, **_totals(groups[k])} for k in order],
            "total": _totals(recent), "per_day": per_day,
            "per_trigger": {k: {key: _totals(v)[key] for key in ("calls", "cost",
                                                                "unknown_cost_calls")}
                            for k, v in sorted(kinds.items())},
            "budget": budget_status(rows, settings, now, today.timestamp(),
                                    month.timestamp()),
            "local": _local(recent, settings)}


def _local(rows: list[Row], settings: Settings) -> dict[str, Any] | None:
    """The local-model line (savings.py), when any call of the period was local."""
    share = local_share(rows, settings)
    return {**share.to_json(), "summary": share.line()} if share.tokens else None


def budget_status(rows: list[Row], settings: Settings, now: float, day: float,
                  month: float) -> list[dict[str, Any]]:
    """Spend against each configured cap (for `agentd usage`, and `agentd status`)."""
    b = settings.budget
    today = [r for r in rows if r.ts >= day and r.cost]
    caps = [("daily", b.daily_usd, sum(r.cost or 0 for r in today)),
            ("monthly", b.monthly_usd,
             sum(r.cost or 0 for r in rows if r.ts >= month and r.cost))]
    caps += [(f"daily {k}", cap, sum(r.cost or 0 for r in today if r.kind == k))
             for k, cap in sorted(b.triggers.items())]
    return [{"budget": name, "cap": cap, "spent": round(spent, 6),
             "reached": spent >= cap} for name, cap, spent in caps if cap is not None]


def money(cost: float, unknown: int) -> str:
    if unknown and not cost:
        return "?"
    return f"${cost:,.2f}" + (" + ?" if unknown else "") if cost >= 0.01 or not cost else (
        f"${cost:.4f}" + (" + ?" if unknown else ""))


def bar(value: float, top: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar in eighths of a character."""
    eighths = round(value / top * width * 8) if top > 0 else 0
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def render(data: dict[str, Any]) -> Any:
    """The report as rich renderables: the table, the bars per day, the trigger kinds."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    by = data["by"]
    table = Table(title=f"usage since {data['since']} ({data['days']} days)", box=None,
                  header_style="bold", title_justify="left", pad_edge=False)
    table.add_column(by, overflow="fold")
    for col in ("calls", "input", "cache write", "cached", "output", "hit", "cost"):
        table.add_column(col, justify="right", no_wrap=True)

    def cells(t: dict[str, Any]) -> list[str]:
        hit = "-" if t["cache_hit"] is None else f"{t['cache_hit']:.0%}"
        est = "~" if t["estimated_calls"] else ""
        usd = money(t["cost"], t["unknown_cost_calls"])
        return [f"{t['calls']:,}", f"{est}{t['input']:,}", f"{t['cache_write']:,}",
                f"{t['cached']:,}", f"{est}{t['output']:,}", hit,
                usd if usd == "?" else est + usd]

    for g in data["groups"]:
        table.add_row(g[by], *cells(g))
    table.add_row(Text("total", style="bold"), *cells(data["total"]), end_section=True)
    top = max((d["cost"] for d in data["per_day"]), default=0)
    bars = Table(title="spend per day", box=None, show_header=False, title_justify="left",
                 pad_edge=False)
    for _ in range(3):
        bars.add_column(no_wrap=True)
    for d in data["per_day"]:
        bars.add_row(d["day"], Text(bar(d["cost"], top) or "·", style="cyan"),
                     money(d["cost"], d["unknown_cost_calls"]) if d["calls"] else "")
    parts: list[Any] = [table, Text(""), bars, Text("")]
    kinds = " · ".join(f"{k} {money(v['cost'], v['unknown_cost_calls'])}"
                       for k, v in data["per_trigger"].items())
    parts.append(Text(f"per trigger: {kinds or 'no calls'}"))
    for b in data["budget"]:
        style = "bold red" if b["reached"] else ""
        parts.append(Text(f"{b['budget']} budget: {usd(b['spent'])} of {usd(b['cap'])}"
                          + (" — reached" if b["reached"] else ""), style=style))
    if data.get("local"):
        parts.append(Text(data["local"]["summary"]))
    if data["skipped_lines"]:
        n = data["skipped_lines"]
        parts.append(Text(f"skipped {n} malformed ledger line{'s' * (n != 1)}",
                          style="yellow"))
    return Group(*parts)


def budget_today(ledger: Path, settings: Settings, now: float | None = None
                 ) -> list[dict[str, Any]]:
    """Spend against each configured cap right now, reading only this month of the ledger:
    the line `agentd status` can show ("daily budget: $1.20 of $5.00")."""
    now = datetime.now().timestamp() if now is None else now
    day, _, month, _ = periods(now)
    rows, _, _ = read_ledger(ledger, offset_since(ledger, month.timestamp()))
    return budget_status(rows, settings, now, day.timestamp(), month.timestamp())
