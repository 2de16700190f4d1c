"""The APScheduler 3.x trigger over a cron expression read by cronexpr.py (kept apart so
reading a cron file does not import APScheduler)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo

from apscheduler.triggers.base import BaseTrigger

from agentd.daemon.cronexpr import CronExpr, compile_expr


class CronExprTrigger(BaseTrigger):
    """Fires when cronie would fire the expression, in one zone (see cronexpr.py)."""

    def __init__(self, expr: CronExpr, tz: tzinfo):
        self.expr, self.timezone = expr, tz

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime | None:
        """As APScheduler's CronTrigger: the first fire time at or after `now`, or after
        the previous one when that is earlier (so a misfire is seen). Arithmetic is done in
        UTC: adding to a local time drops its fold, so the repeated hour's second pass
        would come round again."""
        start = now.astimezone(UTC)
        if previous_fire_time:
            start = min(start, previous_fire_time.astimezone(UTC) + timedelta(microseconds=1))
        nxt = self.expr.next_after(start - timedelta(microseconds=1), self.timezone)
        if nxt is None:
            return None
        # In the zone's offset and name at that instant, but as a fixed offset: APScheduler
        # compares it with `now` in the zone itself, and Python compares two times of one
        # zone by wall clock, so the repeated hour's second pass would look already due.
        local = nxt.astimezone(self.timezone)
        offset = local.utcoffset()
        assert offset is not None
        return local.astimezone(timezone(offset, local.tzname()))

    def __str__(self) -> str:
        return "cron"


def cron_trigger(expr: str, tz: tzinfo) -> CronExprTrigger:
    """An APScheduler trigger that fires exactly when cronie would fire `expr`."""
    return CronExprTrigger(compile_expr(expr), tz)
