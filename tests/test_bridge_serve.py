"""`agentd serve` and the daemon's `[bridge] enabled = true` as real processes, the
`[bridge]` settings, and the bridge staying out of `agentd --help`'s imports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx2
import openai
import pytest
from bridgekit import TOKEN, ServeProcess, bridge_env, bridge_home, signed
from conftest import agentd
from daemonkit import (
    AGENTD,
    Daemon,
    commit_settings,
    configure,
    git,
    model_requests,
    request_threads,
    settle_fake,
    uncommitted,
    wait_for,
)
from fakellm import FakeLLM

from agentd.config import parse_settings
from agentd.errors import AgentdError

AUTH = {"authorization": f"Bearer {TOKEN}"}


def listening(log: Path) -> str:
    m = wait_for(lambda: re.search(r"listening on (http://127.0.0.1:\d+)", log.read_text()),
                 20, "the bridge to listen")
    return m.group(1)


def test_agentd_serve_answers_and_stops_cleanly(home: Path, fake: FakeLLM, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    monkeypatch.delenv("AGENTD_BRIDGE_TOKEN")
    token_file = tmp_path / "userhome-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    bridge_home(home, token_file=str(token_file))
    fake.push({"text": "served", "delay": 0.5})
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([*AGENTD, "serve", "--home", str(home), "--port", "0"],
                                stderr=err, env=dict(os.environ))
    try:
        url = listening(log)
        assert "is readable by other users (chmod 600 it)" in log.read_text()
        assert httpx2.get(f"{url}/healthz").json() == {"ok": True}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
        result: list[str] = []

        import threading

        t = threading.Thread(target=lambda: result.append(client.chat.completions.create(
            model="agentd", messages=[{"role": "user", "content": "hi"}]).choices[0]
            .message.content or ""))
        t.start()
        wait_for(lambda: "turn started" in log.read_text(), 10, "the turn")
        proc.send_signal(signal.SIGTERM)  # lets the running turn finish and answer
        t.join(20)
        assert result == ["served"]
        assert proc.wait(20) == 0
        text = log.read_text()
        assert "bridge: stopped" in text and TOKEN not in text
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_chat_whose_turn_outlasts_the_grace_still_gets_its_answer(
        home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping lets the running turn answer the client waiting on it, however long the
    turn still takes: uvicorn's own grace for requests in flight (GRACE) starts after it.
    (It used to cut the chat when the turn's commit outlasted GRACE on a loaded machine.)"""
    import threading

    from bridgekit import BridgeHost

    from agentd.bridge import server

    monkeypatch.setattr(server, "GRACE", 0.1)
    bridge_env(monkeypatch)
    bridge_home(home)
    fake.push({"text": "late but whole", "delay": 1.5})
    result: list[httpx2.Response | BaseException] = []

    def ask(url: str) -> None:
        try:
            result.append(httpx2.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=60,
                                      json={"model": "agentd", "messages": [
                                          {"role": "user", "content": "hi"}]}))
        except BaseException as e:
            result.append(e)

    with BridgeHost(home) as host:
        t = threading.Thread(target=ask, args=(host.url,))
        t.start()
        wait_for(lambda: "turn started" in host.log, 20, "the turn")
        host.stop()
        t.join(60)
    [r] = result
    assert isinstance(r, httpx2.Response), r
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == (
        "late but whole")


def test_the_daemon_runs_the_bridge_in_its_loop(home: Path, fake: FakeLLM,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    bridge_home(home, enabled=True, port=0)
    commit_settings(home)
    fake.push({"text": "from the daemon"}, {"text": "hook done"})
    with Daemon(home) as d:
        d.ready()
        url = listening(d.log_path)
        r = httpx2.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=20, json={
            "messages": [{"role": "user", "content": "hi"}]})
        assert r.json()["choices"][0]["message"]["content"] == "from the daemon"
        body = json.dumps({"a": 1}).encode()
        rid = httpx2.post(f"{url}/hooks/x", content=body, headers=signed(body)).json()["id"]
        wait_for(lambda: httpx2.get(f"{url}/runs/{rid}", headers=AUTH).json()["status"]
                 == "done", 20, "the hook's run")
        status = json.loads(agentd("status", "--home", str(home), "--json").stdout)
        assert status["running"]
        assert d.stop() == 0
    assert "bridge: listening" in d.log and "daemon: stopped" in d.log


def test_the_daemon_refuses_to_start_a_bridge_without_a_token(home: Path) -> None:
    bridge_home(home, enabled=True, port=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    r = subprocess.run([*AGENTD, "daemon", "--home", str(home)], capture_output=True,
                       text=True, env=env, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: bridge: no token")


def test_help_does_not_import_the_bridge() -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom agentd.cli import cli\n"
            "CliRunner().invoke(cli, ['--help'])\nCliRunner().invoke(cli, ['serve', '--help'])\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'httpx2') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("table,message", [
    ({"nope": 1}, "unknown setting bridge.nope"),
    ({"port": 70000}, "bridge.port must be between 0 and 65535"),
    ({"dedupe_ttl": "1h"}, "at least 24h"),
    ({"hooks": {"bad name": {}}}, "a hook name is 1-64"),
    ({"hooks": {"ok": {"callback_url": "ftp://x"}}}, "must be an http(s) URL"),
    ({"telegram": {"chats": ["abc"]}}, "bridge.telegram.chats[0] must be a number"),
    ({"slack": {"api_base": "slack.com"}}, "bridge.slack.api_base must be an http(s) URL"),
    ({"max_json_depth": 1}, "between 2 and 512"),
    ({"header_timeout": "10"}, "bridge.header_timeout: '10' is not a duration"),
    ({"header_timeout": "0.5s"}, "bridge.header_timeout must be between 1s and 10m"),
    ({"max_connections_per_ip": 0}, "max_connections_per_ip must be at least 1"),
    ({"max_connections": 8}, "max_connections at least 16"),
])
def test_bridge_settings_are_strict(table: dict, message: str) -> None:
    with pytest.raises(AgentdError, match=re.escape(message)):
        parse_settings({"bridge": table})


def test_bridge_settings_parse() -> None:
    s = parse_settings({"bridge": {"enabled": True, "port": 9000, "trusted_proxies": ["::1"],
                                   "hooks": {"gh": {"prompt": "Triage {event}"}},
                                   "telegram": {"enabled": True, "chats": [1, -2],
                                                "owners": [1]},
                                   "slack": {"users": ["U1"], "api_base": "http://x/api/"}}})
    b = s.bridge
    assert (b.enabled, b.port, b.trusted_proxies, b.hooks["gh"].prompt) == (
        True, 9000, ["::1"], "Triage {event}")
    assert (b.telegram.chats, b.telegram.owners, b.slack.api_base) == (
        [1, -2], [1], "http://x/api")
    assert parse_settings({}).bridge.enabled is False


def test_the_default_agentd_toml_documents_the_bridge_defaults() -> None:
    """Uncommenting every documented [bridge] line gives exactly the built-in defaults."""
    import tomllib

    from agentd.config import DEFAULT_CONFIG

    section = DEFAULT_CONFIG.split("\n# [bridge]\n", 1)[1]
    lines = ["[bridge]"] + [re.sub(r"\s+#.*$", "", line[2:]) for line in section.splitlines()
                            if line.startswith("# ") and (" = " in line or line[2:3] == "[")]
    data = tomllib.loads("\n".join(lines))
    hook = data["bridge"].pop("hooks")["github"]
    documented = parse_settings(data).bridge
    assert documented == parse_settings({}).bridge
    from agentd.config import HookSettings

    assert HookSettings(**hook) == HookSettings()


def test_one_bridge_per_home_and_a_taken_port_is_one_line(
        home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridgekit import BridgeHost

    bridge_env(monkeypatch)
    bridge_home(home)
    with BridgeHost(home) as first:
        with pytest.raises(AgentdError, match="already serves this home's bridge"):
            BridgeHost(home)
        port = first.url.rsplit(":", 1)[1]
        other = home.parent / "other"
        from agentd.newhome import init_home

        init_home(other)
        bridge_home(other)
        r = agentd("serve", "--home", str(other), "--port", port)
        assert r.exit_code == 2
        assert r.stderr.startswith(f"error: bridge: cannot listen on 127.0.0.1:{port} (")
        assert len(r.stderr.strip().splitlines()) == 1


def _chat(url: str, text: str = "hi", timeout: float = 30) -> httpx2.Response:
    return httpx2.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=timeout,
                       json={"messages": [{"role": "user", "content": text}]})


def test_serve_is_the_daemon_with_heartbeat_cron_and_inbox_off(
        home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Work the daemon would take at once (an inbox file, a cron job and a heartbeat item due
    every half second) stays untouched while serve answers a chat that takes 1.5 s. It holds
    the daemon's pid lock: status shows it and its bridge, start refuses, stop stops it."""
    bridge_env(monkeypatch)
    bridge_home(home)
    toml = home / "agentd.toml"
    toml.write_text(toml.read_text().replace('every = "1h"', 'every = "0.3s"', 1))
    assert parse_settings(tomllib.loads(toml.read_text())).heartbeat.every == "0.3s"
    with (home / "memory/HEARTBEAT.md").open("a") as f:
        f.write("\n- Look around.\n  every: 0.5s\n")
    (home / "cron/ping.md").write_text("---\nevery: 0.5s\n---\nPing.\n")
    (home / "inbox/hello.txt").write_text("Hello.\n")
    fake.push({"text": "served", "delay": 1.5})
    with ServeProcess(home) as serve:
        info = json.loads(agentd("status", "--home", str(home), "--json").stdout)
        assert info["running"] and info["pid"] == serve.proc.pid
        assert info["daemon"]["serve"] and info["daemon"]["bridge"]["url"] == serve.url
        text = agentd("status", "--home", str(home)).stdout
        assert f"agentd serve: running (pid {serve.proc.pid}, up " in text
        assert "heartbeat, cron and inbox: off (agentd serve)" in text
        assert f"bridge: listening on {serve.url}" in text
        for command in ("start", "serve"):
            r = agentd(command, "--home", str(home))
            assert r.exit_code == 1 and r.stderr.count("\n") == 1
            assert f"already running for {home} (pid {serve.proc.pid})" in r.stderr
        assert _chat(serve.url).json()["choices"][0]["message"]["content"] == "served"
        r = agentd("stop", "--home", str(home))
        assert r.exit_code == 0 and f"agentd stopped (pid {serve.proc.pid})" in r.stdout
        assert serve.proc.wait(20) == 0
        log = serve.log
    assert (f"serve: started (pid {serve.proc.pid}) for {home}: the bridge alone; heartbeat, "
            "cron and inbox are off") in log
    assert "serve: SIGTERM: stopping" in log and log.rstrip().endswith("serve: stopped")
    assert not re.search(r" (heartbeat|cron|inbox|watch): ", log), log
    assert len(model_requests(fake)) == 1
    assert (home / "inbox/hello.txt").exists() and not (home / "outbox/hello.md").exists()
    daemon_dir = home / ".agentd/daemon"
    assert not (daemon_dir / "cron.json").exists()
    assert not (daemon_dir / "heartbeat.json").exists()
    assert not list(daemon_dir.glob("inbox/*"))  # the inbox's claims and retries
    assert not (daemon_dir / "status.json").exists()


def test_serve_reloads_agentd_toml_on_sighup(home: Path, fake: FakeLLM,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    bridge_home(home)
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]})
    with ServeProcess(home) as serve:
        def post() -> int:
            return httpx2.post(f"{serve.url}/v1/chat/completions", content=big,
                               headers={"content-type": "application/json"}).status_code

        assert post() == 401  # under the 1 MiB cap: refused for its missing token
        configure(home, bridge={"max_body": 1024})
        serve.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config: SIGHUP: reloaded (bridge changed)" in serve.log, 10,
                 "the reload")
        assert post() == 413
        configure(home, bridge={"port": 1})
        serve.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "bridge.host and bridge.port take effect at the next start"
                 in serve.log, 10, "the second reload")
        assert httpx2.get(f"{serve.url}/healthz").json() == {"ok": True}


def test_a_second_sigterm_interrupts_serves_turn_and_commits_its_work(
        home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    bridge_env(monkeypatch)
    bridge_home(home)
    commit_settings(home)
    held = threading.Event()
    fake.push({"tool_calls": [{"name": "write", "arguments": {
                "path": "notes/served.md", "content": "half done\n"}}]},
              {"hold": held, "text": "never"})  # answered only once serve has exited
    threads = request_threads()
    with ServeProcess(home) as serve:
        client = threading.Thread(target=_quiet_chat, args=(serve.url,))
        client.start()
        wait_for(lambda: len(model_requests(fake)) == 2, 20, "the turn's second model call")
        serve.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "letting the running person turn" in serve.log, 10, "the first stop")
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(30) == 0
        held.set()
        client.join(30)
        log = serve.log
    assert "serve: SIGTERM again: interrupting the running turn" in log
    assert "serve: the running turn was interrupted; it committed what it did" in log
    assert (home / "notes/served.md").read_text() == "half done\n"
    sha = git(home, "log", "-1", "--format=%H", "--", "notes/served.md").strip()
    assert "Agentd-Trigger: chat:" in git(home, "show", "-s", "--format=%B", sha)
    assert uncommitted(home) == []
    settle_fake(threads)


def _quiet_chat(url: str) -> None:
    """A chat whose turn is interrupted: the reply may be an error or a dropped line."""
    with contextlib.suppress(httpx2.HTTPError):
        _chat(url, "write it")


def test_serve_beside_a_daemon_serving_the_bridge_is_one_line(
        home: Path, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    bridge_home(home, enabled=True, port=0)
    commit_settings(home)
    with Daemon(home) as d:
        d.ready()
        url = listening(d.log_path)
        text = agentd("status", "--home", str(home)).stdout
        assert "agentd daemon: running" in text and f"bridge: listening on {url}" in text
        r = subprocess.run([*AGENTD, "serve", "--home", str(home), "--port", "0"],
                           capture_output=True, text=True, timeout=30, env=dict(os.environ))
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: agentd is already running for {home} (pid "
                                   f"{d.proc.pid})")
        assert d.stop() == 0
