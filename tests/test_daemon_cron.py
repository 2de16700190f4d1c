"""Cron jobs in a real daemon: files added, edited and deleted while it runs (by the user,
with inotify and with polling, and by the agent during a turn) reschedule within 2 s;
invalid files cost one error line and nothing else; missed runs are caught up once; the
`agentd cron` commands."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import agentd
from daemonkit import (
    Daemon,
    configure,
    git,
    last_user_text,
    model_requests,
    uncommitted,
    wait_for,
)
from fakellm import FakeLLM
from hostile import SECRET, plant, secret_file

from agentd import state
from agentd.daemon.cronexpr import compile_expr
from agentd.daemon.crontrigger import cron_trigger
from agentd.home import Home

SILENT = {"text": "[SILENT]"}


def _job(home: Path, name: str, front: str, prompt: str) -> Path:
    path = home / "cron" / f"{name}.md"
    path.write_text(f"---\n{front}\n---\n{prompt}\n")
    return path


def _asked(fake: FakeLLM, words: str) -> bool:
    return any(words in last_user_text(r) for r in model_requests(fake))


@pytest.mark.parametrize("watch", ["auto", "poll"])
def test_user_adds_edits_and_deletes_a_job_while_it_runs(fake: FakeLLM, home: Path,
                                                         watch: str) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"enabled": False},
              daemon={"watch": watch})
    fake.push(*[SILENT] * 40)
    with Daemon(home) as d:
        d.ready()
        assert f"({'inotify' if watch == 'auto' else 'polling'})" in d.log
        t0 = time.monotonic()
        _job(home, "ping", "every: 0.5s", "Ping version one.")
        d.wait_log(r"cron: ping: scheduled \(every 0.5s\)", timeout=2)
        assert time.monotonic() - t0 < 2
        wait_for(lambda: _asked(fake, "Ping version one."), 10, "the first version's run")
        t0 = time.monotonic()
        _job(home, "ping", "every: 0.5s", "Ping version two.")
        d.wait_log(r"cron: ping: scheduled", n=2, timeout=2)
        assert time.monotonic() - t0 < 2
        wait_for(lambda: _asked(fake, "Ping version two."), 10, "the second version's run")
        (home / "cron" / "ping.md").unlink()
        d.wait_log(r"cron: ping: removed", timeout=2)
        after = len(d.log)
        _job(home, "pong", "every: 0.5s", "Pong.")
        d.wait_log(r"cron: pong: turn started", n=2)  # ping would have fired by now
        assert "ping: turn started" not in d.log[after:]
        assert d.stop() == 0
    assert uncommitted(home) == []


def test_agent_writes_a_job_during_a_turn(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    with (home / "memory/HEARTBEAT.md").open("a") as f:
        f.write("- Set up the weekly review job.\n  every: 1d\n")
    job = "---\nschedule: \"0 9 * * 0\"\n---\nWeekly review of memory/daily/.\n"
    fake.push({"tool_calls": [{"name": "write", "arguments": {"path": "cron/weekly.md",
                                                              "content": job}}]},
              {"text": "Scheduled the weekly review for Sundays 09:00."})
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"heartbeat: 1 item due")
        d.wait_log(r"cron: weekly: scheduled \(schedule 0 9 \* \* 0\)")
        d.wait_log(r"heartbeat: delivered")

        def next_run() -> str | None:
            status = json.loads(agentd("status", "--home", str(home), "--json").stdout)
            return {c["name"]: c.get("next") for c in status["cron"]}.get("weekly")

        nxt = wait_for(next_run, 5, "the status file to list the job")
        assert datetime.fromisoformat(nxt).strftime("%a %H:%M") == "Sun 09:00"
        d.stop()
    assert "cron/weekly.md" in git(home, "show", "--stat", "HEAD~1") + git(
        home, "show", "--stat", "HEAD")


def test_invalid_files_cost_one_error_line_each(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"enabled": False})
    _job(home, "good", "every: 1h", "Fine.")
    _job(home, "bad-yaml", "every: [1h", "x")
    _job(home, "bad-key", "every: 1h\ncolour: blue", "x")
    _job(home, "bad-cron", 'schedule: "0 9 * *"', "x")
    _job(home, "never", 'schedule: "0 0 31 4,6,9,11 *"', "x")
    _job(home, "last-day", 'schedule: "0 0 L * *"', "x")
    (home / "cron" / "binary.md").write_bytes(b"\x00\x01\xff\xfe")
    with Daemon(home) as d:
        d.ready()
        log = d.log
        assert "cron: good: scheduled" in log
        for name, why in (("bad-yaml", "not valid YAML"), ("bad-key", "unknown key colour"),
                          ("bad-cron", "needs 5 fields"), ("binary", "not a text file"),
                          ("never", "can never fire"), ("last-day", "has no 'last day'")):
            assert len([x for x in log.splitlines() if f"cron/{name}.md" in x]) == 1, log
            assert f"cron: error: cron/{name}.md:" in log and why in log
        _job(home, "late", "every: soon", "x")
        d.wait_log(r"cron: error: cron/late.md: every: 'soon' is not a duration")
        _job(home, "late", "every: 2h", "Now valid.")
        d.wait_log(r"cron: late: scheduled")

        def listing_with_late() -> str | None:
            out = agentd("cron", "--home", str(home)).stdout
            return out if "late: every 2h · next 20" in out else None

        listing = wait_for(listing_with_late, 5, "the listing")
        assert "bad-cron: invalid: schedule '0 9 * *' needs 5 fields" in listing
        assert ("never: invalid: schedule '0 0 31 4,6,9,11 *' can never fire: no month in it "
                "has that day") in listing
        assert "last-day: invalid: schedule '0 0 L * *': day-of-month 'L' is not cron" in listing
        assert "good: every 1h · next 20" in listing
        assert d.proc.poll() is None and d.stop() == 0
    assert model_requests(fake) == []


def test_missed_runs_catch_up_once_within_the_window(fake: FakeLLM, home: Path) -> None:
    configure(home, {"model": "openai:test"}, heartbeat={"enabled": False})
    _job(home, "hourly", 'schedule: "0 * * * *"', "Hourly check.")
    _job(home, "long-ago", f"at: {datetime.now() - timedelta(days=2):%Y-%m-%dT%H:%M}",
         "Too late.")
    state.write(Home(home).daemon / "cron.json", {
        "hourly": {"spec": "schedule 0 * * * *", "seen": time.time() - 3 * 3600}})
    fake.push(SILENT)
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"cron: hourly: missed its run at .*; catching up")
        d.wait_log(r"cron: warning: long-ago: missed its run at .*longer ago than catch_up "
                   r"\(6h\); skipped")
        d.wait_log(r"cron: hourly: \[SILENT\]")
        d.stop()
    assert len(model_requests(fake)) == 1 and _asked(fake, "Hourly check.")


def test_cron_run_now_in_the_foreground_with_a_continued_session(fake: FakeLLM,
                                                                  home: Path) -> None:
    configure(home, {"model": "openai:test"})
    _job(home, "journal", "every: 1d\nsession: continue", "Add a line to the journal.")
    fake.push({"text": "Entry one."}, {"text": "Entry two."})
    r1 = agentd("cron", "run", "journal", "--home", str(home), "-q")
    assert r1.exit_code == 0, r1.stderr
    assert r1.stdout.strip() == "Entry one."
    r2 = agentd("cron", "--home", str(home), "run", "journal", "-q")
    assert r2.exit_code == 0 and r2.stdout.strip() == "Entry two."
    second = model_requests(fake)[1].body["messages"]
    assert "Entry one." in json.dumps(second)  # the job's one transcript goes on
    outs = sorted((home / "outbox").glob("cron-journal-*.md"), key=lambda p: p.stat().st_mtime)
    assert [o.read_text() for o in outs] == ["Entry one.\n", "Entry two.\n"]
    listing = agentd("cron", "--home", str(home)).stdout
    assert "journal: every 1d" in listing and "ok: Entry two." in listing
    assert len(git(home, "log", "--format=%s", "--grep=^Cron: ").splitlines()) == 2
    # resumed or started is decided from the transcript: removed, the next run starts anew
    transcript = home / ".agentd/sessions/cron-journal.jsonl"
    assert [json.loads(x)["type"] for x in transcript.read_text().split("\n") if x].count(
        "session") == 1
    transcript.unlink()
    fake.push({"text": "Entry three."})
    assert agentd("cron", "run", "journal", "--home", str(home), "-q").exit_code == 0
    assert [m["role"] for m in model_requests(fake)[2].body["messages"]] == ["system", "user"]
    assert json.loads(transcript.read_text().split("\n")[0])["type"] == "session"
    missing = agentd("cron", "run", "nope", "--home", str(home))
    assert missing.exit_code == 2 and "no cron job 'nope'" in missing.stderr
    assert "journal" in missing.stderr
    assert uncommitted(home) == []


def test_planted_cron_and_heartbeat_files_are_refused_by_name(fake: FakeLLM, home: Path,
                                                             tmp_path: Path) -> None:
    """A cron file that is a symlink (to a valid job outside the home) or a FIFO, and a
    HEARTBEAT.md linked to /proc/self/environ: each costs one error naming it; nothing is
    read, nothing runs, and the daemon keeps ticking (a FIFO read would hang it)."""
    configure(home, {"model": "openai:test"}, heartbeat={"every": "0.3s"})
    outside = secret_file(tmp_path / "outside")
    outside.write_text(f"---\nevery: 0.5s\n---\n{SECRET}\n")
    plant(home / "cron/leak.md", "symlink", outside)
    plant(home / "cron/pipe.md", "fifo", outside)
    plant(home / "memory/HEARTBEAT.md", "environ", outside)
    with Daemon(home) as d:
        d.ready()
        d.wait_log(r"cron: error: cron/leak.md: it is a symlink, which agentd does not follow")
        d.wait_log(r"cron: error: cron/pipe.md: it is not a regular file")
        d.wait_log(r"heartbeat: error: memory/HEARTBEAT.md: not read: memory/HEARTBEAT.md is "
                   r"\(or goes through\) a symlink")
        d.wait_log(r"heartbeat: nothing due \(0 items\)", n=2)
        assert d.stop() == 0
    assert model_requests(fake) == [] and SECRET not in d.log


def _field(rng: random.Random, lo: int, hi: int, names: tuple[str, ...] = ()) -> str:
    """One random crontab field: *, */n, n (or its name), a-b, a-b/n or a list."""
    k, a = rng.random(), rng.randint(lo, hi - 1)
    b = rng.randint(a + 1, hi)  # croniter reads a degenerate range `3-3` as `*`: not cron
    if k < 0.25:
        return "*"
    if k < 0.4:
        return f"*/{rng.randint(2, max(2, (hi - lo) // 2))}"
    if k < 0.6:
        return names[a - lo] if names and rng.random() < 0.3 else str(a)
    if k < 0.75:
        return f"{a}-{b}"
    if k < 0.85:
        return f"{a}-{b}/{rng.randint(2, 3)}"
    return ",".join(sorted({str(rng.randint(lo, hi)) for _ in range(rng.randint(2, 4))},
                           key=int))


def _expressions(n: int) -> list[str]:
    rng = random.Random(12)
    months = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
              "dec")
    out = ["0 0 */2 * 1", "5,35 9 */10 */2 0-6", "0 9 13 * 5", "0 9 * * 0", "0 9 * * 7",
           "30 8 * * 0-2", "0 12 */3 * mon-fri", "0 0 1-7 * */2", "@weekly", "@monthly"]
    while len(out) < n:
        expr = " ".join([_field(rng, 0, 59), _field(rng, 0, 23), _field(rng, 1, 31),
                         _field(rng, 1, 12, months), _field(rng, 0, 6, ("sun", "mon", "tue",
                                                                        "wed", "thu", "fri",
                                                                        "sat"))])
        try:
            compile_expr(expr)
        except ValueError:
            continue  # can never fire (the 31st of a short month): tested below
        out.append(expr)
    return out


def test_fires_exactly_when_cronie_would() -> None:
    """212 schedules (the issue's, then generated), the next 50 fire times of each from
    two fixed starts, against croniter with cronie's day rule: a day field starting with
    `*` counts as unrestricted, so `0 0 */2 * 1` is odd-dated Mondays only."""
    from croniter import croniter

    exprs = _expressions(212)
    differ = []
    for i, expr in enumerate(exprs):
        start = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2027, 12, 31, 23, 59, tzinfo=UTC))[
            i % 2]
        theirs = croniter(expr, start, implement_cron_bug=True)
        trigger, ours, prev = cron_trigger(expr, UTC), [], None
        for _ in range(50):
            prev = trigger.get_next_fire_time(prev, (prev or start) + timedelta(microseconds=1))
            ours.append(prev)
        if ours != [theirs.get_next(datetime) for _ in range(50)]:
            differ.append(expr)
    assert differ == []
    first = cron_trigger("0 0 */2 * 1", UTC).get_next_fire_time(None, datetime(2026, 11, 1,
                                                                               tzinfo=UTC))
    assert first is not None and f"{first:%a %d}" == "Mon 09"  # not Mon 02, not Tue 03


@pytest.mark.parametrize(("expr", "why"), [
    ("0 0 30 2 *", "can never fire"), ("0 0 31 4,6,9,11 *", "can never fire"),
    ("0 0 30-31 feb *", "can never fire"), ("0 0 L * *", "has no 'last day'"),
    ("0 0 last * *", "has no 'last day'"), ("0 0 * * 5#2", "nth weekday"),
    ("0 0 15W * *", "day-of-month '15W' is not 1-31"), ("0 0 ? * *", "'?' is not 1-31"),
    ("5/10 * * * *", "cron steps a range or \\*, e.g. 5-59/10"),
    ("0 9 * * 5-1", "backwards"), ("0 9 * * */0", "step '0'"),
])
def test_schedules_cron_would_refuse_or_never_fire_are_refused(expr: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        compile_expr(expr)
    compile_expr("0 0 30 2 1")  # both day fields restricted: every Monday of February


BERLIN = ZoneInfo("Europe/Berlin")


def _fires(expr: str, start: datetime, n: int) -> list[str]:
    """What the scheduler sees: each fire time asked for just after the previous one,
    with the clock (`now`) injected."""
    trigger, prev, now, out = cron_trigger(expr, BERLIN), None, start, []
    for _ in range(n):
        prev = trigger.get_next_fire_time(prev, now)
        assert prev is not None
        out.append(prev.astimezone(BERLIN).strftime("%m-%d %H:%M %Z"))
        now = prev.astimezone(UTC) + timedelta(seconds=1)  # local + 1s would drop the fold
    return out


def test_daylight_saving_time_as_cronie_does() -> None:
    """Europe/Berlin skips 02:00-03:00 on 2026-03-29 and repeats 02:00-03:00 on 2026-10-25.
    A fixed-time job due in the gap runs once at 03:00; a `*` job goes on after the gap;
    in the repeated hour a fixed-time job runs once, a `*` job in both passes."""
    spring, autumn = datetime(2026, 3, 28, 12, tzinfo=BERLIN), datetime(2026, 10, 24, 12,
                                                                          tzinfo=BERLIN)
    assert _fires("30 2 * * *", spring, 3) == ["03-29 03:00 CEST", "03-30 02:30 CEST",
                                               "03-31 02:30 CEST"]
    assert _fires("15,45 2 * * *", spring, 3) == ["03-29 03:00 CEST", "03-30 02:15 CEST",
                                                  "03-30 02:45 CEST"]
    assert _fires("*/30 * * * *", spring.replace(day=29, hour=1, minute=10), 3) == [
        "03-29 01:30 CET", "03-29 03:00 CEST", "03-29 03:30 CEST"]
    assert _fires("30 2 * * *", autumn, 2) == ["10-25 02:30 CEST", "10-26 02:30 CET"]
    assert _fires("*/30 * * * *", autumn.replace(day=25, hour=1, minute=45), 5) == [
        "10-25 02:00 CEST", "10-25 02:30 CEST", "10-25 02:00 CET", "10-25 02:30 CET",
        "10-25 03:00 CET"]
    assert _fires("0 9 * * *", spring, 2) == ["03-29 09:00 CEST", "03-30 09:00 CEST"]
    # the scheduler asks "is it due?" with `now` in the zone: during the first pass, the
    # second pass's 02:00 is not due yet (compared by wall clock, it would be)
    second = cron_trigger("*/30 * * * *", BERLIN).get_next_fire_time(
        None, datetime(2026, 10, 25, 0, 31, tzinfo=UTC))
    first_pass = datetime(2026, 10, 25, 2, 45, tzinfo=BERLIN)
    assert second is not None and f"{second:%H:%M %Z}" == "02:00 CET" and second > first_pass
