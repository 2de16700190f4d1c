"""Issue 10: racing a symlink swap against the write and edit tools, and the set-uid file
filled by the write tool, on the landed code: through the real loop and real bwrap, from a
trusted turn and from an untrusted one (writing into outbox/), and directly 1,000 times.

The racer flips a folder the tools write into between a real directory and a symlink to a
folder outside the home and the workdir. It runs in a thread of the test process, on the
host: bash's background processes die when its command ends (the sandbox kills the whole
process tree), so a racer can't outlive the bash call that starts it, and the realistic
racer is another process on the host anyway (another turn, or a sandbox that is "off").
`renameat2(RENAME_EXCHANGE)` swaps the two names atomically, so the folder's name always
exists and is, at any instant, either the real folder or the link out.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from attack import MODEL, run_attack
from conftest import requires_bwrap, sandbox_workdir
from fakellm import FakeLLM

from agentd.config import load_settings
from agentd.homefs.beneath import SYS_RENAMEAT2
from agentd.llm.types import Message, ToolCall
from agentd.loop import Events
from agentd.tools import ToolContext, ToolResult
from agentd.tools.files import edit_file, write_file
from agentd.turn import TurnReport, TurnRequest, run_turn

AT_FDCWD = -100
RENAME_EXCHANGE = 2
TRIES = 1000
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE)."""
    if _libc.syscall(SYS_RENAMEAT2, AT_FDCWD, os.fsencode(a), AT_FDCWD,
                     os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


class Racer:
    """Flips `folder` with `folder.alt` (a symlink out) from `go` until `stop`; with `name`,
    also makes that name a symlink to `victim` and a regular file again, in turn. It leaves
    the folder real and counts its flips (a race that never flipped proves nothing)."""

    def __init__(self, folder: Path, name: Path | None = None, victim: Path | None = None):
        self.folder, self.alt = folder, folder.with_name(folder.name + ".alt")
        self.name, self.victim = name, victim
        self.go, self.stop = threading.Event(), threading.Event()
        self.flips = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        if not self.go.wait(120):
            return
        while not self.stop.is_set():
            _exchange(self.folder, self.alt)
            if self.name is not None and self.victim is not None:
                self._flip_name(self.name, self.victim)
            self.flips += 1
        if self.folder.is_symlink():
            _exchange(self.folder, self.alt)

    @staticmethod
    def _flip_name(name: Path, victim: Path) -> None:
        link, plain = name.with_name(name.name + ".l"), name.with_name(name.name + ".f")
        link.symlink_to(victim)
        os.rename(link, name)
        plain.write_text("v\n")
        os.rename(plain, name)

    @contextmanager
    def running(self) -> Iterator[Racer]:
        self.thread.start()
        try:
            yield self
        finally:
            self.go.set()
            self.stop.set()
            self.thread.join(60)
        assert not self.thread.is_alive()


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under `folder`, by lstat: a write, a replacement, a temp file or a mode
    change there shows up as a difference."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            out[rel] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside both the home and the workdir, holding what a racer aims at."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "e.txt").write_text("v\n")
    (d / "victim.txt").write_text("v\n")
    return d


# --- directly, 1,000 times ---------------------------------------------------------------


def test_a_racing_swap_never_puts_a_write_outside(tmp_path: Path, outside: Path,
                                                  resolver: str) -> None:
    home, work = tmp_path / "home", sandbox_workdir(tmp_path / "work")
    home.mkdir()
    (work / "d").mkdir(parents=True)
    (work / "d" / "e.txt").write_text("v\n")
    (work / "d.alt").symlink_to(outside)
    (work / "n.txt").write_text("v\n")
    ctx = ToolContext(home=home.resolve(), workdir=work.resolve())
    before = snapshot(outside)
    results: list[ToolResult] = []
    racer = Racer(work / "d", work / "n.txt", outside / "victim.txt")
    with racer.running():
        racer.go.set()
        for i in range(TRIES):
            results.append(write_file(ctx, f"d/f{i}.txt", "x"))
            if i % 4 == 0:
                results.append(edit_file(ctx, "d/e.txt", "v", "v"))
                results.append(write_file(ctx, "n.txt", "w\n"))
                results.append(edit_file(ctx, "n.txt", "v", "v"))
    assert snapshot(outside) == before, "a write landed outside the workdir"
    refused = [r for r in results if r.is_error]
    assert racer.flips > 100 and refused and len(refused) < len(results), (
        f"the race was not exercised: {racer.flips} flips, {len(refused)} refusals")
    # A refusal names the symlink; without openat2, a link swapped in under the walk can
    # also surface as the folder being gone or not a folder for an instant, and a file the
    # racer is renaming as gone (ENOENT between its stat and its open: seen under xdist).
    expected = ("symlink", "does not exist", "not found", "Not a directory",
                "No such file or directory")
    assert all(any(m in r.content for m in expected) for r in refused), \
        {r.content for r in refused}


# --- through the real loop -----------------------------------------------------------------


class RaceEvents(Events):
    """Starts the racer at the turn's first write or edit and stops it once the last of
    `calls` tool results is in, so the racer runs exactly while the tools do (not while the
    turn commits)."""

    def __init__(self, racer: Racer, calls: int):
        self.racer, self.left = racer, calls

    def tool_call(self, call: ToolCall) -> None:
        if call.name in ("write", "edit"):
            self.racer.go.set()

    def tool_result(self, call: ToolCall, result: Message) -> None:
        self.left -= 1
        if self.left == 0:
            self.racer.stop.set()


def _turn(fake: FakeLLM, home: Path, workdir: Path, profile: str,
          steps: list[list[dict[str, Any]]], events: Events,
          scratch: Path | None = None) -> tuple[TurnReport, list[str]]:
    """One real turn (run_turn: the loop, the tools, the sandbox, the commit) in which the
    scripted model makes `steps` of tool calls; returns the report and what it was shown."""
    fake.push(*({"tool_calls": calls} for calls in steps), {"text": "done"})
    before = len(fake.requests)
    req = TurnRequest("race", workdir, trigger="cli" if profile == "trusted" else "hook:race",
                      model=MODEL, max_steps=len(steps) + 1, profile=profile, scratch=scratch)
    report = asyncio.run(run_turn(home, load_settings(home), req, events))
    assert report.ok, report.result
    posts = [q for q in fake.requests[before:] if q.method == "POST"]
    shown = [m["content"] for m in posts[-1].body["messages"] if m["role"] == "tool"]
    assert len(shown) == sum(len(s) for s in steps)
    return report, shown


def _bash(command: str) -> dict[str, Any]:
    return {"name": "bash", "arguments": {"command": command}}


def _race_steps(folder: str, writes: int, per_step: int = 100) -> list[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []
    for i in range(writes):
        calls.append({"name": "write", "arguments": {"path": f"{folder}/f{i}.txt",
                                                     "content": "x"}})
        if i % 5 == 0:
            calls.append({"name": "edit", "arguments": {"path": f"{folder}/e.txt",
                                                        "old_text": "v", "new_text": "v"}})
    return [calls[i : i + per_step] for i in range(0, len(calls), per_step)]


def _race_through_the_loop(fake: FakeLLM, home: Path, workdir: Path, outside: Path,
                           profile: str, folder: Path, scratch: Path | None = None) -> None:
    """Turn 1: bash in the real sandbox plants the folder and its link out. Turn 2: the
    racer flips them while the model writes and edits into the folder, 300 times."""
    rel = os.path.relpath(folder, workdir)
    plant = _bash(f"mkdir -p {rel} && echo v > {rel}/e.txt && ln -s {outside} {rel}.alt "
                  f"&& echo PLANTED")
    _, shown = _turn(fake, home, workdir, profile, [[plant]], Events(), scratch)
    assert "PLANTED" in shown[0], shown[0]
    before = snapshot(outside)
    steps = _race_steps(rel, 300)
    racer = Racer(folder)
    with racer.running():
        report, shown = _turn(fake, home, workdir, profile, steps,
                              RaceEvents(racer, sum(len(s) for s in steps)), scratch)
    assert snapshot(outside) == before, "a write landed outside"
    errors = [c["is_error"] for c in report.tool_calls]
    assert racer.flips > 50 and any(errors) and not all(errors), (
        f"the race was not exercised: {racer.flips} flips, {sum(errors)} refusals")
    assert all("symlink" in text for text, bad in zip(shown, errors, strict=True) if bad)


@requires_bwrap
def test_a_racing_swap_from_a_trusted_turn(fake: FakeLLM, home: Path, workdir: Path,
                                           outside: Path) -> None:
    _race_through_the_loop(fake, home, workdir, outside, "trusted", workdir / "d")


@requires_bwrap
def test_a_racing_swap_from_an_untrusted_turn_in_the_outbox(fake: FakeLLM, home: Path,
                                                             outside: Path,
                                                             tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with (home / "agentd.toml").open("a") as f:  # hundreds of writes: lift the file quota
        f.write("\n[quota]\nuntrusted_outbox_files = 0\n")
    _race_through_the_loop(fake, home, home, outside, "untrusted", home / "outbox" / "d",
                           scratch)


# --- the set-uid file --------------------------------------------------------------------

MKNOD = ("python3 -c 'import os,stat; os.mknod(\"{path}\", stat.S_IFREG|0o4755)' && "
         "stat -c %A {path}")


def _no_set_id(path: Path) -> None:
    mode = os.lstat(path).st_mode
    assert stat.S_ISREG(mode) and not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), \
        oct(mode)


@requires_bwrap
def test_a_set_uid_file_planted_in_the_sandbox_stays_harmless(fake: FakeLLM, home: Path,
                                                              workdir: Path) -> None:
    """mknod(S_IFREG|04755) in the sandbox, then the host-side write tool fills the file:
    it must not come out a set-uid root binary. Two layers: seccomp refuses the set-id
    mknod, and the write tool never keeps set-id bits (pinned with a host-planted set-uid
    file in tests/test_files.py, since the sandbox can no longer plant one)."""
    a = run_attack(
        fake, home, workdir, MKNOD.format(path="x"),
        {"name": "write", "arguments": {"path": "x", "content": "#!/bin/sh\nid\n"}})
    assert a.errors == [True, False], a.results
    assert "Operation not permitted" in a.results[0]  # seccomp refused the plant
    _no_set_id(workdir / "x")
    assert (workdir / "x").read_text() == "#!/bin/sh\nid\n"


@requires_bwrap
def test_a_set_uid_file_planted_in_the_outbox_by_an_untrusted_turn(fake: FakeLLM, home: Path,
                                                                   tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    steps = [[_bash(MKNOD.format(path="outbox/x"))],
             [{"name": "write", "arguments": {"path": "outbox/x", "content": "#!/bin/sh\n"}}]]
    report, shown = _turn(fake, home, home, "untrusted", steps, Events(), scratch)
    assert [c["is_error"] for c in report.tool_calls] == [True, False], shown
    assert "Operation not permitted" in shown[0]  # seccomp refused the plant
    _no_set_id(home / "outbox" / "x")
