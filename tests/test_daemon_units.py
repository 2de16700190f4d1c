"""The daemon's pure parts: durations, active hours, the HEARTBEAT.md and cron formats,
cron triggers against fixed dates (Sunday!), the queue's priorities and bounds, inbox
name filtering and partial-write detection, recovery of a stale git lock."""

from __future__ import annotations

import asyncio
import io
import os
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agentd.config import parse_duration, parse_hours, parse_settings
from agentd.daemon import checklist, cron, recovery
from agentd.daemon.heartbeat import Item, in_active_hours, is_due
from agentd.daemon.inbox import ignored, open_for_writing
from agentd.daemon.status import usage_today
from agentd.daemon.watcher import topic_of
from agentd.errors import AgentdError
from agentd.home import TEMPLATES
from agentd.jobs.log import EventLog
from agentd.jobs.queue import QueuedTurn, TurnQueue
from agentd.outbox import is_silent

UTC = ZoneInfo("UTC")
MONDAY_NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_durations() -> None:
    assert [parse_duration(d) for d in ("90s", "15m", "2h", "1d", "1h30m")] == [
        90, 900, 7200, 86400, 5400]
    for bad in ("90", "", "0s", "2 weeks", "1h 3", "-5m"):
        with pytest.raises(AgentdError):
            parse_duration(bad)


def test_settings_sections_are_strict() -> None:
    s = parse_settings({"heartbeat": {"every": "15m", "active_hours": "08:00-22:00",
                                      "timezone": "Europe/Berlin"},
                        "daemon": {"queue_limit": 5, "catch_up": "1h"}})
    assert s.heartbeat.every == "15m" and s.daemon.queue_limit == 5
    for bad, word in (({"heartbeat": {"evry": "1m"}}, "heartbeat.evry"),
                      ({"heartbeat": {"every": "soon"}}, "heartbeat.every"),
                      ({"heartbeat": {"every": 30}}, "heartbeat.every"),
                      ({"heartbeat": {"active_hours": "8-22"}}, "active_hours"),
                      ({"heartbeat": {"timezone": "Mars/Olympus"}}, "timezone"),
                      ({"daemon": {"watch": "magic"}}, "daemon.watch"),
                      ({"daemon": {"queue_limit": 0}}, "queue_limit")):
        with pytest.raises(AgentdError, match=word):
            parse_settings(bad)


def test_active_hours_are_parsed_once_per_settings_not_per_tick(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat tick reads the window `[heartbeat] active_hours` was parsed into when
    the file was read; five ticks outside it parse nothing."""
    import agentd.config.values as values
    from agentd.daemon import heartbeat

    hour = datetime.now(ZoneInfo("UTC")).hour
    window = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"  # not now
    s = parse_settings({"heartbeat": {"active_hours": window, "timezone": "UTC"}})
    assert s.heartbeat.active_hours == window
    assert s.heartbeat.active_hours.window == parse_hours(window)
    calls: list[str] = []
    real = values.parse_hours

    def counted(text: str, where: str = "active_hours") -> tuple[int, int] | None:
        calls.append(text)
        return real(text, where)

    monkeypatch.setattr(values, "parse_hours", counted)
    monkeypatch.setattr(heartbeat, "parse_hours", counted, raising=False)
    log = EventLog(io.StringIO())
    beat = heartbeat.Heartbeat(home, lambda: s, TurnQueue(5, log), log)
    results = [asyncio.run(beat.tick()) for _ in range(5)]
    assert results == ["skipped"] * 5 and calls == []


@pytest.mark.parametrize(("hhmm", "window", "inside"), [
    ("12:00", "08:00-22:00", True), ("07:59", "08:00-22:00", False),
    ("22:00", "08:00-22:00", False), ("23:30", "22:00-06:00", True),
    ("05:59", "22:00-06:00", True), ("06:00", "22:00-06:00", False), ("03:00", "", True)])
def test_active_hours(hhmm: str, window: str, inside: bool) -> None:
    h, m = map(int, hhmm.split(":"))
    assert in_active_hours(datetime(2026, 11, 23, h, m), parse_hours(window)) is inside


def test_checklist_items_and_conditions() -> None:
    text = b"""# Heartbeat
Intro with a - dash.
- Plain item
- [ ] Gated item
  when: `test -f "$(ls inbox | head -1)"`
  every: 2h
  More words for the model.
* Broken item
  every: soon
```markdown
- in a fence
```
<!-- - in a comment -->
1. Numbered
   - when: ``echo `x` ``
Paragraph ends the list.
  indented but not an item
"""
    items, errors = checklist.parse(text)
    assert [(i.text, i.line, i.every, i.gate) for i in items] == [
        ("Plain item", 3, None, None),
        ("Gated item\nMore words for the model.", 4, 7200, 'test -f "$(ls inbox | head -1)"'),
        ("Numbered", 14, None, "echo `x`")]
    assert errors == ["line 9: every: 'soon' is not a duration (use 90s, 15m, 2h or 1d); "
                      "item on line 8 skipped"]


@pytest.mark.parametrize("data", [b"\x00\x01\x02binary", b"\xff\xfe- item", b"- a\n  when: `x"])
def test_hostile_checklists_report_problems(data: bytes) -> None:
    items, errors = checklist.parse(data)
    assert len(errors) == 1 and not items


def test_template_has_no_live_items() -> None:
    template = TEMPLATES / "memory" / "HEARTBEAT.md"
    assert checklist.parse(template.read_bytes()) == ([], [])


def test_interval_due_with_half_a_tick_of_slack() -> None:
    item = Item("x", 1, every=7200)
    assert is_due(item, {}, 1000.0, 900)
    assert not is_due(item, {"run": 1000.0}, 1000.0 + 3600, 900)
    assert is_due(item, {"run": 1000.0}, 1000.0 + 7200 - 60, 900)  # the tick came early
    gated = Item("y", 1, every=7200, gate="true")
    assert not is_due(gated, {"checked": 1000.0}, 1000.0 + 600, 900)


def _next(expr: str, now: datetime = MONDAY_NOON) -> str:
    return cron.cron_trigger(expr, UTC).get_next_fire_time(None, now).strftime("%a %Y-%m-%d %H:%M")


def test_sunday_is_zero_and_seven() -> None:
    assert MONDAY_NOON.strftime("%a") == "Mon"
    assert _next("0 9 * * 0") == "Sun 2026-11-29 09:00"  # APScheduler alone: Monday
    assert _next("0 9 * * 7") == "Sun 2026-11-29 09:00"
    assert _next("0 9 * * sun") == "Sun 2026-11-29 09:00"
    assert _next("0 9 * * 1") == "Mon 2026-11-30 09:00"
    assert _next("0 9 * * 6") == "Sat 2026-11-28 09:00"


@pytest.mark.parametrize(("field", "days"), [
    ("1-5", {1, 2, 3, 4, 5}), ("0,6", {0, 6}), ("5-7", {5, 6, 0}), ("*/2", {0, 2, 4, 6}),
    ("1-5/2", {1, 3, 5}), ("mon-fri", {1, 2, 3, 4, 5}), ("SAT,sun", {6, 0}), ("*", set(range(7)))])
def test_weekday_fields(field: str, days: set[int]) -> None:
    assert cron.weekdays(field) == days


def test_weekday_lists_and_ranges_fire_on_the_right_days() -> None:
    fires = []
    t = cron.cron_trigger("30 8 * * 0-2", UTC)  # Sunday, Monday, Tuesday
    when = MONDAY_NOON
    for _ in range(4):
        when = t.get_next_fire_time(None, when)
        fires.append(when.strftime("%a %d"))
        when = when.replace(minute=31)
    assert fires == ["Tue 24", "Sun 29", "Mon 30", "Tue 01"]


def test_day_of_month_or_day_of_week_as_cron_does() -> None:
    # cron: the 13th OR any Friday. APScheduler 3.x alone would want a Friday the 13th.
    t = cron.cron_trigger("0 9 13 * 5", UTC)
    a = t.get_next_fire_time(None, MONDAY_NOON)
    b = t.get_next_fire_time(None, a.replace(minute=1))
    c = t.get_next_fire_time(None, datetime(2026, 12, 12, 10, tzinfo=UTC))
    assert [x.strftime("%a %d") for x in (a, b, c)] == ["Fri 27", "Fri 04", "Sun 13"]


def test_macros_and_bad_crontabs() -> None:
    assert _next("@daily") == "Tue 2026-11-24 00:00"
    assert _next("@weekly") == "Sun 2026-11-29 00:00"
    for bad, word in (("0 9 * *", "5 fields"), ("0 9 * * 8", "weekday '8'"),
                      ("61 * * * *", "61"), ("0 9 * * 5-1", "backwards")):
        with pytest.raises(ValueError, match=word):
            cron.cron_trigger(bad, UTC)


def test_cron_file_format() -> None:
    job = cron.parse("daily", b"---\nschedule: */30 9-17 * * 1-5   # work hours\n"
                     b"model: openai:cheap\nsession: continue\n---\nSummarise.\n")
    assert (job.kind, job.value, job.model, job.session, job.prompt) == (
        "schedule", "*/30 9-17 * * 1-5", "openai:cheap", "continue", "Summarise.")
    job = cron.parse("once", b"---\nat: 2026-12-01T09:00\nenabled: false\n---\nGo.\n")
    assert job.at == datetime(2026, 12, 1, 9, 0) and not job.enabled
    assert cron.parse("e", b"---\nevery: 15m\n---\nGo.\n").seconds == 900


@pytest.mark.parametrize(("data", "word"), [
    (b"---\nevery: 15\n---\nGo.", "not a duration"),
    (b"---\nevery: 1m\ncolour: red\n---\nGo.", "unknown key colour"),
    (b"---\nevery: 1m\nat: 2026-01-01T00:00\n---\nGo.", "exactly one"),
    (b"---\nmodel: openai:x\n---\nGo.", "exactly one"),
    (b"---\nevery: [1m\n---\nGo.", "not valid YAML"),
    (b"just a prompt", "no front matter"),
    (b"\x00\x89PNG", "not a text file"),
    (b"---\nevery: 1m\n---\n   \n", "prompt"),
    (b"---\nevery: 1m\nsession: forever\n---\nGo.", "session"),
    (b"---\nat: next tuesday\n---\nGo.", "not a date-time"),
    (b"---\nevery: 1m\ntimezone: Nowhere/City\n---\nGo.", "time zone"),
])
def test_bad_cron_files(data: bytes, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        cron.parse("bad", data)


def test_last_fire_finds_the_latest_missed_run() -> None:
    t = cron.cron_trigger("0 9 * * *", UTC)
    since = datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert cron.last_fire(t, since, MONDAY_NOON) == datetime(2026, 11, 23, 9, tzinfo=UTC)
    assert cron.last_fire(t, MONDAY_NOON.replace(hour=10), MONDAY_NOON) is None


async def drained(q: TurnQueue, timeout: float = 10.0) -> None:
    """Wait until the queue has run everything it holds, or fail at the deadline."""
    async def empty() -> None:
        while q.depth or q.busy:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(empty(), timeout)


def test_queue_priorities_bounds_and_duplicates() -> None:
    ran: list[str] = []
    out = io.StringIO()
    log = EventLog(out)

    async def main() -> None:
        q = TurnQueue(3, log)

        def job(kind: str, name: str) -> QueuedTurn:
            async def run() -> None:
                ran.append(f"{kind}:{name}")
            return QueuedTurn(kind, name, run)

        assert q.put(job("inbox", "a.txt"))
        assert q.put(job("cron", "daily"))
        assert not q.put(job("cron", "daily"))  # already waiting
        assert q.put(job("heartbeat", "heartbeat"))
        assert not q.put(job("inbox", "b.txt"))  # full: refused, logged
        assert q.depth == 3
        worker = asyncio.create_task(q.work())
        await drained(q)
        assert q.put(job("person", "alice"))
        await drained(q)
        assert q.close() == []
        await asyncio.wait_for(worker, 1)

    asyncio.run(main())
    assert ran == ["heartbeat:heartbeat", "cron:daily", "inbox:a.txt", "person:alice"]
    assert "queue: warning: full (3 waiting): dropped inbox b.txt" in out.getvalue()


def test_a_failing_job_does_not_stop_the_queue() -> None:
    ran: list[str] = []
    out = io.StringIO()

    async def main() -> None:
        q = TurnQueue(5, EventLog(out))

        async def boom() -> None:
            raise RuntimeError("bug")

        async def fine() -> None:
            ran.append("fine")

        q.put(QueuedTurn("cron", "boom", boom))
        q.put(QueuedTurn("cron", "fine", fine))
        worker = asyncio.create_task(q.work())
        await drained(q)
        q.close()
        await worker

    asyncio.run(main())
    assert ran == ["fine"]
    assert "cron: error: boom: failed: RuntimeError: bug" in out.getvalue()


@pytest.mark.parametrize(("name", "skip"), [
    ("report.txt", False), ("notes.md", False), (".report.txt.swp", True), ("report.txt~", True),
    ("4913", True), (".goutputstream-XYZ", True), ("#notes.md#", True), ("big.iso.part", True),
    (".gitkeep", True), (".done", True), ("file.crdownload", True)])
def test_inbox_ignores_temporaries(name: str, skip: bool) -> None:
    assert ignored(name) is skip


def test_open_for_writing_sees_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "slow.txt"
    with path.open("w") as f:
        f.write("half")
        f.flush()
        assert open_for_writing(path)
    assert not open_for_writing(path)
    with path.open() as f:  # a reader is not a writer
        assert not open_for_writing(path)
        f.read()


def test_topics(tmp_path: Path) -> None:
    h = tmp_path
    assert topic_of(h, str(h / "agentd.toml")) == ("config", "agentd.toml")
    assert topic_of(h, str(h / "memory/HEARTBEAT.md")) == ("heartbeat", "memory/HEARTBEAT.md")
    assert topic_of(h, str(h / "cron/daily.md")) == ("cron", "cron/daily.md")
    assert topic_of(h, str(h / "inbox/q.txt")) == ("inbox", "q.txt")
    assert topic_of(h, str(h / "skills/x/SKILL.md")) == ("skills", "skills/x/SKILL.md")
    for other in ("cron/.daily.md.swp", "cron/daily.md~", "inbox/.done/q.txt", "memory/MEMORY.md",
                  ".git/index", ".agentd/usage.jsonl", "outbox/a.md", "/elsewhere/x"):
        assert topic_of(h, str(h / other)) is None, other


def test_silent_answers() -> None:
    assert is_silent("[SILENT]") and is_silent("  [SILENT]\n") and is_silent("Nothing. [SILENT]")
    assert not is_silent("The build broke: see notes.") and not is_silent("")


def test_usage_today_reads_the_ledger_tail(tmp_path: Path) -> None:
    ledger = tmp_path / ".agentd" / "usage.jsonl"
    ledger.parent.mkdir()
    now = time.time()
    rows = [f'{{"ts": {now - 3 * 86400}, "input": 999, "output": 1, "cost": 9.0}}'] * 3000
    rows += [f'{{"ts": {now - 5}, "input": 100, "output": 10, "cache_read": 5, "cost": 0.5}}',
             f'{{"ts": {now - 1}, "input": 50, "output": 5, "cost": null}}']
    ledger.write_text("\n".join(rows) + "\n")
    t = usage_today(tmp_path, now)
    assert (t["calls"], t["input"], t["output"], t["cache_read"], t["cost"], t["unpriced"]) == (
        2, 150, 15, 5, 0.5, 1)


def test_stale_index_lock_is_cleared_fresh_one_waits(home: Path) -> None:
    log = EventLog(io.StringIO())
    lock = home / ".git" / "index.lock"
    lock.write_text("")
    os.utime(lock, (time.time() - 600, time.time() - 600))
    assert recovery.clear_index_lock(home, log)
    assert not lock.exists()
    lock.write_text("")  # fresh: only removed after min_age, when still no git runs
    started = time.monotonic()
    assert recovery.clear_index_lock(home, log, min_age=0.3)
    assert time.monotonic() - started >= 0.25
