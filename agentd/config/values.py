"""The small value parsers of agentd.toml, cron files and HEARTBEAT.md: durations, daily
time windows and time-zone names. Each error names the setting it came from.

A leaf of the config package: the table parsers (tables.py) and the section modules import
it, never the other way round.
"""

from __future__ import annotations

import re

from agentd.errors import AgentdError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, where: str = "duration") -> float:
    """Seconds in "90s", "15m", "2h", "1d" (or "1h30m", "0.5s"). One syntax everywhere:
    agentd.toml, cron files and HEARTBEAT.md. A bare number is refused: minutes or seconds
    would be a guess."""
    s = str(text).strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise AgentdError(f"{where}: {text!r} is not a duration (use 90s, 15m, 2h or 1d)")
    if total < 0.1:
        raise AgentdError(f"{where}: {text!r} is shorter than 0.1s")
    return total


class Duration(str):
    """A duration setting as the person wrote it ("6h", "1h30m"), checked when the file is
    read; `.seconds` is its value.

    A `str` so that everything that shows or stores the setting (log lines, "longer ago
    than catch_up (6h)", status.json, a reload's comparison) keeps the written text with no
    conversion, while every use of its length reads `.seconds`, parsed once, here.
    """

    seconds: float

    def __new__(cls, text: str, where: str = "duration") -> Duration:
        self = super().__new__(cls, str(text).strip())
        self.seconds = parse_duration(text, where)
        return self


def parse_hours(text: str, where: str = "active_hours") -> tuple[int, int] | None:
    """"08:00-22:00" → (480, 1320), minutes after midnight; the end may be before the start
    (a window across midnight). Empty → None: always active."""
    if not text.strip():
        return None
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        raise AgentdError(f"{where}: {text!r} is not HH:MM-HH:MM (e.g. \"08:00-22:00\")")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or (h1 == 24 and m1) or (h2 == 24 and m2):
        raise AgentdError(f"{where}: {text!r} has an impossible time")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise AgentdError(f"{where}: {text!r} is an empty window; leave it empty for always")
    return start, end


class Hours(str):
    """A daily window setting as written ("08:00-22:00", or "" for always), checked when
    the file is read; `.window` is its value (parse_hours), parsed once, here, and not at
    every heartbeat tick. A `str` like Duration, for the same reasons."""

    window: tuple[int, int] | None

    def __new__(cls, text: str, where: str = "active_hours") -> Hours:
        self = super().__new__(cls, str(text).strip())
        self.window = parse_hours(text, where)
        return self


def check_timezone(name: str, where: str = "timezone") -> None:
    """An IANA zone name ("Europe/Berlin"); empty means this machine's zone."""
    if not name:
        return
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only when a zone is named

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AgentdError(f"{where}: unknown time zone {name!r} (e.g. \"Europe/Berlin\", "
                          "\"UTC\")") from None
