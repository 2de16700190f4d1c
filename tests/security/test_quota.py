"""Strangers kept apart (issue 10, §4): an untrusted turn's disk quota.

One webhook turn once filled a home with 1.2 GB, half of it committed. Each attack runs as
an untrusted turn (TurnRequest(profile="untrusted"), as webhooks, inbox files and non-owner
chat senders get) through the real loop, the real OpenAI SDK against the fake server, real
bubblewrap and real git, and checks the disk, the commit and what the model was told."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from attack import set_sandbox
from conftest import requires_bwrap
from daemonkit import wait_for
from fakellm import FakeLLM

from agentd.config import DEFAULT_CONFIG, QuotaSettings, load_settings, parse_settings
from agentd.errors import AgentdError
from agentd.llm.types import Message
from agentd.loop import Events
from agentd.quota import MB, tree_bytes
from agentd.turn import TurnReport, TurnRequest, run_turn

MODEL = "openai:gpt-5.4-mini"


def set_quota(home: Path, **values: int) -> None:
    """A [quota] table in the home's agentd.toml (the default file only documents it).
    Compaction is off: a megabyte written with the write tool is a quarter of a million
    tokens, and a summary would take a scripted reply."""
    with (home / "agentd.toml").open("a") as f:
        f.write("\n[compaction]\nenabled = false\n[quota]\n"
                + "".join(f"{k} = {v}\n" for k, v in values.items()))
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "quota")


def git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout


def turn(fake: FakeLLM, home: Path, *calls: dict[str, Any], profile: str = "untrusted"
         ) -> tuple[TurnReport, list[str]]:
    """One turn making `calls`, one model step each, then "done"; returns the report and
    what the model was shown for each call."""
    fake.push(*({"tool_calls": [c]} for c in calls), {"text": "done"})
    before = len(fake.requests)
    req = TurnRequest("a stranger's request", home, trigger="webhook:test", model=MODEL,
                      profile=profile)
    report = asyncio.run(run_turn(home, load_settings(home), req, Events(), base=home))
    assert report.ok, report.result
    last = [q for q in fake.requests[before:] if q.method == "POST"][-1].body["messages"]
    return report, [m["content"] for m in last if m["role"] == "tool"]


def bash(command: str) -> dict[str, Any]:
    return {"name": "bash", "arguments": {"command": command}}


def write(path: str, content: str) -> dict[str, Any]:
    return {"name": "write", "arguments": {"path": path, "content": content}}


def committed(home: Path, sha: str) -> dict[str, int]:
    """The files a commit added or changed, with their sizes in it."""
    names = git(home, "show", "--format=", "--name-only", "--diff-filter=AM", sha).split()
    return {n: int(git(home, "cat-file", "-s", f"{sha}:{n}")) for n in names}


def in_history(home: Path, name: str) -> bool:
    return bool(git(home, "log", "--all", "--format=%H", "--", name).strip())


@requires_bwrap
def test_a_flood_into_outbox_is_cut_back_to_the_quota(fake: FakeLLM, home: Path) -> None:
    set_sandbox(home, file_size_mb=64)
    before = tree_bytes(home)
    flood = ("cd outbox && for i in $(seq -w 1 30); do head -c 1M /dev/urandom > f$i.bin; "
             "done; head -c 10G /dev/zero > huge.bin; ls | wc -l")
    report, seen = turn(fake, home, bash(flood))
    # the model is told, in that call's result, what went and why
    assert "File size limit exceeded" in seen[0]  # the per-command cap stopped huge.bin
    assert "over the untrusted disk quota (20 MB, 100 files per turn)" in seen[0]
    assert "removed outbox/huge.bin, outbox/f30.bin, outbox/f29.bin" in seen[0]
    assert "(11 files, 74.0 MB)" in seen[0] and "keeps 20 files, 20.0 MB" in seen[0]
    assert report.tool_calls[0]["is_error"]
    # the newest excess is gone from disk; what fits is kept
    kept = sorted(p.name for p in (home / "outbox").iterdir() if p.name != ".gitkeep")
    assert kept == [f"f{i:02d}.bin" for i in range(1, 21)]
    # the commit holds no more than the quota, and the excess never reached history
    files = committed(home, report.commit or "")
    outbox = {n: s for n, s in files.items() if n.startswith("outbox/")}
    assert sorted(outbox) == [f"outbox/{n}" for n in kept]
    assert sum(outbox.values()) <= 20 * MB
    assert not in_history(home, "outbox/huge.bin") and not in_history(home, "outbox/f21.bin")
    # the home grew by the kept files and their blobs, not by the 94 MB written
    assert tree_bytes(home) - before < 45 * MB


@requires_bwrap
def test_too_many_files_and_a_deep_tree_are_cut_back(fake: FakeLLM, home: Path) -> None:
    set_quota(home, untrusted_outbox_files=100)
    deep = "/".join(["d"] * 60)
    report, seen = turn(fake, home,
                        bash("mkdir outbox/many && cd outbox/many && "
                             "for i in $(seq 1000 1149); do echo $i > $i; done"),
                        bash(f"mkdir -p outbox/{deep} && head -c 25M /dev/zero > "
                             f"outbox/{deep}/x"))
    assert "over the untrusted disk quota (20 MB, 100 files per turn)" in seen[0]
    assert "removed outbox/many/1149, outbox/many/1148" in seen[0] and "(51 files" in seen[0]
    many = sorted(p.name for p in (home / "outbox/many").iterdir())
    assert many == [str(i) for i in range(1000, 1099)]  # 99 files + the folder = 100
    # a tree deeper than the walk goes is never measured, so it is removed whole, with the
    # 25 MB hidden at its bottom
    assert "removed outbox/" + "/".join(["d"] * 48) + ", " in seen[1]
    assert not (home / "outbox/d").exists()
    assert not [n for n in committed(home, report.commit or "") if n.startswith("outbox/d/")]
    assert not in_history(home, f"outbox/{deep}/x")


@requires_bwrap
def test_links_are_counted_never_followed(fake: FakeLLM, home: Path, tmp_path: Path) -> None:
    """A link in outbox/ to a big host folder is neither measured through nor emptied by
    the clean-up, even when the clean-up runs."""
    victim = tmp_path / "victim"
    victim.mkdir()
    for i in range(5):
        (victim / f"keep{i}").write_bytes(os.urandom(MB))
    set_quota(home, untrusted_outbox_mb=3)
    _, seen = turn(fake, home, bash(f"ln -s {victim} outbox/link && ln -s {victim}/keep0 "
                                    "outbox/one && head -c 2M /dev/urandom > outbox/a"),
                   bash("head -c 2M /dev/urandom > outbox/b"))
    assert "over the untrusted disk quota" not in seen[0]  # 2 MB and two links: under 3 MB
    assert "removed outbox/b " in seen[1]
    assert sorted(p.name for p in victim.iterdir()) == [f"keep{i}" for i in range(5)]
    assert (home / "outbox/link").is_symlink() and (home / "outbox/a").exists()


class _AtTheEnd(Events):
    """When the model gives its final answer (after the last tool call's check), lets a
    writer left running outside the sandbox go, and waits until it has written."""

    def __init__(self, go: Path, written: Path):
        self.go, self.written = go, written

    def message(self, msg: Message) -> None:
        if msg.role == "assistant" and not msg.tool_calls:
            self.go.touch()
            wait_for(self.written.exists, what="the late writer")


def test_writes_after_the_last_check_are_cut_before_the_commit(fake: FakeLLM, home: Path,
                                                                tmp_path: Path) -> None:
    """With the sandbox off nothing stops a process from outliving its command; the last
    check, just before the commit, still keeps its bytes out of history."""
    set_sandbox(home, mode="off", processes=0)  # no pids cgroup: a setsid child lives on
    set_quota(home)
    go, written = tmp_path / "go", tmp_path / "written"
    late = (f"while [ ! -e {go} ]; do sleep 0.05; done; "
            f"head -c 25M /dev/zero > outbox/late.bin; touch {written}")
    fake.push({"tool_calls": [bash(f"setsid sh -c '{late}' >/dev/null 2>&1 </dev/null & "
                                   "echo started")]}, {"text": "done"})
    req = TurnRequest("a stranger's request", home, trigger="webhook:test", model=MODEL,
                      profile="untrusted")
    try:
        report = asyncio.run(run_turn(home, load_settings(home), req, _AtTheEnd(go, written),
                                      base=home))
    finally:
        go.touch()  # the writer ends either way
    assert report.ok and written.exists()
    assert not (home / "outbox/late.bin").exists()
    assert not in_history(home, "outbox/late.bin")


def test_the_write_tool_refuses_a_write_over_the_quota(fake: FakeLLM, home: Path) -> None:
    set_quota(home, untrusted_outbox_mb=1)
    report, seen = turn(fake, home, write("outbox/ok.txt", "x" * 600_000),
                        write("outbox/big.txt", "y" * 600_000))
    assert seen[0].startswith("wrote 600000 bytes")
    assert seen[1].startswith("error: write refused: outbox/big.txt (0.6 MB) would take this turn "
                              "over the untrusted disk quota (1 MB, 100 files per turn)")
    assert [c["is_error"] for c in report.tool_calls] == [False, True]
    assert not (home / "outbox/big.txt").exists()
    assert [n for n in committed(home, report.commit or "") if n.startswith("outbox/")] == [
        "outbox/ok.txt"]


def test_a_trusted_turn_is_not_limited(fake: FakeLLM, home: Path) -> None:
    set_quota(home, untrusted_outbox_mb=1, untrusted_outbox_files=1, home_mb=1)
    report, seen = turn(fake, home, write("outbox/a.txt", "a" * 2 * MB),
                        write("outbox/b.txt", "b"), profile="trusted")
    assert all(s.startswith("wrote") for s in seen), seen
    assert {"outbox/a.txt", "outbox/b.txt"} <= set(committed(home, report.commit or ""))


def test_a_home_over_its_cap_refuses_untrusted_turns(fake: FakeLLM, home: Path) -> None:
    set_quota(home, home_mb=2)
    (home / "notes.bin").write_bytes(os.urandom(3 * MB))  # the owner's own, say
    req = TurnRequest("a stranger's request", home, trigger="webhook:test", model=MODEL,
                      profile="untrusted")
    with pytest.raises(AgentdError, match=r"^untrusted turn refused: the home is over its "
                       r"disk cap \(3\.\d MB of 2 MB, \[quota\] home_mb\)"):
        asyncio.run(run_turn(home, load_settings(home), req, Events(), base=home))
    assert fake.requests == []  # refused before anything was spent
    assert not list((home / ".agentd/sessions").glob("*.jsonl"))
    # the owner's turns still run
    report, _ = turn(fake, home, write("outbox/a.txt", "a"), profile="trusted")
    assert report.ok


def test_the_room_left_under_the_cap_bounds_the_turn(fake: FakeLLM, home: Path) -> None:
    used = tree_bytes(home)
    set_quota(home, home_mb=used // MB + 2)  # about 1-2 MB of room; 20 MB per turn
    _, seen = turn(fake, home, write("outbox/big.txt", "z" * 3 * MB))
    assert seen[0].startswith("error: write refused") and "left under the home's" in seen[0]


def test_quota_settings_are_checked_and_their_defaults_documented(home: Path) -> None:
    documented = re.search(r"^# \[quota\]\n((?:# \w+ = \d+\n)+)", DEFAULT_CONFIG, re.M)
    assert documented, "DEFAULT_CONFIG documents [quota]"
    table = tomllib.loads(documented.group(1).replace("# ", ""))
    assert parse_settings({"quota": table}).quota == QuotaSettings()
    set_quota(home, home_mb=-1)
    with pytest.raises(AgentdError, match=r"quota\.home_mb must not be negative"):
        load_settings(home)
    text = (home / "agentd.toml").read_text().replace("home_mb = -1", 'home_mb = "1G"')
    (home / "agentd.toml").write_text(text)
    with pytest.raises(AgentdError, match=r"quota\.home_mb must be a number"):
        load_settings(home)
