"""The config package and the home's layout: durations parsed once and named when bad
(through the real CLI), `Home`'s paths, one `--home` option, and imports that run one way."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import agentd
from fakellm import FakeLLM

from agentd.config import CONFIG_NAME, Duration, load_settings, parse_settings
from agentd.errors import AgentdError
from agentd.home import PROTECTED_DIRS, PROTECTED_NAMES, RUNTIME, Home

PACKAGE = Path(__file__).resolve().parent.parent / "agentd"


@pytest.mark.parametrize(("toml", "named"), [
    ('[heartbeat]\nevery = "soon"\n', "heartbeat.every: 'soon' is not a duration"),
    ('[daemon]\ncatch_up = "6"\n', "daemon.catch_up: '6' is not a duration"),
    ('[throttling]\ncooldown = "5 minutes"\n', "throttling.cooldown: '5 minutes' is not"),
    ('[bridge]\ndedupe_ttl = "0.05s"\n', "bridge.dedupe_ttl: '0.05s' is shorter than 0.1s"),
    ("[heartbeat]\ngate_timeout = 30\n", "heartbeat.gate_timeout must be a string, not 30"),
])
def test_a_bad_duration_stops_agentd_run_with_one_line_naming_it(
        home: Path, toml: str, named: str) -> None:
    (home / CONFIG_NAME).write_text(toml)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    r = subprocess.run([sys.executable, "-m", "agentd", "run", "--home", str(home), "hi"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {named}"), r.stderr


def test_durations_are_parsed_once_and_keep_their_text() -> None:
    s = parse_settings({"heartbeat": {"every": "1h30m"}, "daemon": {"catch_up": "2d"},
                        "throttling": {"max_retry_wait": "90s"}})
    assert s.heartbeat.every.seconds == 5400.0 and s.daemon.catch_up.seconds == 172800.0
    assert s.throttling.max_retry_wait.seconds == 90.0
    assert f"longer ago than catch_up ({s.daemon.catch_up})" == (
        "longer ago than catch_up (2d)")  # messages quote what the person wrote
    assert json.loads(json.dumps({"every": s.heartbeat.every})) == {"every": "1h30m"}
    defaults = parse_settings({})
    assert isinstance(defaults.bridge.header_timeout, Duration)
    assert [defaults.heartbeat.gate_timeout.seconds, defaults.throttling.cooldown.seconds,
            defaults.daemon.stop_timeout.seconds, defaults.bridge.dedupe_ttl.seconds] == [
                30.0, 300.0, 300.0, 172800.0]


def test_home_spells_the_layout(tmp_path: Path) -> None:
    h = Home(tmp_path)
    run = tmp_path / ".agentd"
    assert RUNTIME == ".agentd"
    assert h.config == tmp_path / "agentd.toml"
    assert h.ledger == run / "usage.jsonl" and h.cooldowns == run / "cooldowns.json"
    assert h.git_lock == run / "git.lock" and h.pid_file == run / "daemon.pid"
    assert h.daemon_log == run / "daemon.log"
    assert h.daemon_status == run / "daemon/status.json"
    assert h.runs_log == run / "daemon/runs.jsonl" and h.turn_marker == run / "daemon/turn.json"
    assert not run.exists()  # asking for a file's path creates nothing
    assert h.session("abc") == run / "sessions/abc.jsonl" and (run / "sessions").is_dir()
    assert h.daemon == run / "daemon" and h.daemon.is_dir()
    assert h.bridge == run / "bridge" and h.bridge.is_dir()
    assert set(PROTECTED_NAMES) == {".git", "agentd.toml", ".agentd"}
    assert set(PROTECTED_DIRS) == {".git", ".agentd"}


def _home_help(*command: str) -> str:
    r = agentd(*command, "--help")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    m = re.search(r"--home PATH (.*?) (?=-[-a-zA-Z])", text)  # up to the next option
    assert m, text
    return m.group(1)


def test_every_command_says_the_same_about_home() -> None:
    commands = [["run"], ["chat"], ["history"], ["show"], ["undo"], ["skills"], ["doctor"],
                ["daemon"], ["start"], ["stop"], ["status"], ["service"], ["cron"],
                ["cron", "run"], ["usage"], ["serve"]]
    helps = {" ".join(c): _home_help(*c) for c in commands}
    assert set(helps.values()) == {
        "The agent's home (default: $AGENTD_HOME, else the nearest parent folder holding "
        "agentd.toml, else ~/.agentd, which only a turn creates)."}, helps


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from agentd... import ...` in a file, TYPE_CHECKING and
    function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agentd"):
            found.append((node.module or "", [a.name for a in node.names]))
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [f"{p.relative_to(PACKAGE.parent)}: from {mod} import {name}"
               for p in PACKAGE.rglob("*.py") for mod, names in _imports(p)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_the_config_package_imports_one_way() -> None:
    order = ["values", "tables", "bridge", "calls", "costs", "settings"]  # each only from
    # before it
    allowed_below = {k: {"values", "tables"} for k in ("bridge", "calls", "costs")}
    for i, name in enumerate(order):
        below = allowed_below.get(name, set(order[:i]))
        for mod, _ in _imports(PACKAGE / "config" / f"{name}.py"):
            if mod.startswith("agentd.config"):
                assert mod.removeprefix("agentd.config.") in below, (name, mod)
    assert not [m for m, _ in _imports(PACKAGE / "config" / "template.py")]


def test_a_person_appends_to_the_generated_file_and_it_loads(tmp_path: Path,
                                                             fake: FakeLLM) -> None:
    """`agentd init`'s file declares no live table, so a top-level `model = …` appended at
    the end (as the init message invites), then a person's own `[bridge]` block, both load:
    `agentd run` answers with that model and the bridge port is theirs."""
    home = tmp_path / "fresh"
    assert agentd("init", str(home)).exit_code == 0
    assert not re.search(r"^\s*\[", (home / CONFIG_NAME).read_text(), re.M)
    with (home / CONFIG_NAME).open("a") as f:
        f.write('model = "openai:test"\n\n[bridge]\nport = 8799\nshow_tools = true\n')
    fake.push({"text": "Hello from the appended model."})
    r = agentd("run", "--home", str(home), "-q", "hi")
    assert r.exit_code == 0 and r.stdout.strip() == "Hello from the appended model.", r.stderr
    s = load_settings(home)
    assert (s.model, s.bridge.port, s.bridge.show_tools) == ("openai:test", 8799, True)


@pytest.mark.parametrize(("toml", "error"), [
    ('[bridge]\nport = 8800\nmodel = "a:b"\n',
     "unknown setting bridge.model: `model` belongs at the top of agentd.toml, before any "
     "[table]"),
    ('every = "1h"\n', "unknown setting every: `every` belongs in [heartbeat]"),
    ('[heartbeat]\ncatch_up = "1h"\n', "unknown setting heartbeat.catch_up: `catch_up` "
     "belongs in [daemon]"),
    ("[bridge.slack]\nchats = [1]\n", "`chats` belongs in [bridge.telegram]"),
    ("[bridge]\nnope = 1\n", "unknown setting bridge.nope in agentd.toml (known: enabled,"),
])
def test_a_key_in_the_wrong_table_is_told_where_it_belongs(home: Path, toml: str,
                                                          error: str) -> None:
    (home / CONFIG_NAME).write_text(toml)
    r = agentd("run", "--home", str(home), "hi")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and error in r.stderr, r.stderr


def test_settings_load_the_compat_profiles_only_for_a_provider_with_one(tmp_path: Path) -> None:
    """agentd/llm/compat.py (~20 ms) is not imported by a turn of a home whose providers
    set no `profile`; a bad profile is still refused by name."""
    code = ("import sys\nfrom agentd.config import parse_settings\nimport agentd.turn\n"
            "parse_settings({'providers': {'lm': {'base_url': 'http://x/v1'}}})\n"
            "print('agentd.llm.compat' in sys.modules)\n"
            "parse_settings({'providers': {'lm': {'profile': 'vllm'}}})\n"
            "print('agentd.llm.compat' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent).stdout
    assert out.split() == ["False", "True"]
    with pytest.raises(AgentdError, match=r"providers\.lm\.profile must be one of"):
        parse_settings({"providers": {"lm": {"profile": "nope"}}})
