"""`agentd doctor` on this host, and on hostile ones: no bwrap, a broken bwrap, no git, no
home, a read-only home. Checks what it prints, its JSON and its exit status."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import agentd, requires_bwrap
from fakellm import FakeLLM

from agentd import doctor as doc
from agentd.tools import sandbox as sb


def checks(home: Path, *extra: str) -> tuple[int, dict[str, dict]]:
    r = agentd("doctor", "--json", "--home", str(home), *extra)
    data = json.loads(r.stdout)
    assert data["ok"] == (r.exit_code == 0)
    return r.exit_code, {c["name"]: c for c in data["checks"]}


@requires_bwrap
def test_healthy_host(fake: FakeLLM, home: Path) -> None:
    code, c = checks(home)
    assert code == 0
    for name in ("home", "git", "config", "bubblewrap", "seccomp", "capabilities",
                 "limit: memory", "limit: processes"):
        assert c[name]["status"] == "ok", c[name]
    assert "Seccomp: 2" in c["seccomp"]["detail"]
    assert c["sandbox user"]["status"] == "ok" and c["root-only files"]["status"] == "ok"
    if os.geteuid() == 0:
        assert c["sandbox user"]["detail"].startswith("uid 65534 (nobody)")
        assert "/etc/shadow" in c["root-only files"]["detail"]
    assert c["key: openai"]["detail"] == "OPENAI_API_KEY is set"
    assert c["key: ollama"]["detail"] == "needs no key"
    assert not any(name.startswith("reach:") for name in c)
    assert fake.requests == []  # offline unless asked
    table = agentd("doctor", "--home", str(home))
    assert table.exit_code == 0 and "nothing required is broken" in table.stdout
    assert "KEYVALUE" not in table.stdout + json.dumps(c)  # key values are never shown


def test_unknown_sandbox_user_is_a_config_error(home: Path) -> None:
    (home / "agentd.toml").write_text('[sandbox]\nuid = "no-such-user-here"\n')
    code, c = checks(home)
    assert code == 1 and "no user named 'no-such-user-here'" in c["config"]["detail"]


def test_missing_key_is_a_warning(home: Path) -> None:
    c = checks(home)[1]
    assert c["key: anthropic"]["status"] == "warn"
    assert "export ANTHROPIC_API_KEY" in c["key: anthropic"]["fix"]


def test_missing_bwrap_is_broken(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sb, "find_bwrap", lambda: None)
    code, c = checks(home)
    assert code == 1 and c["bubblewrap"]["status"] == "fail" and c["bubblewrap"]["required"]
    assert "apt-get install bubblewrap" in c["bubblewrap"]["fix"]
    table = agentd("doctor", "--home", str(home))
    assert table.exit_code == 1 and "broken: bubblewrap" in table.stdout


def test_broken_bwrap_is_broken(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sb, "find_bwrap", lambda: "/bin/false")
    code, c = checks(home)
    assert code == 1 and "failed a trivial launch" in c["bubblewrap"]["detail"]


def test_sandbox_off_is_a_loud_warning_not_a_failure(home: Path) -> None:
    (home / "agentd.toml").write_text('[sandbox]\nmode = "off"\n')
    code, c = checks(home)
    assert code == 0 and c["sandbox"]["status"] == "warn"
    assert c["bubblewrap"]["status"] == "warn"
    assert "sandbox is off" in c["sandbox"]["detail"]


def test_full_network_is_a_warning(home: Path) -> None:
    (home / "agentd.toml").write_text('[sandbox]\nnetwork = "full"\n')
    c = checks(home)[1]
    assert c["sandbox"]["status"] == "warn" and '"full"' in c["sandbox"]["detail"]


def test_bad_config_is_broken(home: Path) -> None:
    (home / "agentd.toml").write_text('[sandbox]\nnetwork = "allowlist"\n')
    code, c = checks(home)
    assert code == 1 and c["config"]["status"] == "fail"


def test_missing_git_is_broken(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(doc.shutil, "which", lambda n: None if n == "git" else real(n))
    code, c = checks(home)
    assert code == 1 and c["git"]["status"] == "fail" and "apt-get install git" in c["git"]["fix"]


def test_no_home_is_broken_and_none_is_created(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = agentd("doctor", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1 and data["checks"][0]["name"] == "home"
    assert "agentd init" in data["checks"][0]["fix"]
    assert not (Path(os.environ["HOME"]) / ".agentd").exists()


def test_unprocessed_limits_are_reported(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentd.tools import limits

    monkeypatch.setattr(limits, "pids_base", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    c = checks(home)[1]  # root without a pids cgroup: the sandbox uid's RLIMIT_NPROC holds
    assert c["limit: processes"]["status"] == "ok"
    assert "more than uid 65534 runs now (RLIMIT_NPROC)" in c["limit: processes"]["detail"]
    (home / "agentd.toml").write_text('[sandbox]\nmode = "off"\n')  # unsandboxed root
    c = checks(home)[1]
    assert c["limit: processes"]["status"] == "warn"
    assert "NOT enforced" in c["limit: processes"]["detail"]


def test_read_only_home_is_broken(home: Path) -> None:
    """A real read-only bind mount in a private mount namespace (root can write through
    chmod, so permissions alone would prove nothing)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        assert doc._write_problem(Path("/proc")) is not None
        return
    script = (f"mount --bind {home} {home} && mount -o remount,ro,bind {home} && "
              f"exec {sys.executable} -m agentd doctor --json --home {home}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "AGENTD_HOME": ""})
    data = json.loads(r.stdout)
    home_check = {c["name"]: c for c in data["checks"]}["home"]
    assert r.returncode == 1 and home_check["status"] == "fail"
    assert "Read-only file system" in home_check["detail"]


def test_online_checks_reach_key_and_model(fake: FakeLLM, home: Path) -> None:
    """A good key and a served model: each its own ok line; only GETs, keys never shown."""
    fake.models = ["claude-sonnet-5-5", "gpt-5.4-mini"]
    fake.key = "sk-ant-test-KEYVALUE"
    (home / "agentd.toml").write_text('model = "anthropic:claude-sonnet-5-5"\n')
    code, c = checks(home, "--online")
    assert c["reach: anthropic"]["status"] == "ok"
    assert c["auth: anthropic"]["status"] == "ok", c["auth: anthropic"]
    assert "ANTHROPIC_API_KEY works (2 models listed)" in c["auth: anthropic"]["detail"]
    assert c["model: anthropic:claude-sonnet-5-5"]["status"] == "ok"
    assert c["reach: ollama"]["status"] == "warn"  # nothing listens on localhost:11434
    assert {q.method for q in fake.requests} == {"GET"}
    assert {q.path for q in fake.requests} == {"/v1/models"}
    sent = [q.headers.get("x-api-key") for q in fake.requests if "anthropic-version" in
            q.headers]
    assert sent == ["sk-ant-test-KEYVALUE"]  # to its own provider only
    # openai's key differs from fake.key: refused, but openai is not in use, so a warning
    assert c["auth: openai"]["status"] == "warn" and "HTTP 401" in c["auth: openai"]["detail"]
    assert code == 0
    table = agentd("doctor", "--online", "--home", str(home))
    assert "KEYVALUE" not in table.stdout + json.dumps(c)


def test_online_a_refused_key_is_broken(fake: FakeLLM, home: Path) -> None:
    fake.key = "another-key"
    (home / "agentd.toml").write_text('model = "openai:fake-model"\n')
    code, c = checks(home, "--online")
    assert code == 1 and c["reach: openai"]["status"] == "ok"
    auth = c["auth: openai"]
    assert auth["status"] == "fail" and auth["required"]
    assert auth["detail"] == "OPENAI_API_KEY was refused (HTTP 401)"
    assert not any(name.startswith("model:") for name in c)  # not checkable without a key


def test_online_an_unknown_model_is_broken(fake: FakeLLM, home: Path) -> None:
    (home / "agentd.toml").write_text('model = "openai:gtp-5.4"\nfallbacks = '
                                      '["anthropic:fake-model"]\n')
    code, c = checks(home, "--online")
    assert code == 1
    assert c["auth: openai"]["status"] == "ok" and c["auth: anthropic"]["status"] == "ok"
    bad = c["model: openai:gtp-5.4"]
    assert bad["status"] == "fail" and "not served by openai: it lists fake-model" in bad["detail"]
    assert c["model: anthropic:fake-model"]["status"] == "ok"
    assert "/v1/models/gtp-5.4" in {q.path for q in fake.requests}  # looked up by name too


def test_online_a_closed_port_and_a_wrong_base_url(fake: FakeLLM, home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed.getsockname()[1]}/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_url + "/nothing-here")
        (home / "agentd.toml").write_text('model = "openai:fake-model"\n'
                                          'fallbacks = ["anthropic:fake-model"]\n')
        code, c = checks(home, "--online")
    assert code == 1
    reach = c["reach: openai"]
    assert reach["status"] == "fail" and "Connection refused" in reach["detail"]
    assert "auth: openai" not in c and "model: openai:fake-model" not in c
    wrong = c["reach: anthropic"]
    assert wrong["status"] == "fail" and "answered HTTP 404" in wrong["detail"]
    assert "base_url" in wrong["fix"]
