"""Compatibility profiles end to end: `agentd run` against fakellm behaving like a real
local server (its `quirks`), once with the profile that fits (the turn completes with its
tool call) and once with a wrong one (the turn fails at once, and the error names the
switch that fixes it, instead of retrying and saying "try again later")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.llm.compat import PROFILES, Compat, guess_profile, resolve, shape_problem
from tests.conftest import agentd, json_out
from tests.fakellm import FakeLLM

CALL = {"tool_calls": [{"name": "bash", "arguments": {"command": "echo hi > hello.txt"}}]}
DONE = {"text": "DONE"}
MARK = "\n# the provider of this test\n"


def test_llama_cpp_python_caps_output_at_1024_unless_calls_models_says(
        server: list[FakeLLM], home: Path, workdir: Path) -> None:
    """That server keeps generating for an abandoned request, so its profile sends a
    smaller cap; found by `auto` too; `[calls.models]` for the provider or model wins,
    and another profile keeps `[calls] max_tokens`."""
    def caps(settings: str, owner: str = "fakellm", calls: str = "") -> set[int]:
        fake = start(server)
        fake.owner = owner
        text = (home / "agentd.toml").read_text().split(MARK)[0].split("\n[calls")[0]
        (home / "agentd.toml").write_text(text + calls)  # run() adds the provider after
        completed(run(home, workdir, fake, settings), workdir)
        return {r.body["max_tokens"] for r in fake.requests if r.method == "POST"}

    assert caps('profile = "llama-cpp-python"') == {1024}
    assert caps('profile = "auto"', owner="me") == {1024}
    assert caps('profile = "vllm"') == {8192}
    assert caps('profile = "llama-cpp-python"', calls="\n[calls]\nmax_tokens = 512\n") == {512}
    assert caps('profile = "llama-cpp-python"',
                calls="\n[calls.models]\nlocal = 4096\n") == {4096}


@pytest.fixture
def server() -> Iterator[list[FakeLLM]]:
    """Holds the fake a test starts with its quirks, and closes it."""
    made: list[FakeLLM] = []
    yield made
    for f in made:
        f.close()


def run(home: Path, workdir: Path, fake: FakeLLM, settings: str) -> dict:
    """One `agentd run --json` on `[providers.local]` with `settings` (TOML lines)."""
    toml = home / "agentd.toml"
    base = toml.read_text().split(MARK)[0]
    toml.write_text(f'{base}{MARK}[providers.local]\nbase_url = "{fake.openai_url}"\n'
                    f"max_retries = 1\n{settings}\n")
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", "local:tiny",
               "make hello.txt")
    return json_out(r) | {"stderr": r.stderr}


def start(made: list[FakeLLM], *quirks: str, replies: tuple[dict, ...] = (CALL, DONE)
          ) -> FakeLLM:
    fake = FakeLLM(*replies, quirks=set(quirks))
    made.append(fake)
    return fake


def completed(out: dict, workdir: Path) -> None:
    assert (out["status"], out["exit_code"], out["text"]) == ("ok", 0, "DONE"), out
    assert [c["is_error"] for c in out["tool_calls"]] == [False]
    assert (workdir / "hello.txt").read_text() == "hi\n"


def test_llama_cpp_python_profile_does_what_that_server_needs(
        server: list[FakeLLM], home: Path, workdir: Path) -> None:
    fake = start(server, "tools-need-tool-choice", "no-null-content", "no-stream-with-tools")
    completed(run(home, workdir, fake, 'profile = "llama-cpp-python"'), workdir)
    first, second = (r.body for r in fake.requests)
    assert first["tool_choice"] == "auto" and first["stream"] is False
    assert second["messages"][-2]["content"] == "" and second["messages"][-2]["tool_calls"]


def test_tools_ignored_without_tool_choice(server: list[FakeLLM], home: Path,
                                           workdir: Path) -> None:
    """The wrong profile cannot be told from a model that chose not to call: the turn
    ends without running the tool; the switch alone makes the call happen."""
    fake = start(server, "tools-need-tool-choice", replies=(CALL,))
    out = run(home, workdir, fake, "send_tool_choice = false")
    assert out["tool_calls"] == [] and not (workdir / "hello.txt").exists()
    assert "tool_choice" not in fake.requests[0].body
    fake.push(CALL, DONE)
    completed(run(home, workdir, fake, "send_tool_choice = true"), workdir)


def test_null_content_rejected_names_its_switch(server: list[FakeLLM], home: Path,
                                                workdir: Path) -> None:
    fake = start(server, "no-null-content")
    out = run(home, workdir, fake, 'profile = "openai"')
    assert out["status"] == "error" and out["exit_code"] != 0
    assert "null_content_as_empty = true" in out["error"] and "[providers.local]" in out["error"]
    assert "try again later" not in out["error"]
    assert len(fake.requests) == 2  # the call and the one that was rejected: no retry
    fake.push(CALL, DONE)
    (workdir / "hello.txt").unlink()
    completed(run(home, workdir, fake, "null_content_as_empty = true"), workdir)


def test_error_inside_a_stream_with_tools_names_its_switch(
        server: list[FakeLLM], home: Path, workdir: Path) -> None:
    fake = start(server, "no-stream-with-tools", replies=(CALL,))
    out = run(home, workdir, fake, 'profile = "openai"')
    assert out["status"] == "error" and "stream_with_tools = false" in out["error"]
    assert "try again later" not in out["error"] and len(fake.requests) == 1
    fake.push(CALL, DONE)
    completed(run(home, workdir, fake, "stream_with_tools = false"), workdir)
    assert fake.requests[-1].body["stream"] is False


@pytest.mark.parametrize("text_format", ["hermes", "bare", "fence"])
def test_tool_calls_written_as_text(server: list[FakeLLM], home: Path, workdir: Path,
                                    text_format: str) -> None:
    fake = start(server, "text-tool-calls", replies=({**CALL, "text_format": text_format},
                                                     DONE))
    completed(run(home, workdir, fake, "text_tool_calls = true"), workdir)
    first, second = (r.body for r in fake.requests)
    assert "tools" not in first and "<tool_call>" in first["messages"][0]["content"]
    assert [m["role"] for m in second["messages"][-2:]] == ["assistant", "user"]
    assert second["messages"][-1]["content"].startswith("<tool_response>")


def test_a_call_written_as_text_without_the_switch_names_it(
        server: list[FakeLLM], home: Path, workdir: Path) -> None:
    fake = start(server, "text-tool-calls", replies=(CALL,))
    out = run(home, workdir, fake, "")
    assert out["status"] == "error" and "text_tool_calls = true" in out["error"]
    assert not (workdir / "hello.txt").exists()


def test_raw_newlines_in_arguments_are_repaired_and_kept(
        server: list[FakeLLM], home: Path, workdir: Path) -> None:
    raw = '{"command": "printf \'a\\nb\' > hello.txt",}'.replace("\\n", "\n")
    fake = start(server, replies=({"tool_calls": [{"name": "bash", "arguments": raw}]},
                                  {"tool_calls": [{"name": "bash", "arguments": '{"command'}]},
                                  DONE))
    out = run(home, workdir, fake, "")
    assert out["status"] == "ok" and (workdir / "hello.txt").read_text() == "a\nb"
    answer = fake.requests[2].body["messages"][-1]
    assert answer["role"] == "tool" and '"{\\"command"' in answer["content"]
    assert "at at" not in answer["content"]
    lines = [json.loads(x) for x in Path(out["session"]).read_text().splitlines()]
    calls = [c for x in lines for c in (x.get("tool_calls") or x.get("message", {})
                                        .get("tool_calls") or [])]
    assert [c["raw"] for c in calls] == [raw, '{"command']


@pytest.mark.parametrize("owner, works", [("me", True), ("fakellm", False)])
def test_auto_asks_the_server_who_it_is(server: list[FakeLLM], home: Path, workdir: Path,
                                        owner: str, works: bool) -> None:
    """llama-cpp-python names itself "me" in GET /models; a server that names no known
    one keeps the profile guessed by name and port (here: openai)."""
    fake = start(server, "tools-need-tool-choice", "no-null-content", "no-stream-with-tools",
                 replies=(CALL, DONE) if works else (CALL,))
    fake.owner = owner
    out = run(home, workdir, fake, 'profile = "auto"')
    assert (fake.requests[0].method, fake.requests[0].path) == ("GET", "/v1/models")
    assert sum(r.method == "GET" for r in fake.requests) == 1  # asked once per turn
    if works:
        completed(out, workdir)
    else:
        assert out["status"] == "error" and "stream_with_tools = false" in out["error"]


def test_auto_keeps_switches_set_beside_it(server: list[FakeLLM], home: Path,
                                           workdir: Path) -> None:
    fake = start(server, "no-null-content")
    fake.owner = "me"
    out = run(home, workdir, fake, 'profile = "auto"\nnull_content_as_empty = false')
    assert "null_content_as_empty = true" in out["error"]


def switch(detail: str, status: int | None, sent: dict[str, bool]) -> str | None:
    found = shape_problem(detail, status, sent)
    return found[1] if found else None


def test_shape_problems_are_told_from_other_failures() -> None:
    everything = {"tools": True, "stream": True, "tool_choice": True, "null_content": True}
    assert shape_problem("Cannot use tools with stream", 500, {"tools": True, "stream": True}
                         ) == ("streaming with tools", "stream_with_tools", False)
    assert switch("registry.ollama.ai/library/gemma3:270m does not support tools", 400,
                  {}) == "text_tool_calls"
    assert switch('"auto" tool choice requires --enable-auto-tool-choice and '
                  "--tool-call-parser to be set", 400, {}) == "text_tool_calls"
    assert switch("tool_choice is not supported", 400, everything) == "send_tool_choice"
    for detail, status, sent in (("Internal server error", 500, everything),
                                 ("content null", 500, {"tools": True}),
                                 ("mid-stream", None, {"tools": True, "stream": True}),
                                 ("Cannot use tools with stream", 500, {"tools": True})):
        assert switch(detail, status, sent) is None, detail


def test_profiles_are_chosen_by_name_and_port() -> None:
    assert guess_profile("ollama", None) == "ollama"
    assert guess_profile("local", "http://127.0.0.1:11434/v1") == "ollama"
    assert guess_profile("local", "http://localhost:1234/v1") == "lmstudio"
    assert guess_profile("local", "http://localhost:8080/v1") == "llama-server"
    assert guess_profile("lab", "http://vllm.lan:8000/v1") == "vllm"
    assert guess_profile("lab", "http://[::1:bad/v1") == "openai"
    assert resolve(None, "x", None, {"text_tool_calls": True}) == Compat(text_tool_calls=True)
    assert resolve("llama-cpp-python", "x", None, {"stream_with_tools": True}) == Compat(
        send_tool_choice=True, null_content_as_empty=True, max_tokens=1024)
    with pytest.raises(ValueError, match="unknown profile"):
        resolve("nope", "x", None, {})


def test_a_bad_profile_or_switch_is_one_line(home: Path, workdir: Path) -> None:
    for line, needle in (('profile = "llamacpp"', "providers.local.profile must be one of"),
                         ('send_tool_choice = "yes"', "providers.local.send_tool_choice")):
        toml = (home / "agentd.toml").read_text()
        (home / "agentd.toml").write_text(
            toml + f'\n[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\n{line}\n')
        r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", "local:x", "hi")
        assert r.exit_code != 0 and needle in r.stderr and "Traceback" not in r.stderr
        (home / "agentd.toml").write_text(toml)
    assert set(PROFILES) == {"openai", "llama-cpp-python", "llama-server", "ollama", "vllm",
                             "lmstudio"}


def test_an_unreadable_text_call_goes_back_to_the_model(server: list[FakeLLM], home: Path,
                                                        workdir: Path) -> None:
    bad = '<tool_call>{"name": "bash", "arguments": {oops}</tool_call>'
    fake = start(server, replies=({"text": bad}, DONE))
    out = run(home, workdir, fake, "text_tool_calls = true")
    assert out["status"] == "ok" and [c["is_error"] for c in out["tool_calls"]] == [True]
    answer = fake.requests[1].body["messages"][-1]["content"]
    assert answer.startswith("<tool_response>") and "unreadable <tool_call>" in answer
    assert "{oops}" in answer
