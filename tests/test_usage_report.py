"""`agentd usage`: numbers against a known ledger, hostile lines skipped and counted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import agentd, json_out

from agentd.config import parse_settings
from agentd.usage_report import bar, report

NOW = 1_795_381_200.0  # 2026-11-22 21:00 UTC
DAY = 86400.0
SONNET, MINI, LOCAL, ODD = ("anthropic:claude-sonnet-5-5", "openai:gpt-5.4-mini",
                            "ollama:qwen3:8b", "lmstudio:qwen")


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def row(ts: float, model: str, trigger: str, cost: float | None, **tokens: int) -> str:
    counts = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0, **tokens}
    return json.dumps({"ts": ts, "run": "r", "model": model, "trigger": trigger, **counts,
                       "cost": cost})


LEDGER = [
    row(NOW - 60, SONNET, "cli", 0.50, input=1000, output=100, cache_read=8000,
        cache_write=1000),
    row(NOW - 120, SONNET, "chat:abc", 0.25, input=500, output=50, cache_read=4000),
    row(NOW - DAY, MINI, "heartbeat", 0.10, input=2000, output=10),
    row(NOW - DAY - 5, LOCAL, "cron:nightly", 0.0, input=3000, output=300),
    row(NOW - 2 * DAY, ODD, "webhook:gh", None, input=700, output=70),
    row(NOW - 30 * DAY, SONNET, "cli", 9.99, input=1),  # outside --days 7
    # hostile lines: each skipped and counted, none fatal
    "not json", "[1, 2, 3]", "null", '"a string"', json.dumps({"ts": "yesterday"}),
    json.dumps({"ts": NOW, "model": SONNET, "input": "many"}),
    json.dumps({"ts": NOW, "model": SONNET, "input": True}),
    json.dumps({"ts": NOW, "model": SONNET, "cost": -1}),
    json.dumps({"ts": NOW, "model": 42}), "{" * 100_000,
]


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "usage.jsonl"
    path.write_text("\n".join(LEDGER) + "\n\n")
    return path


def test_numbers_by_model(ledger: Path) -> None:
    settings = parse_settings({"budget": {"daily_usd": 0.5, "monthly_usd": 100,
                                          "triggers": {"heartbeat": 1}}})
    r = report(ledger, settings, 7, "model", now=NOW)
    assert r["skipped_lines"] == 10 and r["since"] == "2026-11-16"
    groups = {g["model"]: g for g in r["groups"]}
    assert r["groups"][0]["model"] == SONNET  # most expensive first
    assert groups[SONNET] == {"model": SONNET, "calls": 2, "input": 1500, "cache_write": 1000,
                              "cached": 12000, "output": 150, "cache_hit": 0.8276,
                              "cost": 0.75, "unknown_cost_calls": 0, "estimated_calls": 0}
    assert groups[ODD]["cost"] == 0 and groups[ODD]["unknown_cost_calls"] == 1
    t = r["total"]
    assert (t["calls"], t["input"], t["cached"], t["output"]) == (5, 7200, 12000, 530)
    assert t["cost"] == 0.85 and t["unknown_cost_calls"] == 1
    assert r["per_trigger"] == {
        "chat": {"calls": 1, "cost": 0.25, "unknown_cost_calls": 0},
        "cli": {"calls": 1, "cost": 0.5, "unknown_cost_calls": 0},
        "cron": {"calls": 1, "cost": 0.0, "unknown_cost_calls": 0},
        "heartbeat": {"calls": 1, "cost": 0.1, "unknown_cost_calls": 0},
        "webhook": {"calls": 1, "cost": 0, "unknown_cost_calls": 1}}
    days = {d["day"]: d["cost"] for d in r["per_day"]}
    assert list(days) == [f"2026-11-{n}" for n in range(16, 23)]
    assert (days["2026-11-22"], days["2026-11-21"], days["2026-11-20"]) == (0.75, 0.1, 0)
    assert r["budget"] == [
        {"budget": "daily", "cap": 0.5, "spent": 0.75, "reached": True},
        {"budget": "monthly", "cap": 100.0, "spent": 0.85, "reached": False},
        {"budget": "daily heartbeat", "cap": 1.0, "spent": 0, "reached": False}]


def test_by_trigger_and_day(ledger: Path) -> None:
    settings = parse_settings({})
    by_trigger = report(ledger, settings, 7, "trigger", now=NOW)["groups"]
    assert {g["trigger"]: g["calls"] for g in by_trigger} == {
        "cli": 1, "chat": 1, "heartbeat": 1, "cron": 1, "webhook": 1}
    by_day = report(ledger, settings, 31, "day", now=NOW)["groups"]
    assert [g["day"] for g in by_day] == ["2026-10-23", "2026-11-20", "2026-11-21",
                                          "2026-11-22"]
    assert by_day[0]["cost"] == 9.99


def test_an_empty_or_missing_ledger(tmp_path: Path) -> None:
    r = report(tmp_path / "none.jsonl", parse_settings({}), 3, "model", now=NOW)
    assert r["groups"] == [] and r["total"]["calls"] == 0 and r["total"]["cache_hit"] is None
    assert [d["cost"] for d in r["per_day"]] == [0, 0, 0]


def test_bars() -> None:
    assert bar(1, 1, 10) == "█" * 10 and bar(0, 1) == "" and bar(0, 0) == ""
    assert bar(0.5, 1, 3) == "█▌"


def test_the_command(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    now = time.time()
    lines = [row(now - 30, SONNET, "cli", 1.25, input=10, output=5, cache_read=30),
             row(now - DAY, LOCAL, "heartbeat", 0.0, input=7), "garbage"]
    (home / ".agentd").mkdir(exist_ok=True)
    (home / ".agentd/usage.jsonl").write_text("\n".join(lines) + "\n")
    out = json_out(agentd("usage", "--home", str(home), "--json", "--by", "trigger"))
    assert out["total"]["cost"] == 1.25 and out["skipped_lines"] == 1
    r = agentd("usage", "--home", str(home), "--days", "3")
    assert r.exit_code == 0
    assert SONNET in r.stdout and "$1.25" in r.stdout and "█" * 40 in r.stdout
    assert "per trigger: cli $1.25 · heartbeat $0.00" in r.stdout
    assert "skipped 1 malformed ledger line" in r.stdout
    assert agentd("usage", "--home", str(home), "--by", "week").exit_code == 2


def test_budget_today_for_agentd_status(ledger: Path) -> None:
    from agentd.usage_report import budget_today

    settings = parse_settings({"budget": {"daily_usd": 2.0}})
    assert budget_today(ledger, settings, now=NOW) == [
        {"budget": "daily", "cap": 2.0, "spent": 0.75, "reached": False}]
    assert budget_today(ledger, parse_settings({}), now=NOW) == []


def test_estimated_rows_are_counted_and_marked(tmp_path: Path) -> None:
    """Only `"estimated": true` marks a row (the ledger is anyone's to write: any other
    value is no mark); the table shows the group's counts and cost with "~"."""
    path = tmp_path / "usage.jsonl"
    est = json.loads(row(NOW - 60, LOCAL, "cli", 0.0, input=1200, output=30))
    forged = json.loads(row(NOW - 90, LOCAL, "cli", 0.0, input=1, output=1))
    path.write_text(json.dumps(est | {"estimated": True}) + "\n"
                    + json.dumps(forged | {"estimated": "yes"}) + "\n")
    r = report(path, parse_settings({}), 1, "model", now=NOW)
    assert (r["total"]["calls"], r["total"]["estimated_calls"]) == (2, 1)
    from rich.console import Console

    from agentd.usage_report import render

    console = Console(width=200, record=True)
    console.print(render(r))
    text = console.export_text()
    assert "~1,201" in text and "~31" in text and "~$0.00" in text
