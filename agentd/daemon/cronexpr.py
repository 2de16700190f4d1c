"""A 5-field crontab read exactly as cronie (Vixie cron) reads it, and its fire times.

APScheduler's CronTrigger differs from cron in three ways that matter here, so agentd
computes cron fire times itself (crontrigger.py hands them to APScheduler):
- the day rule. When both day fields are restricted cron fires when EITHER matches
  (`0 9 13 * 5`: the 13th, and every Friday), but a field that merely STARTS with `*`
  (`*/2`) counts as unrestricted for this rule, so `0 0 */2 * 1` fires on odd-dated
  Mondays only. APScheduler requires both, always;
- weekday numbers: cron's 0 and 7 are Sunday, APScheduler's 0 is Monday;
- daylight saving time, where APScheduler 3.x with zoneinfo repeats or reorders times.
  agentd follows cronie: at a skipped local hour (spring), a job with a fixed minute and
  hour due in the gap runs once when the clock jumps, and a job whose minute or hour
  starts with `*` just goes on after the gap; at a repeated hour (autumn), a fixed-time
  job runs once (the first pass), a `*` job runs in both passes.

Only what cron itself accepts is accepted: numbers, names (jan-dec, sun-sat), `*`, ranges,
steps on `*` or a range, and lists. `L`/`last`, `W`, `#`, `?` and `~` are refused, and so is
a schedule that can never fire (`0 0 30 2 *`).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
# (name in messages, lowest, highest, names for lowest.. in order)
FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day-of-month", 1, 31, ()),
          ("month", 1, 12, MONTHS), ("weekday", 0, 7, DAYS))
SEARCH_YEARS = 30  # Feb 29 on a given weekday recurs within 28 years


def _number(token: str, what: str, lo: int, hi: int, names: tuple[str, ...]) -> int:
    if token.isdigit() and lo <= int(token) <= hi:
        return int(token)
    if token.lower() in names:
        return names.index(token.lower()) + lo
    if (what == "day-of-month" and token.upper() in ("L", "LAST", "LW")) or "#" in token:
        raise ValueError(f"{what} {token!r} is not cron: cron has no 'last day' or 'nth "
                         "weekday'; use numbers (e.g. 28-31 with a check in the prompt)")
    allowed = f"{lo}-{hi}" + (f" or {names[0]}-{names[-1]}" if names else "")
    raise ValueError(f"{what} {token!r} is not {allowed}")


def field_values(text: str, what: str, lo: int, hi: int, names: tuple[str, ...]) -> set[int]:
    """One field's values, as cronie reads it; ValueError naming the field when it is not."""
    out: set[int] = set()
    for part in text.split(","):
        body, slash, step_s = part.partition("/")
        if slash and not (step_s.isdigit() and int(step_s) >= 1):
            raise ValueError(f"{what} step {step_s!r} is not a positive number")
        if body == "*":
            a, b = lo, hi
        else:
            first, dash, last = body.partition("-")
            a = _number(first, what, lo, hi, names)
            b = _number(last, what, lo, hi, names) if dash else a
            if slash and not dash:
                raise ValueError(f"{what} {part!r}: cron steps a range or *, e.g. {a}-{hi}/"
                                 f"{step_s}")
            if b < a:
                raise ValueError(f"{what} range {body!r} runs backwards")
        out |= set(range(a, b + 1, int(step_s) if slash else 1))
    return out


def weekdays(text: str) -> set[int]:
    """A weekday field as cron reads it, as day numbers with Sunday = 0 (and 7)."""
    return {d % 7 for d in field_values(text, *FIELDS[4])}


@dataclass(frozen=True)
class CronExpr:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # Sunday = 0
    either_day: bool  # both day fields restricted (neither starts with *): cron ORs them
    wild: bool  # minute or hour starts with *: cronie's rule at DST changes

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom, dow = d.day in self.days, (d.weekday() + 1) % 7 in self.weekdays
        return (dom or dow) if self.either_day else (dom and dow)

    def next_after(self, after: datetime, tz: tzinfo) -> datetime | None:
        """The first fire time strictly after `after` (aware), in UTC; None if never.
        (Instants are compared in UTC: Python compares two times of one zone by wall
        clock, which is wrong across a repeated hour.)"""
        after = after.astimezone(UTC)
        local = after.astimezone(tz).replace(tzinfo=None)
        day = local.date() - timedelta(days=1)  # a gap's run can fall on the next day
        for _ in range(366 * SEARCH_YEARS):
            if self.day_matches(day):
                if _steady(day, tz):  # no DST change today: wall time order is time order
                    for h, m in self._times(local if day == local.date() else None):
                        t = datetime.combine(day, time(h, m), tzinfo=tz).astimezone(UTC)
                        if t > after:
                            return t
                else:
                    for t in self._instants(day, tz):
                        if t > after:
                            return t
            day += timedelta(days=1)
        return None

    def _times(self, since: datetime | None) -> Iterator[tuple[int, int]]:
        """(hour, minute) in order, from `since`'s minute on when given."""
        for h in sorted(self.hours):
            if since is None or h >= since.hour:
                for m in sorted(self.minutes):
                    if since is None or h > since.hour or m >= since.minute:
                        yield h, m

    def _instants(self, day: date, tz: tzinfo) -> list[datetime]:
        """The day's fire instants in UTC, in order, with cronie's DST rule (see the
        module)."""
        out: set[datetime] = set()
        for h in sorted(self.hours):
            for m in sorted(self.minutes):
                wall = datetime.combine(day, time(h, m))
                first = wall.replace(tzinfo=tz)
                second = wall.replace(tzinfo=tz, fold=1)
                if _exists(wall, tz):
                    out.add(first.astimezone(UTC))
                    if self.wild and first.utcoffset() != second.utcoffset():
                        out.add(second.astimezone(UTC))  # the repeated hour again
                elif not self.wild:
                    out.add(_after_gap(wall, tz).astimezone(UTC))
        return sorted(out)


def _steady(day: date, tz: tzinfo) -> bool:
    """Whether `tz` keeps one UTC offset all through `day`."""
    start = datetime.combine(day, time(0), tzinfo=tz)
    return start.utcoffset() == (start + timedelta(days=1)).utcoffset() == datetime.combine(
        day, time(12), tzinfo=tz).utcoffset()


def _exists(wall: datetime, tz: tzinfo) -> bool:
    """Whether this local wall time happens in `tz` (not skipped by a DST jump)."""
    back = wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz)
    return back.replace(tzinfo=None) == wall


def _after_gap(wall: datetime, tz: tzinfo) -> datetime:
    """The first local minute after a skipped wall time: when the clock has jumped."""
    t = wall.replace(second=0, microsecond=0)
    for _ in range(24 * 60):
        t += timedelta(minutes=1)
        if _exists(t, tz):
            return t.replace(tzinfo=tz)
    return wall.replace(tzinfo=tz)


def compile_expr(expr: str) -> CronExpr:
    """A crontab line's 5 fields (or an @macro) read as cronie does; ValueError saying
    what is wrong, including a schedule that can never fire."""
    text = MACROS.get(expr.strip().lower(), expr)
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"schedule {expr!r} needs 5 fields (minute hour day-of-month month "
                         f"weekday), not {len(fields)}")
    try:
        mins, hours, days, months, dows = (
            field_values(f, *spec) for f, spec in zip(fields, FIELDS, strict=True))
    except ValueError as e:
        raise ValueError(f"schedule {expr!r}: {e}") from None
    either = not fields[2].startswith("*") and not fields[4].startswith("*")
    if not either and not any(d <= calendar.monthrange(2024, m)[1] for m in months
                              for d in days):
        raise ValueError(f"schedule {expr!r} can never fire: no month in it has that day")
    return CronExpr(frozenset(mins), frozenset(hours), frozenset(days), frozenset(months),
                    frozenset(d % 7 for d in dows), either,
                    fields[0].startswith("*") or fields[1].startswith("*"))
