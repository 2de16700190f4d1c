"""The cron file format (`cron/<name>.md`, as taught by skills/schedule-a-job) and its
APScheduler 3.x triggers. Pure: no scheduler, no state; crontab.py runs the jobs.

Front matter: exactly one of `schedule` (5-field crontab), `every` (90s, 15m, 2h, 1d) or
`at` (a local ISO date-time); optional `model`, `timezone`, `enabled`, `session` (`fresh`,
the default, or `continue`). The body is the prompt. Unknown keys are errors, so a typo
never silently changes what runs.

A `schedule` is read and timed by cronexpr.py, exactly as cronie would (its day rule,
Sunday as 0 and 7, daylight saving time); one that can never fire is refused here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from agentd.config import check_timezone, parse_duration
from agentd.daemon.cronexpr import compile_expr, weekdays
from agentd.errors import AgentdError
from agentd.skills import parse_front_matter

__all__ = ["CronJob", "cron_trigger", "last_fire", "localize", "parse", "trigger_for",
           "weekdays"]
KEYS = ("schedule", "every", "at", "model", "timezone", "enabled", "session")
MAX_BYTES = 64 * 1024
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


def cron_trigger(expr: str, tz: tzinfo) -> Any:
    """An APScheduler trigger firing when cronie would fire `expr` (APScheduler is loaded
    only here, when a job is timed)."""
    from agentd.daemon.crontrigger import cron_trigger as trigger

    return trigger(expr, tz)


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
        elif kind == "schedule":
            compile_expr(job.value)  # refused here, with its reason, wherever it is read
        elif kind == "at":
            job.at = _at(value)
            job.value = job.at.isoformat(timespec="minutes")
    except AgentdError as e:
        raise ValueError(str(e)) from None
    return job


def last_fire(trigger: Any, since: datetime, now: datetime) -> datetime | None:
    """The latest time in (since, now] at which `trigger` fires, else None. Steps through
    fire times (in UTC: a local time plus a step loses its DST fold); callers bound `since`
    (the catch-up window) so this stays short."""
    last, end = None, now.astimezone(UTC)
    t = since.astimezone(UTC) + timedelta(microseconds=1)
    for _ in range(5000):
        nxt = trigger.get_next_fire_time(None, t)
        if nxt is None or nxt.astimezone(UTC) > end:
            break
        last, t = nxt, nxt.astimezone(UTC) + timedelta(microseconds=1)
    return last
