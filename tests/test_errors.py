"""Bad input: each case is one clear line, a non-zero exit, no traceback, an intact home.
Recoverable model mistakes (bad tool arguments, unknown tools, failing edits) go back to the
model as error results, and the turn carries on."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
from conftest import agentd, json_out
from fakellm import FakeLLM


def _snapshot(home: Path) -> dict[str, str]:
    """Hashes of every file in the home, except runtime data and the day log (which records
    failed turns too, and is committed: so .git is left out as well)."""
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file() and ".agentd" not in p.parts
            and "daily" not in p.parts and ".git" not in p.parts}


def _fails(r, code: int, *needles: str) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_no_model_configured(home: Path, workdir: Path) -> None:
    line = _fails(agentd("run", "--home", str(home), "-C", str(workdir), "hi"), 2,
                  "no model configured", "--model", "AGENTD_MODEL", "agentd.toml")
    assert len(line) < 300


def test_unknown_provider(home: Path, workdir: Path) -> None:
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", "grok:x", "hi"), 2,
           "unknown provider 'grok'", "[providers.grok]")


def test_model_without_provider_prefix(home: Path, workdir: Path) -> None:
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", "gpt-5", "hi"), 2,
           "PROVIDER:MODEL")


def test_missing_key(home: Path, workdir: Path) -> None:
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", "anthropic:x", "hi"), 2,
           "no API key", "$ANTHROPIC_API_KEY")


def test_unreachable_server(home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    before = _snapshot(home)
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "hi"), 1,
           "cannot reach", f"127.0.0.1:{port}")
    assert _snapshot(home) == before


@pytest.mark.parametrize("model", ["openai:x", "anthropic:claude-haiku-5-5"])
def test_401_names_the_key_variable_not_the_key(fake: FakeLLM, home: Path, workdir: Path,
                                                model: str) -> None:
    fake.push({"error": 401, "message": "invalid x-api-key"})
    var = "OPENAI_API_KEY" if model.startswith("openai") else "ANTHROPIC_API_KEY"
    line = _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", model, "hi"), 1,
                  "401", var)
    assert "KEYVALUE" not in line


def test_500_after_retries(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"error": 500}, {"error": 500})  # max_retries = 1 in the test home
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "hi"), 1,
           "500")
    assert len(fake.requests) == 2


def test_429_with_retry_after_then_success(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"error": 429, "headers": {"retry-after": "0"}}, {"text": "made it"})
    r = agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "hi")
    assert (r.exit_code, r.stdout) == (0, "made it\n")


def test_empty_reply_is_a_failure(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"empty": True})
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "hi"), 1,
           "empty reply")


def _tool_result_after(fake: FakeLLM, call: dict, home: Path, workdir: Path,
                       model: str = "openai:x") -> tuple[str, dict]:
    """Script one tool call then a final answer; return the result the model got back."""
    fake.push({"tool_calls": [call]}, {"text": "recovered"})
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", model, "do it")
    out = json_out(r)
    assert out["status"] == "ok", out
    tool_msgs = [m for m in fake.requests[-1].body["messages"] if m["role"] == "tool"]
    return tool_msgs[-1]["content"], out


def test_malformed_tool_arguments(fake: FakeLLM, home: Path, workdir: Path) -> None:
    content, out = _tool_result_after(fake, {"name": "bash", "arguments": '{"command": "ls'},
                                      home, workdir)
    assert content.startswith("error:") and "JSON" in content
    assert out["tool_calls"][0]["is_error"]


def test_unknown_tool(fake: FakeLLM, home: Path, workdir: Path) -> None:
    content, _ = _tool_result_after(fake, {"name": "browse", "arguments": {"url": "x"}},
                                    home, workdir)
    assert "unknown tool 'browse'" in content and "bash, read, write, edit" in content


def test_wrong_argument_type(fake: FakeLLM, home: Path, workdir: Path) -> None:
    content, _ = _tool_result_after(fake, {"name": "bash", "arguments": {"command": 5}},
                                    home, workdir)
    assert "'command' must be a string" in content


@pytest.mark.parametrize("text,count", [("absent", "not found"), ("twice", "2 times")])
def test_edit_zero_or_two_matches(fake: FakeLLM, home: Path, workdir: Path, text: str,
                                  count: str) -> None:
    (workdir / "f.txt").write_text("twice\ntwice\n")
    content, _ = _tool_result_after(fake, {"name": "edit", "arguments": {
        "path": "f.txt", "old_text": text, "new_text": "x"}}, home, workdir)
    assert count in content
    assert (workdir / "f.txt").read_text() == "twice\ntwice\n"


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.txt"])
def test_path_outside_home_and_workdir(fake: FakeLLM, home: Path, workdir: Path,
                                       path: str) -> None:
    content, _ = _tool_result_after(fake, {"name": "write", "arguments": {
        "path": path, "content": "pwned"}}, home, workdir)
    assert "outside" in content
    assert not (workdir.parent / "outside.txt").exists()


def test_binary_read(fake: FakeLLM, home: Path, workdir: Path) -> None:
    (workdir / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    content, _ = _tool_result_after(fake, {"name": "read", "arguments": {"path": "blob.bin"}},
                                    home, workdir)
    assert "binary" in content


def test_50mb_file_read(fake: FakeLLM, home: Path, workdir: Path) -> None:
    big = workdir / "big.log"
    with big.open("w") as f:
        for i in range(500_000):
            f.write(f"line {i} " + "x" * 90 + "\n")
    assert big.stat().st_size > 50_000_000
    content, _ = _tool_result_after(fake, {"name": "read", "arguments": {"path": "big.log"}},
                                    home, workdir)
    assert len(content) <= 60_000 and "offset=" in content


def test_non_utf8_command_output(fake: FakeLLM, home: Path, workdir: Path) -> None:
    content, _ = _tool_result_after(fake, {"name": "bash", "arguments": {
        "command": "printf 'ok \\377\\376 done'"}}, home, workdir)
    assert "ok" in content and "done" in content


def test_broken_config_is_one_line(home: Path, workdir: Path) -> None:
    (home / "agentd.toml").write_text("model = [unclosed\n")
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "hi"), 2, "not valid TOML")
    (home / "agentd.toml").write_text("max_step = 3\n")
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "hi"), 2,
           "unknown setting", "max_step")
    (home / "agentd.toml").write_text("[sandbox]\ntimeout = \"soon\"\n")
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "hi"), 2, "sandbox.timeout")


def test_home_that_is_not_a_home(tmp_path: Path) -> None:
    _fails(agentd("run", "--home", str(tmp_path), "hi"), 2, "not an agentd home",
           "agentd init")


def test_missing_workdir(home: Path, tmp_path: Path) -> None:
    _fails(agentd("run", "--home", str(home), "-C", str(tmp_path / "nope"), "hi"), 2,
           "does not exist")


def test_no_prompt(home: Path) -> None:
    _fails(agentd("run", "--home", str(home), input=""), 2, "no prompt")


def test_init_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj/main.py").write_text("print(1)\n")
    _fails(agentd("init", str(tmp_path / "proj")), 2, "not empty")
    assert [p.name for p in (tmp_path / "proj").iterdir()] == ["main.py"]


def test_init_on_a_home_changes_nothing(home: Path) -> None:
    before = _snapshot(home)
    r = agentd("init", str(home))
    assert r.exit_code == 0 and "nothing changed" in r.stdout
    assert _snapshot(home) == before


def test_replay_file_broken(home: Path, workdir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", f"replay:{bad}",
                  "hi"), 2, "bad.jsonl:1")
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m",
                  f"replay:{tmp_path / 'missing.jsonl'}", "hi"), 2, "cannot read")


def test_replay_runs_out(home: Path, workdir: Path, tmp_path: Path) -> None:
    rec = tmp_path / "r.jsonl"
    rec.write_text(json.dumps({"role": "assistant", "tool_calls": [
        {"id": "1", "name": "bash", "arguments": {"command": "true"}}]}) + "\n")
    _fails(agentd("run", "--home", str(home), "-C", str(workdir), "-m", f"replay:{rec}",
                  "hi"), 1, "no reply left")
