"""Simon Willison's `llm` CLI, a stateless client (no `user` field, no session header),
against a real `agentd serve`: a prompt, `llm -c` and a new prompt must be two
conversations, told apart by the history `llm` sends back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bridgekit import TOKEN, ServeProcess, bridge_env, bridge_home
from fakellm import FakeLLM

LLM = Path(sys.executable).with_name("llm")


def llm_user_path(tmp: Path, url: str) -> Path:
    """An LLM_USER_PATH with agentd as an extra OpenAI-compatible model and its token."""
    folder = tmp / "llm-user"
    folder.mkdir()
    (folder / "extra-openai-models.yaml").write_text(
        f"- model_id: agentd\n  model_name: agentd\n  api_base: {url}/v1\n"
        "  api_key_name: agentd\n")
    (folder / "keys.json").write_text(json.dumps({"agentd": TOKEN}))
    return folder


def ask(user_path: Path, *args: str) -> str:
    env = {"LLM_USER_PATH": str(user_path), "PATH": "/usr/bin:/bin",
           "HOME": str(user_path), "NO_PROXY": "127.0.0.1"}
    done = subprocess.run([str(LLM), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def conversation(fake: FakeLLM, n: int) -> str:
    """What the agent's model received in its n-th call, without the system prompt."""
    posts = [r for r in fake.requests if r.method == "POST"]
    return json.dumps([m for m in posts[n].body["messages"] if m["role"] != "system"])


def test_llm_prompt_continue_and_new_prompt(home: Path, fake: FakeLLM, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    fake.push({"text": "Remembered: the ship is called Argo."}, {"text": "It is Argo."},
              {"text": "A new chat."})
    with ServeProcess(bridge_home(home)) as serve:
        path = llm_user_path(tmp_path, serve.url)
        assert ask(path, "-m", "agentd", "the ship is called Argo") == (
            "Remembered: the ship is called Argo.")
        assert ask(path, "-c", "what is the ship called?") == "It is Argo."
        assert ask(path, "-m", "agentd", "tell me something new") == "A new chat."
    second, third = conversation(fake, 1), conversation(fake, 2)
    assert "the ship is called Argo" in second and "Remembered" in second
    assert "Argo" not in third and "tell me something new" in third
    sessions = sorted(p.name for p in (home / ".agentd/sessions").glob("chat-*.jsonl"))
    assert len(sessions) == 2, sessions
