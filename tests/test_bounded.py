"""Bounded model calls, end to end through `agentd run` against the fake LLM server.

Every request carries an output cap; a stream is bounded by an idle and a total time
limit; a reply cut at the cap is visible (the model is told once, then the turn ends
`truncated`, exit 1); usage a server does not report is estimated, marked, shown with "~"
and counted by the budget; a failed turn of an unpriced model costs "unknown"."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from conftest import agentd, json_out
from fakellm import ENDLESS_LIMIT, FakeLLM

from agentd.config import load_settings
from agentd.llm.base import Bounds
from agentd.llm.openai import OpenAIProvider
from agentd.llm.types import Sampling
from agentd.loop import CUT_NOTE, Events
from agentd.turn import TurnRequest, run_turn

CLAUDE, GPT, LOCAL = "anthropic:claude-sonnet-5-5", "openai:gpt-5.4", "local:small"
BOTH = pytest.mark.parametrize("model", [CLAUDE, GPT])
Serve = Callable[..., FakeLLM]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """A fake server with `quirks`, both SDKs pointed at it (as the `fake` fixture does)."""
    servers: list[FakeLLM] = []

    def start(*replies: dict, quirks: frozenset[str] = frozenset()) -> FakeLLM:
        server = FakeLLM(*replies, quirks=quirks)
        servers.append(server)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-KEYVALUE")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-KEYVALUE")
        return server

    yield start
    for server in servers:
        server.close()


def configure(home: Path, fake: FakeLLM, top: str = "", tables: str = "") -> None:
    """Top-level keys first, then the home's tables, then a keyless `local` server (the
    fake) and `tables`; no SDK retries, so a failure shows at once."""
    path = home / "agentd.toml"
    path.write_text(f"{top}\n{path.read_text()}\n[providers.local]\nbase_url = "
                    f'"{fake.openai_url}"\nmax_retries = 0\n{tables}\n')


def run(home: Path, workdir: Path, model: str, *extra: str, task: str = "hi") -> dict:
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", model,
               *extra, task)
    out = json_out(r)
    assert r.exit_code == out["exit_code"]
    return out


def posts(fake: FakeLLM) -> list[dict]:
    return [q.body for q in fake.requests if q.method == "POST"]


def cap_of(body: dict) -> int | None:
    return body.get("max_tokens") or body.get("max_completion_tokens")


def ledger(home: Path) -> list[dict]:
    return [json.loads(x) for x in (home / ".agentd/usage.jsonl").read_text().splitlines()]


# -- the output cap ----------------------------------------------------------------------


def test_every_request_carries_the_cap_per_model_on_both_protocols(
        serve: Serve, home: Path, workdir: Path) -> None:
    fake = serve({"text": "a"}, {"text": "b"}, {"text": "c"})
    configure(home, fake, tables='[calls]\nmax_tokens = 300\n[calls.models]\n'
                                 f'"local" = 120\n"{GPT}" = 200\n')
    for model in (CLAUDE, GPT, LOCAL):
        assert run(home, workdir, model)["status"] == "ok"
    claude, gpt, local = posts(fake)
    assert claude["max_tokens"] == 300
    # OpenAI-compatible servers (the fake stands in for one) want `max_tokens`
    assert (gpt["max_tokens"], "max_completion_tokens" in gpt) == (200, False)
    assert local["max_tokens"] == 120


def test_openais_own_api_gets_max_completion_tokens() -> None:
    """Its reasoning models refuse `max_tokens`; only the request's shape is checked (the
    client is never used to send)."""

    async def params(base_url: str | None, label: str) -> dict:
        p = OpenAIProvider("o5", api_key="sk-test-KEYVALUE", base_url=base_url, label=label,
                           bounds=Bounds(max_tokens=500))
        out: dict = {}
        p._bound(out, Sampling(max_tokens=100, temperature=0.2, stop=("END",)))
        return out

    own = asyncio.run(params("https://api.openai.com/v1", "openai"))
    assert own == {"max_completion_tokens": 100, "temperature": 0.2, "stop": ["END"]}
    assert asyncio.run(params("http://127.0.0.1:9/v1", "openai"))["max_tokens"] == 100


@BOTH
def test_a_clients_max_tokens_lowers_the_cap_and_never_raises_it(
        serve: Serve, home: Path, workdir: Path, model: str) -> None:
    fake = serve({"text": "a"}, {"text": "b"})
    configure(home, fake, tables="[calls]\nmax_tokens = 300\n")
    settings = load_settings(home)
    for asked in (50, 1_000_000):
        req = TurnRequest("hi", workdir, model=model,
                          sampling=Sampling(temperature=0.25, max_tokens=asked, stop=("END",)))
        assert asyncio.run(run_turn(home, settings, req, Events())).ok
    low, high = posts(fake)
    assert (cap_of(low), cap_of(high)) == (50, 300)
    if model == CLAUDE:  # the Messages API of current models takes no temperature
        assert (low["stop_sequences"], "temperature" in low) == (["END"], False)
    else:
        assert (low["stop"], low["temperature"]) == (["END"], 0.25)


# -- a reply cut at the cap ---------------------------------------------------------------


@BOTH
def test_an_endless_model_is_cut_by_the_cap_and_the_turn_ends_truncated(
        serve: Serve, home: Path, workdir: Path, model: str) -> None:
    fake = serve(quirks=frozenset({"endless"}))
    configure(home, fake, tables="[calls]\nmax_tokens = 64\n")
    out = run(home, workdir, model)
    assert (out["status"], out["exit_code"], out["steps"]) == ("truncated", 1, 2)
    assert "cut off at its output limit twice" in out["error"]
    assert "[calls] max_tokens" in out["error"]
    assert out["text"] == "blah" * 64  # what it wrote is still the answer shown
    first, second = posts(fake)
    assert [cap_of(first), cap_of(second)] == [64, 64] and fake.uncapped == []
    assert CUT_NOTE in json.dumps(second["messages"])  # the model was told, once
    session = Path(out["session"]).read_text()
    assert CUT_NOTE in session and '"status": "truncated"' in session
    day = "".join(p.read_text() for p in (home / "memory" / "daily").glob("*.md"))
    assert "truncated, 2 steps" in day


def test_a_cut_reply_gets_one_chance_to_finish(serve: Serve, home: Path,
                                               workdir: Path) -> None:
    """The calls of a cut reply are not run (the last may be incomplete) but answered;
    a reply that then finishes makes the turn a success."""
    fake = serve({"tool_calls": [{"name": "bash", "arguments": {"command": "touch cut"}}],
                  "finish": "length"}, {"text": "finished"})
    configure(home, fake)
    out = run(home, workdir, LOCAL)
    assert (out["status"], out["exit_code"], out["steps"], out["text"]) == ("ok", 0, 2,
                                                                         "finished")
    assert not (workdir / "cut").exists()
    assert [c["is_error"] for c in out["tool_calls"]] == [True]
    assert "not run: your reply was cut off" in json.dumps(posts(fake)[1]["messages"])


def test_the_fake_records_a_request_that_sent_no_cap(serve: Serve) -> None:
    """The fake's `endless` quirk stops at ENDLESS_LIMIT when nothing else does."""
    fake = serve(quirks=frozenset({"endless"}))
    client = openai.OpenAI(base_url=fake.openai_url, api_key="test", max_retries=0)
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert (r.choices[0].finish_reason, r.usage and r.usage.completion_tokens) == (
        "length", ENDLESS_LIMIT)
    assert fake.uncapped == [0]


def test_the_fake_sends_no_usage_in_a_stream_when_told(serve: Serve) -> None:
    fake = serve({"text": "hi"}, quirks=frozenset({"no-usage-in-stream"}))
    client = openai.OpenAI(base_url=fake.openai_url, api_key="test", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hi"
    assert [c.usage for c in chunks if c.usage] == []


# -- time limits ---------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("where", ["stall", "hold"])  # mid-stream, or before any byte
def test_a_stalled_stream_hits_the_idle_timeout(serve: Serve, home: Path, workdir: Path,
                                                model: str, where: str) -> None:
    gate = threading.Event()
    stalled = {"text": "hello world", where: gate}
    fake = serve(stalled, stalled)  # transient: retried once (the home's max_retries = 1)
    configure(home, fake, tables='[calls]\nidle_timeout = "0.5s"\n')
    try:
        started = time.monotonic()
        out = run(home, workdir, model)
        took = time.monotonic() - started
    finally:
        gate.set()
    assert (out["status"], out["exit_code"], out["steps"]) == ("error", 1, 0)
    assert "sent nothing for 0.5s" in out["error"] and "idle_timeout" in out["error"]
    assert len(posts(fake)) == 2 and fake.pending == 0
    assert took < 20  # not the SDK's 600 s


def test_a_stalled_model_falls_back_to_the_next(serve: Serve, home: Path,
                                                workdir: Path) -> None:
    """An idle timeout is transient: the chain moves on. (2 s: the fallback's answer must
    not time out while a loaded machine runs the SDK's first-call work.)"""
    gate = threading.Event()
    fake = serve({"text": "stalled", "stall": gate}, {"text": "from the fallback"})
    configure(home, fake, top=f'fallbacks = ["{GPT}"]',
              tables='[calls]\nidle_timeout = "2s"\n')
    try:
        out = run(home, workdir, LOCAL)
    finally:
        gate.set()
    assert (out["status"], out["text"], out["models"]) == ("ok", "from the fallback", [GPT])


def test_a_stream_that_keeps_sending_hits_the_call_timeout(serve: Serve, home: Path,
                                                           workdir: Path) -> None:
    fake = serve({"text": "word " * 200, "chunks": 100, "drip": 0.2})  # 20 s in all
    configure(home, fake, tables='[calls]\ncall_timeout = "1s"\n')
    started = time.monotonic()
    out = run(home, workdir, LOCAL)
    assert time.monotonic() - started < 15
    assert (out["status"], out["exit_code"]) == ("error", 1)
    assert "ran past its time limit of 1s" in out["error"]
    assert "call_timeout" in out["error"]


# -- honest usage ----------------------------------------------------------------------------


def test_usage_a_server_does_not_report_is_estimated_and_shown_as_such(
        serve: Serve, home: Path, workdir: Path) -> None:
    fake = serve({"text": "an answer of some length"}, {"text": "again"},
                 quirks=frozenset({"no-usage-in-stream"}))
    configure(home, fake)
    out = run(home, workdir, LOCAL)
    assert posts(fake)[0]["stream_options"] == {"include_usage": True}  # asked, not given
    (row,) = ledger(home)
    assert row["estimated"] is True and row["input"] > 500 and row["output"] == 6
    assert out["usage"]["estimated"] is True
    assert (out["usage"]["input"], out["usage"]["output"]) == (row["input"], 6)
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", LOCAL, "hi")
    assert r.exit_code == 0 and " in / ~2 out " in r.stdout and "tokens ~" in r.stdout
    assert "cost unknown" in r.stdout
    usage = agentd("usage", "--home", str(home), "--json")
    total = json_out(usage)["total"]
    assert (total["calls"], total["estimated_calls"]) == (2, 2)
    table = agentd("usage", "--home", str(home)).stdout
    assert f"~{total['input']:,}" in table


def test_the_budget_counts_estimated_tokens(serve: Serve, home: Path, workdir: Path) -> None:
    step = {"tool_calls": [{"name": "bash", "arguments": {"command": "echo step"}}]}
    fake = serve({"text": "measure"}, step, {"text": "never asked"},
                 quirks=frozenset({"no-usage-in-stream"}))
    configure(home, fake)
    run(home, workdir, LOCAL)
    first = ledger(home)[0]["input"]  # what one call of this home is estimated at
    with (home / "agentd.toml").open("a") as f:
        f.write(f"[budget]\nmax_tokens_per_turn = {first * 3 // 2}\n")
    out = run(home, workdir, LOCAL)
    assert (out["status"], out["exit_code"], out["steps"]) == ("budget", 1, 1)
    assert "over max_tokens_per_turn" in out["error"]
    assert len(posts(fake)) == 2 and fake.pending == 1
    assert [r.get("estimated") for r in ledger(home)] == [True, True]


def test_a_failed_turn_of_an_unpriced_model_costs_unknown_and_takes_no_step(
        serve: Serve, home: Path, workdir: Path) -> None:
    fake = serve({"error": 400, "message": "bad request"}, {"error": 400},
                 {"error": 400, "message": "bad request"})
    configure(home, fake)
    out = run(home, workdir, LOCAL)
    assert (out["status"], out["cost"], out["steps"]) == ("error", None, 0)
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", LOCAL, "hi")
    assert r.exit_code == 1
    assert "0 steps" in r.stdout and "cost unknown" in r.stdout and "$0.0000" not in r.stdout
    priced = run(home, workdir, CLAUDE)  # a priced model's failed turn did cost $0
    assert (priced["status"], priced["cost"]) == ("error", 0.0)


@pytest.mark.parametrize("table, error", [
    ("[calls]\nmax_tokens = 0\n", "calls.max_tokens must be at least 1"),
    ('[calls.models]\n"local" = "lots"\n', "calls.models.local must be a number"),
    ('[calls]\nidle_timeout = "soon"\n', "calls.idle_timeout: 'soon' is not a duration"),
    ("[calls]\nmax_token = 5\n", "unknown setting calls.max_token"),
])
def test_bad_bounds_are_one_line_errors(serve: Serve, home: Path, workdir: Path, table: str,
                                        error: str) -> None:
    fake = serve()
    configure(home, fake, tables=table)
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", LOCAL, "hi")
    assert r.exit_code == 2 and error in r.stderr and "Traceback" not in r.output
    assert posts(fake) == []
