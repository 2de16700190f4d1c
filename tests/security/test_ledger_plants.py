"""The runtime's files under `.agentd/` (the usage ledger, the daemon's and the bridge's
run records, the bridge's conversation index, the cool-down file) with a link planted at
their name. With `[sandbox] mode = "off"` bash runs on the host and can write `.agentd/`:
a symlink it puts at `usage.jsonl` must not make the host append its rows to a file out
of the home, and a rewrite (a compaction) must not write through a link planted at its
temp name."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from conftest import agentd
from daemonkit import configure
from fakellm import FakeLLM

from agentd import history, state
from agentd.bridge.conversations import Conversations
from agentd.bridge.store import Runs
from agentd.bridge.store import lock as store_lock
from agentd.llm.fallback import Breaker


def _bash(command: str) -> dict:
    return {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_link_at_the_ledger_never_redirects_its_rows(home: Path, workdir: Path,
                                                       fake: FakeLLM, tmp_path: Path) -> None:
    configure(home, sandbox={"mode": "off"})
    outside = tmp_path / "outside"
    outside.mkdir()
    ledger = home / ".agentd/usage.jsonl"
    # after the first call's row, the turn swaps the ledger for a dangling link out
    fake.push(_bash(f"rm -f {ledger} && ln -s {outside}/ledger {ledger} && echo swapped"),
              {"text": "done"})
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", "openai:test", "go")
    assert json.loads(r.stdout)["status"] == "ok", r.stderr
    assert list(outside.iterdir()) == []
    assert ledger.is_file() and not ledger.is_symlink()
    (row,) = _rows(ledger)  # the second call's row, in a fresh file
    assert row["model"] == "openai:test"


def test_run_records_and_the_conversation_index_stay_home(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "home/.agentd/bridge"
    folder.mkdir(parents=True)
    for name in ("runs.jsonl", "conversations.jsonl", "daemon-runs.jsonl"):
        (folder / name).symlink_to(outside / name)
    state.append_line(folder / "daemon-runs.jsonl", {"run": "r1"})
    Conversations(folder).record("chat-a", [], ["x"])
    runs = Runs(folder)
    runs.new("hook", "h", {"a": 1})
    runs.close()
    assert list(outside.iterdir()) == []
    assert _rows(folder / "daemon-runs.jsonl") == [{"run": "r1"}]
    assert _rows(folder / "conversations.jsonl")[0]["s"] == "chat-a"
    assert _rows(folder / "runs.jsonl")[0]["kind"] == "hook"


def test_a_compaction_never_writes_through_its_temp_name(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me\n")
    folder = tmp_path / "home/.agentd/bridge"
    folder.mkdir(parents=True)
    (folder / "runs.jsonl.tmp").symlink_to(outside / "victim")
    runs = Runs(folder)
    rid = runs.new("hook", "h", {})
    runs._compact()
    runs.close()
    assert (outside / "victim").read_text() == "keep me\n"
    assert [r.get("id") for r in _rows(folder / "runs.jsonl")][-1] == rid


def test_the_cooldown_file_is_never_written_or_read_through_a_plant(tmp_path: Path) -> None:
    """`.agentd/cooldowns.json`: its temp and lock names are not followed, and a FIFO in
    its place reads as no cool-downs instead of hanging the turn."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me\n")
    runtime = tmp_path / "home/.agentd"
    runtime.mkdir(parents=True)
    (runtime / "cooldowns.tmp").symlink_to(outside / "victim")
    (runtime / "cooldowns.lock").symlink_to(outside / "made-by-the-host")
    breaker = Breaker(runtime / "cooldowns.json")
    breaker.trip("openai:test", 60, 429, "slow down")
    assert (outside / "victim").read_text() == "keep me\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert breaker.until("openai:test") > 0
    (runtime / "cooldowns.json").unlink()
    os.mkfifo(runtime / "cooldowns.json")
    seen: list[float] = []
    reader = threading.Thread(target=lambda: seen.append(breaker.until("openai:test")),
                              daemon=True)
    reader.start()
    reader.join(10)
    assert seen == [0.0]


def test_lock_files_are_never_opened_through_a_plant(home: Path, tmp_path: Path) -> None:
    """A dangling link at a lock's name would have the host create its target (as root,
    `/etc/nologin` locks everyone else out): git's, a state file's and the bridge's locks
    replace it with a lock file of their own."""
    outside = tmp_path / "outside"
    outside.mkdir()
    runtime = home / ".agentd"
    (runtime / "daemon").mkdir(parents=True, exist_ok=True)
    (runtime / "bridge").mkdir(parents=True, exist_ok=True)
    for rel in ("git.lock", "daemon/cron.json.lock", "bridge/bridge.lock"):
        (runtime / rel).unlink(missing_ok=True)
        (runtime / rel).symlink_to(outside / rel.replace("/", "-"))
    history.pending(home, None)
    state.update(runtime / "daemon/cron.json", lambda d: d.update(ok=1))
    os.close(store_lock(runtime / "bridge/bridge.lock"))
    assert list(outside.iterdir()) == []
    for rel in ("git.lock", "daemon/cron.json.lock", "bridge/bridge.lock"):
        assert (runtime / rel).is_file() and not (runtime / rel).is_symlink()
    assert state.read(runtime / "daemon/cron.json") == {"ok": 1}


def test_git_info_files_are_never_appended_through_a_plant(home: Path, tmp_path: Path) -> None:
    """`.git/info/exclude` and `attributes` get agentd's blocks before git work; a link
    planted there (bash can write `.git/` with the sandbox off) is replaced, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me\n")
    info = home / ".git/info"
    for name in ("exclude", "attributes"):
        (info / name).unlink(missing_ok=True)
    (info / "exclude").symlink_to(outside / "victim")
    (info / "attributes").symlink_to(outside / "made-by-the-host")
    history.pending(home, None)
    assert (outside / "victim").read_text() == "keep me\n"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    for name in ("exclude", "attributes"):
        assert (info / name).is_file() and not (info / name).is_symlink()
    assert ".agentd/" in (info / "exclude").read_text()
