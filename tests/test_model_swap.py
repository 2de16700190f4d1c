"""The thesis of the project: an agent is its files, so any model can pick it up.

A fact one model writes into memory/MEMORY.md reaches the next model, on the other wire
protocol, through the system prompt; a conversation started on one provider resumes on
the other with its tool-call history intact, in the second protocol's exact shape; and
git says which model made which change. Real SDKs against the fake LLM server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import agentd, json_out
from fakellm import FakeLLM

ANTHROPIC, OPENAI = "anthropic:claude-sonnet-5-5", "openai:gpt-5.4"
FACT = "The deploy day is Friday (code word: heron-42)."
SECOND = "Deploys need a green CI run (code word: plover-7)."


def git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout


def posts(fake: FakeLLM) -> list:
    return [q for q in fake.requests if q.method == "POST"]


def system_of(body: dict) -> str:
    """The system prompt of a request, on either protocol."""
    if "system" in body:  # Anthropic: a string or a list of text blocks
        s = body["system"]
        return s if isinstance(s, str) else "".join(b["text"] for b in s)
    first = body["messages"][0]
    assert first["role"] == "system"
    return first["content"]


def commits_touching(home: Path, path: str) -> list[str]:
    """Full messages of the commits that changed `path`, oldest first."""
    shas = git(home, "log", "--reverse", "--format=%H", "--", path).split()
    return [git(home, "log", "-1", "--format=%B", sha) for sha in shas]


def trailers(message: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in message.splitlines()
                if line.startswith("Agentd-"))


def test_a_fact_written_on_anthropic_reaches_openai(fake: FakeLLM, home: Path,
                                                    workdir: Path) -> None:
    memory = home / "memory" / "MEMORY.md"
    fake.push({"tool_calls": [{"name": "write", "arguments": {
                  "path": str(memory), "content": f"# Memory\n\n- {FACT}\n"}}]},
              {"text": "Noted in MEMORY.md."})
    one = json_out(agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m",
                          ANTHROPIC, "remember: we deploy on Fridays"))
    assert one["status"] == "ok", one
    assert FACT not in system_of(posts(fake)[0].body)  # not known before it was written

    fake.push({"tool_calls": [{"name": "edit", "arguments": {
                  "path": str(memory), "old_text": f"- {FACT}\n",
                  "new_text": f"- {FACT}\n- {SECOND}\n"}}]},
              {"text": "Friday, after a green CI run."})
    two = json_out(agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m",
                          OPENAI, "when do we deploy? also remember CI must be green"))
    assert two["status"] == "ok", two
    turn2 = posts(fake)[2]
    assert posts(fake)[0].path == "/v1/messages" and turn2.path == "/v1/chat/completions"
    assert FACT in system_of(turn2.body)  # the fact, in the other model's system message
    assert memory.read_text() == f"# Memory\n\n- {FACT}\n- {SECOND}\n"

    # git: each turn that changed MEMORY.md is one commit naming its run, model, trigger
    first, second = commits_touching(home, "memory/MEMORY.md")[-2:]
    assert trailers(first) == {"Agentd-Run": one["run_id"], "Agentd-Model": ANTHROPIC,
                               "Agentd-Trigger": "cli"}
    assert trailers(second) == {"Agentd-Run": two["run_id"], "Agentd-Model": OPENAI,
                                "Agentd-Trigger": "cli"}
    assert first.startswith("remember: we deploy on Fridays\n")
    assert git(home, "status", "--porcelain") == ""


def _tool_pairs_openai(body: dict) -> list[tuple[dict, dict]]:
    """(call, result) pairs, checking each result directly follows its calls by id."""
    msgs, pairs = body["messages"], []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and m.get("tool_calls"):
            results = msgs[i + 1:i + 1 + len(m["tool_calls"])]
            for call, res in zip(m["tool_calls"], results, strict=True):
                assert call["type"] == "function" and res["role"] == "tool"
                assert res["tool_call_id"] == call["id"]
                pairs.append((call, res))
    return pairs


def _tool_pairs_anthropic(body: dict) -> list[tuple[dict, dict]]:
    msgs, pairs = body["messages"], []
    for i, m in enumerate(msgs):
        uses = [b for b in m["content"] if b.get("type") == "tool_use"] if (
            m["role"] == "assistant") else []
        if uses:
            nxt = msgs[i + 1]
            assert nxt["role"] == "user"
            results = [b for b in nxt["content"] if b.get("type") == "tool_result"]
            for use, res in zip(uses, results, strict=True):
                assert res["tool_use_id"] == use["id"]
                pairs.append((use, res))
    return pairs


@pytest.mark.parametrize(("first", "then"), [(ANTHROPIC, OPENAI), (OPENAI, ANTHROPIC)])
def test_a_chat_resumes_on_the_other_provider(fake: FakeLLM, home: Path, workdir: Path,
                                              first: str, then: str) -> None:
    memory = home / "memory" / "MEMORY.md"
    fake.push({"text": "Saving it.", "tool_calls": [{"name": "write", "arguments": {
                  "path": str(memory), "content": f"# Memory\n\n- {FACT}\n"}}]},
              {"tool_calls": [{"name": "bash", "arguments": {
                  "command": "grep -c heron memory/MEMORY.md"}}]},
              {"text": "Saved and checked."})
    r = agentd("chat", "--home", str(home), "-C", str(home), "-m", first,
               input="remember the deploy day\n")
    assert r.exit_code == 0, r.stderr
    [session] = (home / ".agentd" / "sessions").glob("*.jsonl")

    fake.push({"text": "Friday."})
    r = agentd("chat", "--home", str(home), "-C", str(home), "-m", then, "--resume",
               input="when do we deploy?\n")
    assert r.exit_code == 0, r.stderr
    assert f"resuming session {session.stem} (6 messages)" in r.stdout
    req = posts(fake)[-1]
    body = req.body
    assert FACT in system_of(body)
    if then == OPENAI:
        assert req.path == "/v1/chat/completions"
        pairs = _tool_pairs_openai(body)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c, _ in pairs] == [
            ("write", {"path": str(memory), "content": f"# Memory\n\n- {FACT}\n"}),
            ("bash", {"command": "grep -c heron memory/MEMORY.md"})]
        results = [res["content"] for _, res in pairs]
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "tool",
                         "assistant", "user"]
        assert body["messages"][2]["content"] == "Saving it."
        assert body["messages"][-1]["content"] == "when do we deploy?"
    else:
        assert req.path == "/v1/messages"
        pairs = _tool_pairs_anthropic(body)
        assert [(u["name"], u["input"]) for u, _ in pairs] == [
            ("write", {"path": str(memory), "content": f"# Memory\n\n- {FACT}\n"}),
            ("bash", {"command": "grep -c heron memory/MEMORY.md"})]
        results = [json.dumps(res["content"]) for _, res in pairs]
        assert not any(res.get("is_error") for _, res in pairs)
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user",
                                                         "assistant", "user", "assistant",
                                                         "user"]
        assert body["messages"][1]["content"][0] == {"type": "text", "text": "Saving it."}
        last = body["messages"][-1]["content"]  # marked as a prompt-cache breakpoint
        assert last == [{"type": "text", "text": "when do we deploy?",
                         "cache_control": {"type": "ephemeral"}}]
    assert "wrote" in results[0] and "1" in results[1]
    assert "Saved and checked." in json.dumps(body["messages"])  # the earlier answer

    # git: the chat turn that wrote MEMORY.md is one commit, attributed to the first model
    [message] = commits_touching(home, "memory/MEMORY.md")[-1:]
    assert trailers(message)["Agentd-Model"] == first
    assert trailers(message)["Agentd-Trigger"] == f"chat:{session.stem}"
