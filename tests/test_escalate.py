"""Local first, frontier when needed (agentd/escalate.py), through `agentd run`.

The "local" model is an OpenAI-compatible `[providers.local]` on the fake server; the
frontier model speaks the Anthropic protocol to the same fake, so the request path says
which model each call went to. A per-trigger model (`[models]`) is chosen the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import agentd, json_out
from fakellm import FakeLLM

from agentd.escalate import chain_for

LOCAL, FRONTIER, THIRD = "local:tiny", "anthropic:claude-haiku-4-5", "openai:gpt-5.4-mini"
BASH = {"tool_calls": [{"name": "bash", "arguments": {"command": "echo local-did-this"}}]}


def configure(home: Path, fake: FakeLLM, top: str, tables: str = "") -> None:
    path = home / "agentd.toml"
    path.write_text(top + "\n" + path.read_text() + "\n" + tables +
                    f'\n[providers.local]\nprotocol = "openai"\nbase_url = "{fake.openai_url}"\n')


def paths(fake: FakeLLM) -> list[str]:
    return ["anthropic" if q.path == "/v1/messages" else "openai"
            for q in fake.requests if q.method == "POST"]


def run(home: Path, workdir: Path, *args: str) -> dict:
    return json_out(agentd("run", "--json", "--home", str(home), "-C", str(workdir), *args,
                           "do the thing"))


def test_the_frontier_model_finishes_what_the_local_one_could_not(
        fake: FakeLLM, home: Path, workdir: Path) -> None:
    configure(home, fake, f'model = "{LOCAL}"\nmax_steps = 2\nescalate_to = ["{FRONTIER}"]\n')
    fake.push(BASH, BASH, {"text": "finished by the frontier model"})
    out = run(home, workdir)
    assert out["status"] == "ok" and out["exit_code"] == 0, out
    assert out["text"] == "finished by the frontier model"
    assert paths(fake) == ["openai", "openai", "anthropic"]
    assert out["models"] == [LOCAL, FRONTIER] and out["steps"] == 3
    assert out["escalated"] == [f"{LOCAL} → {FRONTIER} (max_steps)"]
    # the frontier model got the whole conversation: the local tool calls, their real
    # results, and one line saying why it takes over
    msgs = fake.requests[-1].body["messages"]
    results = [b for m in msgs if m["role"] == "user" for b in m["content"]
               if isinstance(b, dict) and b.get("type") == "tool_result"]
    assert len(results) == 2 and "local-did-this" in str(results[0]["content"])
    handover = msgs[-1]["content"]
    handover = handover if isinstance(handover, str) else handover[-1]["text"]
    assert f"previous model ({LOCAL})" in handover and "max_steps" in handover
    # the day log says so, and the one commit names both models
    daily = next((home / "memory" / "daily").glob("*.md")).read_text()
    assert f"escalated {LOCAL} → {FRONTIER} (max_steps)" in daily


def test_an_empty_local_reply_escalates(fake: FakeLLM, home: Path, workdir: Path) -> None:
    configure(home, fake, f'model = "{LOCAL}"\nescalate_to = ["{FRONTIER}"]\n')
    fake.push({"empty": True}, {"text": "here it is"})
    out = run(home, workdir)
    assert out["status"] == "ok" and out["text"] == "here it is", out
    assert out["escalated"] == [f"{LOCAL} → {FRONTIER} (empty)"]


def test_unreadable_tool_calls_three_times_escalate(fake: FakeLLM, home: Path,
                                                    workdir: Path) -> None:
    configure(home, fake, f'model = "{LOCAL}"\nescalate_to = ["{FRONTIER}"]\n')
    garbled = {"tool_calls": [{"name": "bash", "arguments": "{command: echo hi"}]}
    fake.push(garbled, garbled, garbled, {"text": "done properly"})
    out = run(home, workdir)
    assert out["status"] == "ok" and out["text"] == "done properly", out
    assert paths(fake) == ["openai"] * 3 + ["anthropic"]
    assert out["escalated"] == [f"{LOCAL} → {FRONTIER} (malformed)"]


def test_unreadable_tool_calls_three_times_end_the_turn(fake: FakeLLM, home: Path,
                                                        workdir: Path) -> None:
    configure(home, fake, f'model = "{LOCAL}"\n')
    garbled = {"tool_calls": [{"name": "bash", "arguments": "{command: echo hi"}]}
    fake.push(garbled, garbled, garbled)
    out = run(home, workdir)
    assert out["status"] == "malformed" and out["exit_code"] == 1
    assert "3 replies in a row whose tool calls could not be read" in out["error"]


def test_a_local_server_that_is_down_escalates(fake: FakeLLM, home: Path, workdir: Path) -> None:
    configure(home, fake, f'model = "{LOCAL}"\nescalate_to = ["{FRONTIER}"]\n')
    fake.push({"error": 400, "message": "bad shape"}, {"text": "done anyway"})
    out = run(home, workdir)
    assert out["status"] == "ok" and out["text"] == "done anyway", out
    assert paths(fake) == ["openai", "anthropic"]
    assert out["escalated"][0].endswith("(error)")


def test_a_good_local_turn_never_touches_the_frontier(fake: FakeLLM, home: Path,
                                                      workdir: Path) -> None:
    configure(home, fake, f'model = "{LOCAL}"\nescalate_to = ["{FRONTIER}"]\n')
    fake.push({"text": "easy"})
    out = run(home, workdir)
    assert out["status"] == "ok" and out["escalated"] == [] and paths(fake) == ["openai"]


def test_the_budget_holds_across_models(fake: FakeLLM, home: Path, workdir: Path) -> None:
    """The money cap counts the whole turn: the frontier model's call would cost past it
    (its price is known), so it is refused before it is made, and the budget is not a
    reason to escalate further."""
    configure(home, fake,
              f'model = "{LOCAL}"\nmax_steps = 1\nescalate_to = ["{FRONTIER}", "{THIRD}"]\n',
              '[budget]\ndaily_usd = 0.0001\n'
              '[prices."claude-haiku-4-5"]\ninput = 1000.0\noutput = 1000.0\n')
    fake.push(BASH, {"text": "never"})
    out = run(home, workdir)
    assert out["status"] == "budget" and out["exit_code"] != 0, out
    assert paths(fake) == ["openai"]  # neither the frontier nor the third model was called
    assert out["escalated"] == [f"{LOCAL} → {FRONTIER} (max_steps)"]
    assert "daily" in out["error"] and fake.pending == 1


def test_a_model_per_trigger_kind(fake: FakeLLM, home: Path, workdir: Path) -> None:
    configure(home, fake, f'model = "{FRONTIER}"\n', f'[models]\ncli = "{LOCAL}"\n')
    fake.push({"text": "local answer"})
    out = run(home, workdir)
    assert out["model"] == LOCAL and paths(fake) == ["openai"]
    fake.push({"text": "frontier answer"})  # --model still wins over [models]
    assert run(home, workdir, "-m", FRONTIER)["model"] == FRONTIER


@pytest.mark.parametrize(("table", "message"), [
    ('[models]\nsometimes = "local:tiny"\n', "models.sometimes: not a trigger kind"),
    ('[models]\ncron = "tiny"\n', "models.cron = 'tiny' is not PROVIDER:MODEL"),
    ('escalate_to = "anthropic:x"\n', "escalate_to"),
])
def test_bad_model_settings_are_one_line_errors(fake: FakeLLM, home: Path, workdir: Path,
                                                table: str, message: str) -> None:
    top, tables = (table, "") if table.startswith("escalate_to") else ("", table)
    configure(home, fake, top, tables)
    r = agentd("run", "--home", str(home), "-C", str(workdir), "hi")
    assert r.exit_code != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not fake.requests


def test_the_chain_starts_after_the_model_in_use() -> None:
    assert chain_for("a:x", ["b:y", "c:z"]) == ["a:x", "b:y", "c:z"]
    assert chain_for("b:y", ["b:y", "c:z"]) == ["b:y", "c:z"]
    assert chain_for("c:z", ["b:y", "c:z"]) == ["c:z"]
    assert chain_for("a:x", ["b:y", "b:y", "c:z"]) == ["a:x", "b:y", "c:z"]


def test_usage_and_the_day_log_show_what_stayed_local(fake: FakeLLM, home: Path,
                                                      workdir: Path) -> None:
    """Haiku 4.5 lists at $1 / $5 per MTok: 100,000 in and 20,000 out would have cost
    $0.10 + $0.10 on it; the local model did it for no API money."""
    configure(home, fake, f'model = "{LOCAL}"\nescalate_to = ["{FRONTIER}"]\n')
    fake.push({"text": "done locally", "usage": {"input": 100_000, "output": 20_000}})
    assert run(home, workdir)["status"] == "ok"
    fake.push(BASH, {"text": "frontier", "usage": {"input": 10, "output": 10}})
    assert run(home, workdir, "-m", FRONTIER)["models"] == [FRONTIER]
    daily = next((home / "memory" / "daily").glob("*.md")).read_text()
    assert f"local, saved $0.2000 at {FRONTIER} prices" in daily
    out = json_out(agentd("usage", "--json", "--home", str(home)))
    assert out["local"]["local_runs"] == 1 and out["local"]["runs"] == 2
    assert out["local"]["local_tokens"] == 120_000 and out["local"]["saved_usd"] == 0.2
    table = agentd("usage", "--home", str(home)).stdout
    assert f"stayed local: 1 of 2 runs, 120,000 tokens; saved $0.2000 at {FRONTIER}" in table


def test_a_cloud_endpoint_is_not_local(fake: FakeLLM, home: Path) -> None:
    from agentd.config import load_settings
    from agentd.savings import is_local

    configure(home, fake, "", '[providers.lab]\nbase_url = "https://llm.example.com/v1"\n'
                              '[providers.lan]\nbase_url = "http://192.168.1.20:8080/v1"\n')
    s = load_settings(home)
    assert is_local(LOCAL, s) and is_local("ollama:qwen3", s) and is_local("lan:m", s)
    assert not is_local("lab:m", s) and not is_local(FRONTIER, s)
    assert not is_local("nosuch:m", s)
