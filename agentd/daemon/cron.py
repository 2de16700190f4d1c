"""The cron file format (`cron/<name>.md`, as taught by skills/schedule-a-job) and its
APScheduler 3.x triggers. Pure: no scheduler, no state; crontab.py runs the jobs.

Front matter: exactly one of `schedule` (5-field crontab), `every` (90s, 15m, 2h, 1d) or
`at` (a local ISO date-time); optional `model`, `timezone`, `enabled`, `session` (`fresh`,
the default, or `continue`). The body is the prompt. Unknown keys are errors, so a typo
never silently changes what runs.

Two differences between cron and APScheduler 3.x's CronTrigger are bridged here:
- weekday numbers: cron's 0 and 7 are Sunday, APScheduler 3.x's 0 is Monday (and
  `from_crontab` passes numbers through, so `0 9 * * 0` fires on Mondays). Every weekday
  field is expanded to a set of days and written with names (`sun,mon`), ranges, lists
  and steps included;
- day-of-month with day-of-week: cron fires when EITHER matches if both are restricted
  (`0 9 13 * 5`: the 13th, and every Friday); APScheduler 3.x requires both. Such a
  schedule becomes an OrTrigger of the two halves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from agentd.config import check_timezone, parse_duration
from agentd.errors import AgentdError
from agentd.skills import parse_front_matter

KEYS = ("schedule", "every", "at", "model", "timezone", "enabled", "session")
MAX_BYTES = 64 * 1024
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@hourly": "0 * * * *"}
_UNQUOTED_SCHEDULE = re.compile(r"^(schedule\s*:\s*)([^\s\"'].*?)\s*(#.*)?$", re.M)


@dataclass
class CronJob:
    name: str
    kind: str  # "schedule" | "every" | "at"
    value: str  # the crontab, the duration, or the ISO date-time, as written
    prompt: str
    model: str | None = None
    timezone: str = ""
    enabled: bool = True
    session: str = "fresh"
    seconds: float = 0.0  # `every`, parsed
    at: datetime | None = None  # `at`, parsed (naive: local to `timezone`)

    @property
    def spec(self) -> str:
        """What identifies the schedule: a change resets the job's catch-up baseline."""
        return f"{self.kind} {self.value} {self.timezone}".strip()


def weekdays(field: str) -> set[int]:
    """A crontab weekday field as cron reads it, as day numbers with Sunday = 0."""
    out: set[int] = set()
    for part in field.lower().split(","):
        body, _, step_s = part.partition("/")
        if step_s and (not step_s.isdigit() or int(step_s) < 1):
            raise ValueError(f"weekday step {step_s!r} is not a positive number")
        step = int(step_s) if step_s else 1
        if body == "*":
            lo, hi = 0, 6
        else:
            a, dash, b = body.partition("-")
            lo = _day(a)
            hi = _day(b) if dash else (6 if step_s else lo)
            if hi < lo:
                raise ValueError(f"weekday range {body!r} runs backwards")
        out |= {d % 7 for d in range(lo, hi + 1, step)}
    return out


def _day(token: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token[:3] in DAYS and len(token) == 3:
        return DAYS.index(token[:3])
    raise ValueError(f"weekday {token!r} is not 0-7 or sun-sat")


def cron_trigger(expr: str, tz: tzinfo) -> Any:
    """An APScheduler trigger that fires exactly when cron would fire `expr`."""
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    expr = MACROS.get(expr.strip().lower(), expr)
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"schedule {expr!r} needs 5 fields (minute hour day-of-month month "
                         f"weekday), not {len(fields)}")
    minute, hour, dom, month, dow = fields
    days = weekdays(dow)
    names = "*" if len(days) == 7 else ",".join(DAYS[d] for d in sorted(days))
    base = {"minute": minute, "hour": hour, "month": month, "timezone": tz}
    try:
        if dom != "*" and dow != "*":  # cron ORs the two day fields
            return OrTrigger([CronTrigger(day=dom, **base),
                              CronTrigger(day_of_week=names, **base)])
        return CronTrigger(day=dom, day_of_week=names, **base)
    except ValueError as e:
        raise ValueError(f"schedule {expr!r}: {e}") from None


def trigger_for(job: CronJob, tz: tzinfo, anchor: datetime | None = None) -> Any:
    """The job's trigger; `every` counts from `anchor` (its last run, else when first seen),
    so a restart keeps the rhythm instead of restarting the interval."""
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if job.kind == "schedule":
        return cron_trigger(job.value, tz)
    if job.kind == "every":
        return IntervalTrigger(seconds=job.seconds, start_date=anchor, timezone=tz)
    assert job.at is not None
    return DateTrigger(run_date=localize(job.at, tz), timezone=tz)


def localize(when: datetime, tz: tzinfo) -> datetime:
    return when.replace(tzinfo=tz) if when.tzinfo is None else when


def _at(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    try:
        return datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"at: {value!r} is not a date-time like 2026-12-01T09:00") from None


def _quote_schedule(text: str) -> str:
    """`schedule: */5 * * * *` unquoted is a YAML alias error; quote it for the user."""
    head_end = text.find("\n---", 3)
    if head_end < 0:
        return text
    head = _UNQUOTED_SCHEDULE.sub(lambda m: f'{m.group(1)}"{m.group(2)}"', text[:head_end])
    return head + text[head_end:]


def parse(name: str, data: bytes) -> CronJob:
    """A job from a cron file's bytes; ValueError with a one-line reason when invalid."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"over {MAX_BYTES // 1024} KiB")
    if b"\0" in data:
        raise ValueError("not a text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if not text.startswith("---"):
        raise ValueError("no front matter: start with a '---' block holding schedule, every "
                         "or at (see skills/schedule-a-job)")
    meta = parse_front_matter(_quote_schedule(text))
    unknown = [str(k) for k in meta if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown key {', '.join(unknown)} (known: {', '.join(KEYS)})")
    kinds = [k for k in ("schedule", "every", "at") if meta.get(k) not in (None, "")]
    if len(kinds) != 1:
        raise ValueError("needs exactly one of schedule, every or at"
                         + (f" (has {', '.join(kinds)})" if kinds else ""))
    body = text[text.find("\n---", 3) + 4:]
    prompt = body.split("\n", 1)[1].strip() if "\n" in body else ""
    if not prompt:
        raise ValueError("the prompt (the text after the front matter) is empty")
    kind = kinds[0]
    value = meta[kind]
    job = CronJob(name, kind, str(value).strip(), prompt)
    for key in ("model", "timezone", "session"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise ValueError(f"{key} must be text, not {meta[key]!r}")
    job.model = meta.get("model") or None
    if job.model and ":" not in job.model:
        raise ValueError(f"model {job.model!r} is not PROVIDER:MODEL")
    job.timezone = meta.get("timezone") or ""
    job.session = meta.get("session") or "fresh"
    if job.session not in ("fresh", "continue"):
        raise ValueError(f"session must be fresh or continue, not {job.session!r}")
    enabled = meta.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be true or false, not {enabled!r}")
    job.enabled = enabled
    try:
        check_timezone(job.timezone)
        if kind == "every":
            job.seconds = parse_duration(str(value), "every")
        elif kind == "at":
            job.at = _at(value)
            job.value = job.at.isoformat(timespec="minutes")
    except AgentdError as e:
        raise ValueError(str(e)) from None
    return job


def last_fire(trigger: Any, since: datetime, now: datetime) -> datetime | None:
    """The latest time in (since, now] at which `trigger` fires, else None. Steps through
    fire times; callers bound `since` (the catch-up window) so this stays short."""
    last = None
    t = since + timedelta(microseconds=1)
    for _ in range(5000):
        nxt = trigger.get_next_fire_time(None, t)
        if nxt is None or nxt > now:
            break
        last, t = nxt, nxt + timedelta(microseconds=1)
    return last
