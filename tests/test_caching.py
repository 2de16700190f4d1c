"""Prompt caching: explicit Anthropic breakpoints, checked in the captured requests, and
the cache-hit share of a scripted multi-step turn under the fake's honest cache model."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import pytest
from conftest import agentd, json_out
from fakellm import FakeLLM

SONNET = "anthropic:claude-sonnet-5-5"
STEPS = [{"tool_calls": [{"name": "bash", "arguments": {"command": f"echo step {i}"}}]}
         for i in range(3)] + [{"text": "done"}]


def posts(fake: FakeLLM) -> list[dict]:
    return [q.body for q in fake.requests if q.method == "POST"]


def marks(body: dict) -> list[str]:
    """Where the breakpoints are: tools[i], system[i], messages[i] (on its last block)."""
    out = [f"tools[{i}]" for i, t in enumerate(body.get("tools", [])) if "cache_control" in t]
    out += [f"system[{i}]" for i, b in enumerate(body.get("system", []))
            if "cache_control" in b]
    for i, m in enumerate(body["messages"]):
        blocks = m["content"] if isinstance(m["content"], list) else []
        assert all("cache_control" not in b for b in blocks[:-1])  # only on the last block
        if blocks and "cache_control" in blocks[-1]:
            out.append(f"messages[{i}]")
    return out


def run(home: Path, workdir: Path, model: str) -> dict:
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", model, "go")
    return json_out(r)


def test_breakpoints_on_tools_system_and_the_conversation(fake: FakeLLM, home: Path,
                                                          workdir: Path) -> None:
    fake.push(*STEPS)
    assert run(home, workdir, SONNET)["status"] == "ok"
    bodies = posts(fake)
    assert [marks(b) for b in bodies] == [
        ["tools[3]", "system[0]", "messages[0]"],
        ["tools[3]", "system[0]", "messages[0]", "messages[2]"],
        ["tools[3]", "system[0]", "messages[2]", "messages[4]"],
        ["tools[3]", "system[0]", "messages[4]", "messages[6]"],
    ]
    for b in bodies:
        assert "cache_control" not in b  # explicit breakpoints replace the automatic one
        assert len(marks(b)) <= 4  # the API's limit
        for m in b["messages"]:
            for block in m["content"]:
                if "cache_control" in block:
                    assert block["cache_control"] == {"type": "ephemeral"}


def _share(home: Path) -> float:
    rows = [json.loads(x) for x in (home / ".agentd/usage.jsonl").read_text().splitlines()]
    prompt = sum(r["input"] + r["cache_read"] + r["cache_write"] for r in rows)
    return sum(r["cache_read"] for r in rows) / prompt


@pytest.mark.parametrize("model", [SONNET, "openai:gpt-5.4-mini"])
def test_cache_hit_share_of_a_multi_step_turn(fake: FakeLLM, home: Path, workdir: Path,
                                              model: str) -> None:
    fake.cache = True
    fake.push(*STEPS)
    out = run(home, workdir, model)
    assert out["status"] == "ok"
    u = out["usage"]
    assert u["cache_read"] > 0
    # everything after the first request is a prefix hit: at least 60 % of prompt tokens
    assert _share(home) > 0.6, _share(home)
    if model == SONNET:
        assert u["cache_write"] > 0  # the first request wrote what the later ones read


def test_without_breakpoints_nothing_is_read(fake: FakeLLM) -> None:
    """The honest model is honest: the same long request, unmarked, is not cached."""
    fake.cache = True
    client = anthropic.Anthropic(base_url=fake.anthropic_url, api_key="k", max_retries=0)
    system = "x" * 8000
    for _ in range(2):
        fake.push({"text": "hi"})
        r = client.messages.create(model="m", max_tokens=10, system=system,
                                   messages=[{"role": "user", "content": "hi"}])
        assert r.usage.cache_read_input_tokens == 0 and r.usage.cache_creation_input_tokens == 0
    # the automatic top-level form is accepted too, and caches the whole prompt
    for n in range(2):
        fake.push({"text": "hi"})
        r = client.messages.create(model="m", max_tokens=10, system=system,
                                   messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"cache_control": {"type": "ephemeral"}})
        cached = (r.usage.cache_read_input_tokens if n else r.usage.cache_creation_input_tokens)
        assert cached == r.usage.cache_read_input_tokens + r.usage.cache_creation_input_tokens
        assert cached > 2000 and r.usage.input_tokens < 10


def test_cache_tokens_are_priced_apart(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "ok", "usage": {"input": 100, "output": 5, "cache_read": 50_000,
                                       "cache_write": 1000}})
    out = run(home, workdir, SONNET)
    # $2 in, $10 out, $0.10 cache read, $2.50 cache write per MTok
    assert out["cost"] == pytest.approx((100 * 2 + 5 * 10 + 50_000 * 0.1 + 1000 * 2.5) / 1e6)
