"""End to end through `agentd run`: real SDKs against the fake LLM server, real tools,
real bubblewrap, real git. Each test checks what the turn left behind and what the model
server received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from conftest import agentd, json_out
from fakellm import FakeLLM

TWO_TOOLS = [
    {"text": "Writing it.", "tool_calls": [
        {"name": "write", "arguments": {"path": "out/hello.txt", "content": "hi there\n"}}]},
    {"tool_calls": [{"name": "bash", "arguments": {"command": "wc -c out/hello.txt"}}]},
    {"text": "Done: out/hello.txt holds 9 bytes."},
]


def _git_clean(home: Path) -> str:
    return subprocess.run(["git", "-C", str(home), "status", "--porcelain"],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("model", ["anthropic:claude-sonnet-5-5", "openai:gpt-5.4-mini"])
def test_two_tool_calls_end_to_end(fake: FakeLLM, home: Path, workdir: Path, model: str) -> None:
    fake.push(*TWO_TOOLS)
    r = agentd("run", "--home", str(home), "--workdir", str(workdir), "--model", model,
               "make out/hello.txt")
    assert r.exit_code == 0, r.stderr
    assert (workdir / "out/hello.txt").read_text() == "hi there\n"
    assert "Done: out/hello.txt holds 9 bytes." in r.stdout
    assert "▸ write out/hello.txt" in r.stdout and "▸ bash wc -c out/hello.txt" in r.stdout
    assert model in r.stdout and "3 steps" in r.stdout  # the summary line
    reqs = [q for q in fake.requests if q.method == "POST"]
    assert len(reqs) == 3
    third = reqs[2].body
    if model.startswith("anthropic"):
        assert reqs[0].path == "/v1/messages"
        results = [b for m in third["messages"] if m["role"] == "user"
                   for b in (m["content"] if isinstance(m["content"], list) else [])
                   if b.get("type") == "tool_result"]
        uses = [b for m in third["messages"] if m["role"] == "assistant"
                for b in m["content"] if b.get("type") == "tool_use"]
        assert [u["id"] for u in uses] == [t["tool_use_id"] for t in results]
        assert "9 out/hello.txt" in json.dumps(results[1]["content"])
        assert {t["name"] for t in third["tools"]} == {"bash", "read", "write", "edit"}
    else:
        assert reqs[0].path == "/v1/chat/completions"
        msgs = third["messages"]
        assert msgs[0]["role"] == "system"
        tools = [m for m in msgs if m["role"] == "tool"]
        calls = [c for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        assert [c["id"] for c in calls] == [t["tool_call_id"] for t in tools]
        assert "9 out/hello.txt" in tools[1]["content"]
        assert json.loads(calls[0]["function"]["arguments"])["path"] == "out/hello.txt"
        assert reqs[0].body["stream_options"] == {"include_usage": True}
    assert all(q.body.get("stream") for q in reqs)
    assert _git_clean(home) == ""  # the day log entry is committed too


def test_json_output_is_one_object(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push(*TWO_TOOLS)
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", "openai:gpt-5.4",
               "go")
    assert r.exit_code == 0
    out = json_out(r)
    assert out["status"] == "ok" and out["exit_code"] == 0
    assert out["text"] == "Done: out/hello.txt holds 9 bytes."
    assert out["steps"] == 3 and [c["name"] for c in out["tool_calls"]] == ["write", "bash"]
    assert out["model"] == "openai:gpt-5.4" and out["usage"]["output"] > 0
    assert isinstance(out["cost"], float) and out["cost"] > 0


def test_session_and_ledger_are_written(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "ok", "usage": {"input": 1000, "output": 100, "cache_read": 500}})
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir),
               "-m", "openai:gpt-5.4-mini", "hello")
    out = json_out(r)
    session = [json.loads(x) for x in Path(out["session"]).read_text().splitlines()]
    assert [s["type"] for s in session] == ["session", "message", "message", "end"]
    assert session[1]["text"] == "hello" and session[2]["text"] == "ok"
    ledger = [json.loads(x) for x in (home / ".agentd/usage.jsonl").read_text().splitlines()]
    assert ledger[-1]["input"] == 1000 and ledger[-1]["cache_read"] == 500
    # gpt-5.4-mini: 0.75 in, 0.075 cached, 4.5 out per MTok
    assert ledger[-1]["cost"] == pytest.approx((1000 * 0.75 + 500 * 0.075 + 100 * 4.5) / 1e6)


def test_unknown_model_cost_is_null_never_a_guess(fake: FakeLLM, home: Path,
                                                   workdir: Path) -> None:
    fake.push({"text": "ok"})
    out = json_out(agentd("run", "--json", "--home", str(home), "-C", str(workdir),
                          "-m", "openai:some-new-model", "hi"))
    assert out["cost"] is None
    assert json.loads((home / ".agentd/usage.jsonl").read_text())["cost"] is None


def test_quiet_prints_only_the_answer(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push(*TWO_TOOLS)
    r = agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "go")
    assert r.stdout == "Done: out/hello.txt holds 9 bytes.\n"


def test_stdin_is_attached_as_context(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "looks fine"})
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", "openai:x",
               "review this", input="diff --git a/x b/x\n+added line\n")
    assert r.exit_code == 0
    user = fake.requests[-1].body["messages"][-1]["content"]
    assert user.startswith("review this") and "+added line" in user and "<stdin>" in user


def test_stdin_alone_is_the_prompt(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "4"})
    r = agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", "openai:x",
               input="what is 2+2?\n")
    assert r.stdout == "4\n"
    assert fake.requests[-1].body["messages"][-1]["content"] == "what is 2+2?"


def test_named_and_ollama_endpoints(fake: FakeLLM, home: Path, workdir: Path) -> None:
    with (home / "agentd.toml").open("a") as f:
        f.write(f'[providers.ollama]\nbase_url = "{fake.openai_url}"\n'
                f'[providers.lab]\nprotocol = "openai"\nbase_url = "{fake.openai_url}"\n'
                'key_env = "LAB_KEY"\n')
    fake.push({"text": "from ollama"}, {"text": "from lab"})
    r1 = agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", "ollama:qwen3:8b",
                "hi")
    assert r1.stdout == "from ollama\n" and fake.requests[-1].body["model"] == "qwen3:8b"
    assert fake.requests[-1].headers["authorization"] != "Bearer sk-test-KEYVALUE"
    os.environ["LAB_KEY"] = "lab-secret"
    try:
        r2 = agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", "lab:m1", "hi")
    finally:
        del os.environ["LAB_KEY"]
    assert r2.stdout == "from lab\n"
    assert fake.requests[-1].headers["authorization"] == "Bearer lab-secret"


def test_model_precedence(fake: FakeLLM, home: Path, workdir: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = home / "agentd.toml"
    cfg.write_text('model = "openai:from-toml"\n' + cfg.read_text())
    fake.push({"text": "a"}, {"text": "b"}, {"text": "c"})
    base = ["run", "--json", "--home", str(home), "-C", str(workdir)]
    assert json_out(agentd(*base, "x"))["model"] == "openai:from-toml"
    monkeypatch.setenv("AGENTD_MODEL", "openai:from-env")
    assert json_out(agentd(*base, "x"))["model"] == "openai:from-env"
    assert json_out(agentd(*base, "-m", "openai:from-flag", "x"))["model"] == "openai:from-flag"


def test_first_provider_with_a_key_is_the_default(fake: FakeLLM, home: Path, workdir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    fake.push({"text": "hi"})
    out = json_out(agentd("run", "--json", "--home", str(home), "-C", str(workdir), "x"))
    assert out["model"] == "openai:gpt-5.4-mini"


def test_fixed_prompt_stays_small(fake: FakeLLM, home: Path, workdir: Path) -> None:
    """System prompt + tool schemas of a fresh home: under 1,500 tokens (chars / 4)."""
    for model in ("anthropic:claude-sonnet-5-5", "openai:gpt-5.4"):
        fake.push({"text": "ok"})
        agentd("run", "--home", str(home), "-C", str(workdir), "-m", model, "x")
        body = fake.requests[-1].body
        if model.startswith("anthropic"):
            system = json.dumps(body["system"])
        else:
            system = body["messages"][0]["content"]
        size = len(system) + len(json.dumps(body["tools"]))
        assert size / 4 < 1500, f"{model}: fixed prompt is {size / 4:.0f} tokens"
        assert "write-a-skill" in system  # the skills index is there


def test_record_then_replay(fake: FakeLLM, home: Path, workdir: Path, tmp_path: Path) -> None:
    fake.push(*TWO_TOOLS)
    rec = tmp_path / "run.jsonl"
    assert agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", "openai:x",
                  "--record", str(rec), "go").exit_code == 0
    assert len(rec.read_text().splitlines()) == 3
    (workdir / "out/hello.txt").unlink()
    n = len(fake.requests)
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m",
               f"replay:{rec}", "go")
    assert json_out(r)["status"] == "ok" and len(fake.requests) == n  # no model traffic
    assert (workdir / "out/hello.txt").read_text() == "hi there\n"


def test_demo_recording_runs(home: Path, workdir: Path) -> None:
    demo = Path(__file__).parent.parent / "examples/demo.jsonl"
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m",
               f"replay:{demo}", "demo")
    out = json_out(r)
    assert out["status"] == "ok", out
    assert (workdir / "notes/hello.md").read_text().startswith("# Hello from agentd")
    assert not out["tool_calls"][1]["is_error"]


def test_max_steps_ends_with_a_clear_error(fake: FakeLLM, home: Path, workdir: Path) -> None:
    loop = {"tool_calls": [{"name": "bash", "arguments": {"command": "true"}}]}
    fake.push(loop, loop)
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", "openai:x",
               "--max-steps", "2", "spin")
    assert r.exit_code == 1
    assert "stopped after 2 steps" in r.stderr and "--max-steps" in r.stderr


def test_subprocess_entry_points(fake: FakeLLM, home: Path, workdir: Path) -> None:
    """The installed-style entry point (python -m agentd) with exit codes and no traceback."""
    fake.push({"text": "pong"})
    env = {**os.environ}
    ok = subprocess.run([sys.executable, "-m", "agentd", "run", "-q", "--home", str(home),
                         "-C", str(workdir), "-m", "anthropic:claude-haiku-5-5", "ping"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert (ok.returncode, ok.stdout) == (0, "pong\n")
    bad = subprocess.run([sys.executable, "-m", "agentd", "run", "--home", str(home),
                          "-m", "nope:x", "ping"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: unknown provider 'nope'")


def test_home_is_found_in_a_parent_folder(fake: FakeLLM, home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sub = home / "notes/deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    fake.push({"text": "ok"})
    out = json_out(agentd("run", "--json", "-m", "openai:x", "hi"))
    assert Path(out["session"]).parent == home / ".agentd/sessions"


def test_home_defaults_to_dot_agentd_with_a_notice(fake: FakeLLM, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fake.push({"text": "ok"}, {"text": "again"})
    r = agentd("run", "-q", "-m", "openai:x", "hi")
    created = Path(os.environ["HOME"]) / ".agentd"
    assert r.exit_code == 0 and (created / "agentd.toml").is_file()
    assert f"created a new home at {created}" in r.stderr
    r2 = agentd("run", "-q", "-m", "openai:x", "hi")
    assert "created" not in r2.stderr  # only on first use


def test_agentd_home_variable(fake: FakeLLM, home: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTD_HOME", str(home))
    fake.push({"text": "ok"})
    out = json_out(agentd("run", "--json", "-m", "openai:x", "hi"))
    assert Path(out["session"]).is_relative_to(home)


def test_json_mode_reports_config_errors_as_json(home: Path, workdir: Path) -> None:
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "hi")
    assert r.exit_code == 2
    out = json_out(r)
    assert out["status"] == "error" and "no model configured" in out["error"]


def test_json_mode_reports_turn_failures(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"error": 401})
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "hi")
    out = json_out(r)
    assert (r.exit_code, out["exit_code"], out["status"]) == (1, 1, "error")
    assert "401" in out["error"] and r.stderr.startswith("error:")


def test_help_texts_are_true() -> None:
    r = agentd("run", "--help")
    for opt in ("--home", "--model", "--workdir", "--max-steps", "--json", "--quiet",
                "--record", "--no-sandbox"):
        assert opt in r.stdout
    assert "init" in agentd("--help").stdout


def test_loosened_sandbox_is_warned_on_the_turn(fake: FakeLLM, home: Path,
                                                workdir: Path) -> None:
    fake.push({"text": "ok"}, {"text": "ok"})
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "--no-sandbox",
               "hi")
    assert "warning: sandbox is off" in r.stderr
    cfg = home / "agentd.toml"
    cfg.write_text(cfg.read_text() + '\n[sandbox]\nnetwork = "full"\n')
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "hi")
    assert r.exit_code == 0 and 'warning: sandbox network is "full"' in r.stderr


def test_untrusted_turns_never_get_the_network() -> None:
    from agentd.config import parse_settings
    from agentd.turn import TurnRequest, sandbox_for

    s = parse_settings({"sandbox": {"network": "full"}})
    assert sandbox_for(s, TurnRequest("t", Path("/"))).network == "full"
    for profile in ("untrusted", "readonly"):
        assert sandbox_for(s, TurnRequest("t", Path("/"), profile=profile)).network == "none"
    assert s.sandbox.network == "full"  # the settings themselves are untouched


# -- conversations from the CLI: run -c and --session -----------------------------------


def _user_texts(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def _run(home: Path, workdir: Path, *args: str) -> Result:
    return agentd("run", "--home", str(home), "-C", str(workdir), *args)


def test_run_continue_and_named_sessions(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "A1"}, {"text": "B1"}, {"text": "A2"}, {"text": "B2"})
    m = ("-m", "openai:gpt-5.4")
    assert _run(home, workdir, *m, "--session", "project-x", "about x").exit_code == 0
    assert _run(home, workdir, *m, "something else").exit_code == 0
    r = _run(home, workdir, "-c", "--json", "and then?")  # continues "something else"
    assert r.exit_code == 0, r.stderr
    r2 = _run(home, workdir, "--session", "project-x", "more on x")
    assert r2.exit_code == 0, r2.stderr
    reqs = [q for q in fake.requests if q.method == "POST"]
    assert [_user_texts(q.body) for q in reqs] == [
        ["about x"], ["something else"], ["something else", "and then?"],
        ["about x", "more on x"]]
    # no -m: a continued session keeps its model (the home's default would be anthropic)
    assert all(q.path == "/v1/chat/completions" for q in reqs)
    sessions = home / ".agentd" / "sessions"
    assert (sessions / "project-x.jsonl").is_file()
    assert json_out(r)["session"].endswith(".jsonl") and len(list(sessions.iterdir())) == 2


def test_run_continue_skips_daemon_and_bridge_sessions(fake: FakeLLM, home: Path,
                                                       workdir: Path) -> None:
    fake.push({"text": "one"}, {"text": "two"})
    assert _run(home, workdir, "-m", "openai:gpt-5.4", "mine").exit_code == 0
    sessions = home / ".agentd" / "sessions"
    (sessions / "chat-laptop.jsonl").write_text(json.dumps(
        {"type": "session", "id": "chat-laptop", "trigger": "chat:laptop"}) + "\n")
    (sessions / "cron-daily.jsonl").write_text('{"type": "session", "trigger": "cron"}\n')
    (sessions / "zz-link.jsonl").symlink_to(sessions / "chat-laptop.jsonl")
    r = _run(home, workdir, "-c", "again")
    assert r.exit_code == 0, r.stderr
    last = [q for q in fake.requests if q.method == "POST"][-1]
    assert _user_texts(last.body) == ["mine", "again"]


@pytest.mark.parametrize("args, says", [
    (("-c", "x"), "no conversation to continue in "),
    (("--session", "../../etc/passwd", "x"), "is not a session name"),
    (("--session", "-rf", "x"), "is not a session name"),
    (("--session", ".hidden", "x"), "is not a session name"),
    (("-c", "--session", "a", "x"), "give one of them"),
])
def test_run_session_errors_are_one_line(fake: FakeLLM, home: Path, workdir: Path,
                                         args: tuple[str, ...], says: str) -> None:
    r = _run(home, workdir, "-m", "openai:gpt-5.4", *args)
    assert r.exit_code == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line
    assert not [q for q in fake.requests if q.method == "POST"]


def test_a_symlinked_transcript_is_never_followed(fake: FakeLLM, home: Path, workdir: Path,
                                                  tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"type": "message", "role": "user", "text": "planted"})
                       + "\n")
    sessions = home / ".agentd" / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    (sessions / "linked.jsonl").symlink_to(outside)
    r = _run(home, workdir, "-m", "openai:gpt-5.4", "--session", "linked", "hello")
    assert r.exit_code == 2 and r.stderr.startswith("error: cannot read session ")
    assert outside.read_text().count("\n") == 1  # nothing appended through the link
    assert not [q for q in fake.requests if q.method == "POST"]


@pytest.mark.parametrize("args", [["history"], ["show", "abc123"], ["undo"], ["skills"],
                                  ["usage"], ["status"], ["status", "--json"], ["stop"],
                                  ["cron"], ["cron", "run", "x"], ["service"], ["doctor"]])
def test_commands_that_are_not_turns_never_create_a_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """Only `init` and a turn make a home: looking around outside one says there is none
    and how to make one, in one line, and leaves no ~/.agentd behind."""
    monkeypatch.chdir(tmp_path)
    r = agentd(*args)
    assert r.exit_code != 0 and "Traceback" not in r.stderr
    assert not (Path(os.environ["HOME"]) / ".agentd").exists()
    assert not list(tmp_path.iterdir())
    if args[0] != "doctor":  # doctor says it in its table, with the other checks
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: no agentd home")
        assert "agentd init" in r.stderr
    else:
        assert "agentd init PATH" in r.stdout


def test_cron_commit_subjects_are_the_same_every_run(fake: FakeLLM, home: Path) -> None:
    """`Cron: NAME` every time: a first run that answers, a [SILENT] one and one that
    writes a file all commit under the job's name (issue 14: the first once ended in ":",
    later ones said "Cron report: …")."""
    (home / "agentd.toml").write_text('model = "openai:test"\n')
    (home / "cron/ping.md").write_text("---\nevery: 1h\n---\nPing the notes.\n")
    fake.push({"text": "Pong."}, {"text": "[SILENT]"},
              {"tool_calls": [{"name": "write", "arguments": {"path": "notes.md",
                                                              "content": "pong\n"}}]},
              {"text": "Wrote notes.md."})
    before = _git(home, "rev-parse", "HEAD").strip()
    for _ in range(3):
        r = agentd("cron", "run", "ping", "--home", str(home), "-q")
        assert r.exit_code == 0, r.stderr
    subjects = _git(home, "log", "--format=%s", f"{before}..HEAD").split("\n")
    cron = [s for s in subjects if s.startswith("Cron")]
    assert cron == ["Cron: ping"] * 3, subjects
    assert _git_clean(home) == ""


def _git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout
