"""`agentd status` shows today's spend against each configured budget."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import agentd


def test_status_shows_spend_against_budget(home: Path) -> None:
    cfg = home / "agentd.toml"
    cfg.write_text(cfg.read_text() + "\n[budget]\ndaily_usd = 2.0\n")
    ledger = home / ".agentd/usage.jsonl"
    ledger.parent.mkdir(exist_ok=True)
    row = {"ts": time.time(), "run": "r", "model": "openai:gpt-5.4", "trigger": "cron:x",
           "input": 10, "output": 5, "cache_read": 0, "cache_write": 0, "cost": 0.75}
    ledger.write_text(json.dumps(row) + "\n" + json.dumps({**row, "cost": 1.5}) + "\n")
    r = agentd("status", "--home", str(home))
    assert "budget daily: $2.25 of $2.00 (reached: background turns paused)" in r.stdout
    assert r.exit_code == 3  # the daemon is not running
