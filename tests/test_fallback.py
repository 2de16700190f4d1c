"""Fallback chains on throttling, with a circuit breaker shared through `.agentd/`.

The real SDKs talk to the fake server on both protocols: the primary is Anthropic, the
fallback OpenAI, so the request path says which model a call went to. The clock and the
retry waits are injected (agentd.llm.fallback.now / .sleep)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import agentd, json_out
from fakellm import FakeLLM

from agentd.llm import fallback
from agentd.llm.fallback import Breaker
from agentd.llm.types import Message, ProviderError

PRIMARY, SECOND = "anthropic:claude-haiku-4-5", "openai:gpt-5.4-mini"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(fallback, "now", c)
    monkeypatch.setattr(fallback, "sleep", c.sleep)
    return c


def configure(home: Path, top: str = "", tables: str = "") -> None:
    """Top-level keys go before the first table of agentd.toml, tables after it."""
    path = home / "agentd.toml"
    path.write_text(top + "\n" + path.read_text() + "\n" + tables + "\n")


def chain_home(home: Path, cooldown: str = "5m") -> None:
    configure(home, f'model = "{PRIMARY}"\nfallbacks = ["{SECOND}"]\n',
              f'[throttling]\ncooldown = "{cooldown}"\n')


def run(home: Path, workdir: Path, task: str = "hi") -> dict:
    return json_out(agentd("run", "--json", "--home", str(home), "-C", str(workdir), task))


def paths(fake: FakeLLM) -> list[str]:
    return ["anthropic" if q.path == "/v1/messages" else "openai"
            for q in fake.requests if q.method == "POST"]


def cooldowns(home: Path) -> dict:
    path = home / ".agentd" / "cooldowns.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_429_then_success_retries_the_same_model(fake: FakeLLM, home: Path, workdir: Path,
                                                clock: Clock) -> None:
    chain_home(home)
    fake.push({"error": 429, "headers": {"retry-after": "2"}}, {"text": "made it"})
    out = run(home, workdir)
    assert (out["status"], out["text"], out["models"]) == ("ok", "made it", [PRIMARY])
    assert paths(fake) == ["anthropic", "anthropic"]
    assert clock.slept == [2.0]  # Retry-After honoured, by us rather than the SDK
    assert cooldowns(home) == {}


def test_529_storm_falls_back_then_returns_after_the_cooldown(
        fake: FakeLLM, home: Path, workdir: Path, clock: Clock) -> None:
    chain_home(home)
    # turn 1: max_retries = 1 in the test home, so two 529s, then the fallback answers
    fake.push({"error": 529, "message": "Overloaded"}, {"error": 529, "message": "Overloaded"},
              {"text": "from the fallback"})
    one = run(home, workdir)
    assert (one["status"], one["text"], one["models"]) == ("ok", "from the fallback",
                                                          [SECOND])
    assert paths(fake) == ["anthropic", "anthropic", "openai"]
    assert len(clock.slept) == 1 and clock.slept[0] <= 0.5  # backoff, no Retry-After
    entry = cooldowns(home)[PRIMARY]
    assert entry["until"] == T0 + 300 and entry["status"] == 529
    # the ledger and the transcript say which model served
    ledger = [json.loads(x) for x in (home / ".agentd/usage.jsonl").read_text().splitlines()]
    assert [r["model"] for r in ledger] == [SECOND]
    rows = [json.loads(x) for x in Path(one["session"]).read_text().splitlines()]
    assert [r.get("model") for r in rows if r.get("role") == "assistant"] == [SECOND]

    # turn 2, a minute later (a new provider object, as another process would build):
    # the primary is skipped without a request
    clock.t = T0 + 60
    fake.push({"text": "still the fallback"})
    assert run(home, workdir)["models"] == [SECOND]
    assert paths(fake)[3:] == ["openai"]

    # turn 3, after the cool-down: back to the primary, and the entry is gone
    clock.t = T0 + 301
    fake.push({"text": "primary again"})
    three = run(home, workdir)
    assert (three["models"], paths(fake)[4:]) == ([PRIMARY], ["anthropic"])
    assert cooldowns(home) == {}


def test_a_turn_switches_models_between_steps(fake: FakeLLM, home: Path, workdir: Path,
                                              clock: Clock) -> None:
    chain_home(home)
    fake.push({"tool_calls": [{"name": "bash", "arguments": {"command": "echo one"}}]},
              {"error": 529}, {"error": 529},
              {"text": "finished on the fallback"})
    r = agentd("run", "--home", str(home), "-C", str(workdir), "two steps")
    assert r.exit_code == 0, r.stderr
    assert paths(fake) == ["anthropic", "anthropic", "anthropic", "openai"]
    assert f"{PRIMARY}, {SECOND} · 2 steps" in r.stdout  # the summary line names both
    # the fallback got the whole conversation, tool call and result paired
    msgs = [q for q in fake.requests if q.method == "POST"][-1].body["messages"]
    call = next(m for m in msgs if m.get("tool_calls"))["tool_calls"][0]
    result = next(m for m in msgs if m["role"] == "tool")
    assert result["tool_call_id"] == call["id"] and "one" in result["content"]


def test_a_long_retry_after_is_not_waited_for(fake: FakeLLM, home: Path, workdir: Path,
                                               clock: Clock) -> None:
    chain_home(home)
    fake.push({"error": 429, "headers": {"retry-after": "900"}}, {"text": "fallback"})
    out = run(home, workdir)
    assert out["models"] == [SECOND] and clock.slept == []
    assert paths(fake) == ["anthropic", "openai"]
    assert cooldowns(home)[PRIMARY]["until"] == T0 + 900  # longer than the 5m default


@pytest.mark.parametrize(("status", "words"), [(401, "ANTHROPIC_API_KEY"),
                                               (403, "ANTHROPIC_API_KEY"),
                                               (400, "400"), (404, "not found")])
def test_auth_and_request_errors_do_not_fall_back(fake: FakeLLM, home: Path, workdir: Path,
                                                  clock: Clock, status: int, words: str) -> None:
    chain_home(home)
    fake.push({"error": status, "message": "nope"})
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "hi")
    out = json_out(r)
    assert r.exit_code == 1 and out["status"] == "error"
    assert str(status) in out["error"] and words in out["error"]
    assert paths(fake) == ["anthropic"] and cooldowns(home) == {}


def test_the_whole_chain_failing_names_every_model(fake: FakeLLM, home: Path, workdir: Path,
                                                   clock: Clock) -> None:
    chain_home(home)
    fake.push({"error": 529}, {"error": 529}, {"error": 503}, {"error": 503})
    out = run(home, workdir)
    assert out["status"] == "error" and out["exit_code"] == 1
    assert "no model of the chain answered" in out["error"]
    assert PRIMARY in out["error"] and SECOND in out["error"]
    assert set(cooldowns(home)) == {PRIMARY, SECOND}


def test_every_model_cooling_down_is_still_tried(fake: FakeLLM, home: Path, workdir: Path,
                                                 clock: Clock) -> None:
    chain_home(home)
    breaker = Breaker(home / ".agentd" / "cooldowns.json")
    breaker.trip(SECOND, 100, 429, "x")
    breaker.trip(PRIMARY, 200, 529, "y")
    fake.push({"text": "the soonest to recover answers"})
    assert run(home, workdir)["models"] == [SECOND]


def test_a_fallback_without_its_key_is_skipped_with_the_reason(
        fake: FakeLLM, home: Path, workdir: Path, clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    chain_home(home)
    monkeypatch.delenv("OPENAI_API_KEY")
    fake.push({"text": "fine"})
    assert run(home, workdir)["status"] == "ok"  # a missing fallback key costs nothing …
    fake.push({"error": 529}, {"error": 529})
    out = run(home, workdir)  # … until the fallback is needed
    assert out["status"] == "error" and "OPENAI_API_KEY" in out["error"]


def test_an_unknown_fallback_provider_is_a_config_error(fake: FakeLLM, home: Path,
                                                        workdir: Path) -> None:
    configure(home, f'model = "{PRIMARY}"\nfallbacks = ["opneai:gpt-5.4"]\n')
    r = agentd("run", "--home", str(home), "-C", str(workdir), "hi")
    assert r.exit_code == 2 and "unknown provider 'opneai'" in r.stderr
    assert fake.requests == []  # before anything is spent
    assert list((home / ".agentd").glob("sessions/*")) == []  # and before a transcript


def test_breaker_is_shared_through_the_file_and_survives_garbage(tmp_path: Path,
                                                                 clock: Clock) -> None:
    path = tmp_path / ".agentd" / "cooldowns.json"
    Breaker(path).trip("a:b", 60, 429, "slow down")
    assert Breaker(path).until("a:b") == T0 + 60  # another process, same answer
    clock.t += 61
    assert Breaker(path).until("a:b") == 0
    for junk in ("not json", "[1, 2]", '{"a:b": {"until": "soon"}}', '{"a:b": 5}'):
        path.write_text(junk)
        assert Breaker(path).until("a:b") == 0
        Breaker(path).trip("c:d", 10, None, "x")  # and writing over it repairs it
        assert Breaker(path).until("c:d") == clock.t + 10


class Scripted:
    """A provider that raises the given errors in turn, then answers."""

    def __init__(self, name: str, *errors: ProviderError) -> None:
        self.name, self.errors, self.calls = name, list(errors), 0
        self.closed = False

    async def complete(self, system: str, messages: list[Message], tools: list,
                       on_text: object = None, sampling: object = None) -> Message:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Message("assistant", f"from {self.name}", model=self.name)

    async def aclose(self) -> None:
        self.closed = True


def chain_of(tmp_path: Path, *providers: Scripted) -> fallback.FallbackProvider:
    members = [fallback.Member(p.name, p, retries=2) for p in providers]
    return fallback.FallbackProvider(members, Breaker(tmp_path / "cooldowns.json"),
                                     cooldown=300, max_wait=30)


def test_the_chain_reads_only_transient_and_retry_after(tmp_path: Path, clock: Clock) -> None:
    """A 503 the adapter calls permanent is raised at once, not retried, not fallen back
    from; a status-less failure it calls transient is retried, waiting its retry_after."""
    one = Scripted("a:one", ProviderError("a:one", "no", 503))
    two = Scripted("b:two")
    with pytest.raises(ProviderError, match="no"):
        asyncio.run(chain_of(tmp_path, one, two).complete("", [], []))
    assert (one.calls, two.calls, clock.slept) == (1, 0, [])
    assert Breaker(tmp_path / "cooldowns.json").until("a:one") == 0

    flaky = Scripted("a:one", ProviderError("a:one", "blip", transient=True, retry_after=3),
                     ProviderError("a:one", "blip", transient=True))
    reply = asyncio.run(chain_of(tmp_path, flaky, two).complete("", [], []))
    assert reply.text == "from a:one" and flaky.calls == 3 and two.calls == 0
    assert clock.slept[0] == 3 and clock.slept[1] <= 1.0  # then the backoff


def test_a_transient_failure_moves_on_and_closes_every_member(tmp_path: Path,
                                                              clock: Clock) -> None:
    down = ProviderError("a:one", "down", 529, transient=True, retry_after=600)
    one, two = Scripted("a:one", down, down, down), Scripted("b:two")
    chain = chain_of(tmp_path, one, two)

    async def go() -> Message:
        try:
            return await chain.complete("", [], [])
        finally:
            await chain.aclose()

    assert asyncio.run(go()).text == "from b:two" and chain.name == "b:two"
    assert one.calls == 1 and clock.slept == []  # 600 s is past max_wait: no retry
    assert Breaker(tmp_path / "cooldowns.json").until("a:one") == T0 + 600
    assert one.closed and two.closed
