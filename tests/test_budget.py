"""Hard budgets: checked before each call, reconciled with the ledger after it.

claude-sonnet-5-5 costs $2 / $10 per MTok (in / out). A first request of a fresh home is
about 1,000 tokens, so with the 1,000-token output reserve a call is estimated at about
$0.012 before it is made; scripted usage sets what it then really cost."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import agentd, json_out
from fakellm import FakeLLM

from agentd import budget
from agentd.budget import Budget, BudgetExceeded
from agentd.config import BudgetSettings, load_settings
from agentd.llm.types import Message
from agentd.loop import Events
from agentd.turn import TurnReport, TurnRequest, run_turn

MODEL = "anthropic:claude-sonnet-5-5"
STEP = {"tool_calls": [{"name": "bash", "arguments": {"command": "echo step"}}],
        "usage": {"input": 4000, "output": 200}}  # $0.008 + $0.002 = $0.010


def configure(home: Path, top: str = "", tables: str = "") -> None:
    path = home / "agentd.toml"
    path.write_text(f'model = "{MODEL}"\n{top}\n{path.read_text()}\n{tables}\n')


def spend(home: Path, usd: float, trigger: str = "cron:other", ts: float | None = None) -> None:
    with (home / ".agentd").joinpath("usage.jsonl").open("a") as f:
        f.write(json.dumps({"ts": ts or time.time(), "run": "earlier", "model": MODEL,
                            "trigger": trigger, "input": 1, "output": 1, "cache_read": 0,
                            "cache_write": 0, "cost": usd}) + "\n")


def ledger(home: Path) -> list[dict]:
    path = home / ".agentd" / "usage.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def turn(home: Path, workdir: Path, trigger: str) -> TurnReport:
    req = TurnRequest("do two steps", workdir, trigger=trigger)
    return asyncio.run(run_turn(home, load_settings(home), req, Events()))


def posts(fake: FakeLLM) -> list:
    return [q for q in fake.requests if q.method == "POST"]


def test_background_turn_stops_before_the_call_that_would_cross_the_cap(
        fake: FakeLLM, home: Path, workdir: Path) -> None:
    configure(home, tables="[budget]\ndaily_usd = 0.05\n")
    (home / ".agentd").mkdir(exist_ok=True)
    spend(home, 0.03)
    fake.push(STEP, {"text": "never sent"})
    report = turn(home, workdir, "cron:nightly")
    assert report.result.status == "budget" and report.result.steps == 1  # replies
    assert len(posts(fake)) == 1  # the second call was never made
    err = report.result.error or ""
    assert "daily budget of $0.05 reached" in err and "resets" in err and "(in " in err
    spent = sum(r["cost"] for r in ledger(home))
    assert spent == pytest.approx(0.04) and spent <= 0.05  # never over: one call short
    assert fake.pending == 1


def test_per_trigger_caps_count_only_their_trigger(fake: FakeLLM, home: Path,
                                                   workdir: Path) -> None:
    configure(home, tables="[budget]\n[budget.triggers]\ncron = 0.02\n")
    (home / ".agentd").mkdir(exist_ok=True)
    spend(home, 5.0, trigger="cli")  # an interactive spree does not starve cron …
    spend(home, 1.0, trigger="cron:x", ts=time.time() - 86400 * 2)  # … nor does last week
    fake.push(STEP, {"text": "never sent"})
    report = turn(home, workdir, "cron:nightly")
    assert report.result.status == "budget" and "daily cron budget of $0.02" in (
        report.result.error or "")
    assert len(posts(fake)) == 1


def test_interactive_turn_moves_to_the_budget_fallback(fake: FakeLLM, home: Path,
                                                       workdir: Path) -> None:
    configure(home, 'budget_fallback = "ollama:qwen3:8b"',
              f'[budget]\ndaily_usd = 0.05\n[providers.ollama]\nbase_url = "{fake.openai_url}"\n')
    (home / ".agentd").mkdir(exist_ok=True)
    spend(home, 0.03)
    fake.push(STEP, {"text": "answered locally"})
    report = turn(home, workdir, "chat:s1")
    assert report.ok and report.result.text == "answered locally"
    assert report.models == [MODEL, "ollama:qwen3:8b"]
    assert [q.path for q in posts(fake)] == ["/v1/messages", "/v1/chat/completions"]
    assert posts(fake)[1].body["model"] == "qwen3:8b"
    assert [r["cost"] for r in ledger(home)][-1] == 0.0  # the local model is free


def test_interactive_turn_without_a_fallback_stops_saying_what_to_do(
        fake: FakeLLM, home: Path, workdir: Path) -> None:
    configure(home, tables="[budget]\nmonthly_usd = 0.05\n")
    (home / ".agentd").mkdir(exist_ok=True)
    spend(home, 0.045)
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "hi")
    out = json_out(r)
    assert (r.exit_code, out["status"]) == (1, "budget")
    assert "monthly budget of $0.05 reached" in out["error"]
    assert "budget_fallback" in out["error"] and "monthly_usd" in out["error"]
    assert posts(fake) == []


def test_background_turns_never_use_the_budget_fallback(fake: FakeLLM, home: Path,
                                                        workdir: Path) -> None:
    configure(home, 'budget_fallback = "ollama:qwen3:8b"', "[budget]\ndaily_usd = 0.01\n")
    (home / ".agentd").mkdir(exist_ok=True)
    spend(home, 0.01)
    report = turn(home, workdir, "heartbeat")
    assert report.result.status == "budget" and posts(fake) == []


def test_max_tokens_per_turn_stops_any_turn(fake: FakeLLM, home: Path, workdir: Path) -> None:
    configure(home, 'budget_fallback = "ollama:qwen3:8b"',
              "[budget]\nmax_tokens_per_turn = 3000\n")
    fake.push({**STEP, "usage": {"input": 2500, "output": 100}}, {"text": "never sent"})
    report = turn(home, workdir, "cli")  # interactive, with a fallback: still stops
    assert report.result.status == "budget" and len(posts(fake)) == 1
    assert "max_tokens_per_turn = 3,000" in (report.result.error or "")


@pytest.mark.parametrize("model", ["openai:x", "ollama:qwen3:8b"])
def test_unpriced_and_free_models_are_not_held_to_money_caps(
        fake: FakeLLM, home: Path, workdir: Path, model: str) -> None:
    configure(home, tables=f'[budget]\ndaily_usd = 0.0\n[providers.ollama]\n'
                           f'base_url = "{fake.openai_url}"\n')
    fake.push({"text": "ok"})
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", model, "hi")
    assert json_out(r)["status"] == "ok"


def _check(b: Budget) -> None:
    b.check(MODEL, "s" * 4000, [Message("user", "hi")], [])  # ~1,000 tokens: ~$0.012


def test_reset_times_and_hostile_ledger_lines(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    now = 1_795_381_200.0  # 2026-11-22 21:00 UTC
    monkeypatch.setattr(budget, "now", lambda: now)
    path = tmp_path / "usage.jsonl"
    good = {"ts": now - 60, "run": "r", "model": MODEL, "trigger": "cli", "input": 1,
            "output": 1, "cache_read": 0, "cache_write": 0, "cost": 0.99}
    path.write_text("\n".join([
        "not json", "[]", json.dumps({**good, "cost": "lots"}), json.dumps({**good, "ts": None}),
        json.dumps({**good, "input": -5}), json.dumps({**good, "cost": float("inf")})
        .replace("Infinity", "1e999"), json.dumps(good), '{"torn": '[:-1]]))
    b = Budget(BudgetSettings(daily_usd=1.0), path, "cli", {})
    with pytest.raises(BudgetExceeded) as e:
        _check(b)
    assert "$0.99 spent" in str(e.value) and "2026-11-23 00:00 (in 3 h 0 min)" in str(e.value)
    b = Budget(BudgetSettings(monthly_usd=1.0), path, "cli", {})
    with pytest.raises(BudgetExceeded) as e:
        _check(b)
    assert "2026-12-01 00:00 (in 8 days)" in str(e.value)
    # the same spend yesterday does not count today
    path.write_text(json.dumps({**good, "ts": now - 86400}) + "\n")
    _check(Budget(BudgetSettings(daily_usd=1.0), path, "cli", {}))
    time.tzset()


def test_a_call_is_refused_only_when_it_would_cross(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    b = Budget(BudgetSettings(daily_usd=0.02), path, "cli", {})
    _check(b)  # nothing spent: $0.012 fits
    spend_row = {"ts": time.time(), "model": MODEL, "input": 1, "output": 1, "cost": 0.007}
    path.write_text(json.dumps(spend_row) + "\n")
    _check(b)  # $0.007 + $0.012 = $0.019 still fits
    with path.open("a") as f:  # the ledger is re-read: another process spent too
        f.write(json.dumps(spend_row) + "\n")
    with pytest.raises(BudgetExceeded):
        _check(b)


def test_the_readme_worked_example_is_valid() -> None:
    import tomllib

    from agentd.config import parse_settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Keeping costs down", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    s = parse_settings(tomllib.loads(example))
    assert s.fallbacks == ["openai:gpt-5.4-mini", "ollama:qwen3:8b"]
    assert s.budget.daily_usd == 5.0 and s.budget.triggers == {"heartbeat": 0.5, "cron": 1.0}
    assert s.budget_fallback == "ollama:qwen3:8b" and s.providers["ollama"].base_url


def test_a_long_ledger_is_read_from_this_month_on(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from agentd.usage import offset_since

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    now = 1_795_381_200.0  # 2026-11-22 21:00 UTC; the month began 21.875 days earlier
    monkeypatch.setattr(budget, "now", lambda: now)
    path = tmp_path / "usage.jsonl"
    rows = [json.dumps({"ts": now - i * 600, "model": MODEL, "cost": 0.01})
            for i in range(90 * 144, -1, -1)]  # 90 days, one call per 10 minutes
    rows.insert(len(rows) // 2, "garbage in the middle")
    path.write_text("\n".join(rows) + "\n")
    month = budget.periods(now)[2].timestamp()
    offset = offset_since(path, month)
    assert path.stat().st_size * 0.6 < offset  # most of the file is skipped …
    head = path.read_bytes()[:offset].decode().splitlines()
    assert all(json.loads(x)["ts"] < month for x in head if x.startswith("{"))  # … only old
    _, in_month, _ = Budget(BudgetSettings(monthly_usd=99), path, "cli", {}).spent()
    expected = sum(0.01 for i in range(90 * 144 + 1) if now - i * 600 >= month)
    assert in_month == pytest.approx(expected)
    time.tzset()
