"""The home's turn lock, for every trigger: a second turn waits, says so once on stderr,
and runs after the first; Ctrl-C while waiting gives up cleanly (130); a holder note that
is missing, corrupt, foreign or hostile, or a holder that died, never blocks or hangs.

Cross-process tests run real `agentd` processes against the fake LLM. The first turn is
held open by its own bash command, which waits for a file the test creates: every wait
here is for an event (a file, a line on stderr, a request), never a fixed sleep."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import agentd
from daemonkit import configure, git, model_requests, wait_for
from fakellm import FakeLLM
from prockit import Proc

from agentd.turnlock import (
    HOLDER_NAME,
    UNKNOWN,
    TurnLock,
    describe_holder,
    read_holder,
    turn_lock,
    waiting_message,
)


def _home(home: Path) -> Path:
    configure(home, {"model": "openai:test"}, sandbox={"mode": "off"})
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "test settings")
    return home


def _blocking_bash(workdir: Path) -> dict:
    """A bash call that says it started, then waits until the test lets it go."""
    return {"name": "bash", "arguments": {"command": (
        f"touch {workdir}/started; while [ ! -e {workdir}/release ]; do sleep 0.05; done; "
        "echo released")}}


def _write(path: Path, text: str) -> dict:
    return {"name": "write", "arguments": {"path": str(path), "content": text}}


def _asked(fake: FakeLLM, words: str) -> bool:
    return any(words in json.dumps(q.body) for q in model_requests(fake))


def _subjects(home: Path, n: int) -> list[str]:
    return git(home, "log", f"-{n}", "--format=%s").splitlines()[::-1]


FIRST = {  # how each kind of first turn is started, what it is called, what it commits
    "run": (["run", "-q", "-C", "{workdir}", "turn A"], "cli", ["turn A"]),
    "cron run": (["cron", "run", "nap", "-q"], "cron: nap", ["Cron: nap"]),
    "daemon": (["daemon"], "inbox: question.txt", ["Inbox: question.txt"]),
}


@pytest.mark.parametrize("first", list(FIRST))
def test_a_second_turn_waits_says_so_and_runs_after(fake: FakeLLM, home: Path, workdir: Path,
                                                    tmp_path: Path, first: str) -> None:
    """`agentd run` while another turn is in the middle of a tool call: another
    `agentd run`, `agentd cron run`, or the daemon's worker on an inbox file (an untrusted
    turn, so it writes to outbox/)."""
    _home(home)
    configure(home, heartbeat={"enabled": False})
    (home / "cron/nap.md").write_text("---\nevery: 1d\n---\nTake a nap.\n")
    git(home, "add", "-A")
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a job")
    fake.push({"tool_calls": [_blocking_bash(workdir)]},
              {"tool_calls": [_write(home / "outbox/a.txt", "A\n")]}, {"text": "A done"},
              {"tool_calls": [_write(home / "b.txt", "B\n")]}, {"text": "B done"})
    args, trigger, commits = FIRST[first]
    a = Proc(tmp_path, *(x.format(workdir=workdir) for x in args), "--home", str(home))
    b = None
    try:
        if first == "daemon":
            (home / "inbox/question.txt").write_text("Please take a nap.\n")
        wait_for((workdir / "started").exists, 30, "the first turn's tool call")
        b = Proc(tmp_path, "run", "-q", "--home", str(home), "-C", str(workdir),
                 "turn B")
        said = waiting_message(f"pid {a.proc.pid}, trigger {trigger}")
        wait_for(lambda: said in b.stderr, 30, "the second turn to say it waits")
        assert not _asked(fake, "turn B")  # it has not started
        (workdir / "release").touch()
        assert b.wait() == 0, b.stderr
        if first == "daemon":
            a.proc.send_signal(signal.SIGTERM)
        assert a.wait() == 0, a.stderr
    finally:
        (workdir / "release").touch()  # the blocking command (unsandboxed) ends either way
        a.close()
        if b is not None:
            b.close()
    assert b.stderr.count("another turn is running") == 1
    assert (home / "outbox/a.txt").read_text() == "A\n"
    assert (home / "b.txt").read_text() == "B\n"
    # one commit per turn, in order: the first turn's (its delivery too), then B's
    names = git(home, "log", "-1", "--name-only", "--format=").split()
    assert "b.txt" in names and "outbox/a.txt" not in names
    subjects = _subjects(home, len(commits) + 1)
    expected = [*commits, "turn B"]
    assert [s[:len(e)] for s, e in zip(subjects, expected, strict=True)] == expected


def test_ctrl_c_while_waiting_exits_130_and_runs_nothing(fake: FakeLLM, home: Path,
                                                         workdir: Path, tmp_path: Path) -> None:
    _home(home)
    lock = TurnLock(home)
    assert lock.try_acquire("cron", "digest")
    b = Proc(tmp_path, "run", "--home", str(home), "-C", str(workdir), "turn B")
    try:
        said = waiting_message(f"pid {os.getpid()}, trigger cron: digest")
        wait_for(lambda: said in b.stderr, 30, "the turn to say it waits")
        b.proc.send_signal(signal.SIGINT)
        assert b.wait() == 130
    finally:
        b.close()
        lock.release()
    assert "Traceback" not in b.stderr and b.stderr.rstrip().endswith("error: interrupted")
    assert model_requests(fake) == []
    assert not list((home / ".agentd/sessions").glob("*.jsonl"))  # nothing ran
    assert not (home / ".agentd/daemon" / HOLDER_NAME).exists()  # released: no note left


def test_each_chat_turn_takes_the_lock_and_lets_it_go_at_the_prompt(
        fake: FakeLLM, home: Path, workdir: Path, tmp_path: Path) -> None:
    """A chat holds the lock per turn, never while it waits for the next line; Ctrl-C
    while waiting gives that line up and the chat goes on."""
    _home(home)
    fake.push({"text": "first answer"}, {"text": "second answer"})
    lock = TurnLock(home)
    assert lock.try_acquire("cron", "digest")
    chat = Proc(tmp_path, "chat", "--home", str(home), "-C", str(workdir),
                stdin=subprocess.PIPE)
    said = waiting_message(f"pid {os.getpid()}, trigger cron: digest")
    try:
        chat.type("never sent")
        wait_for(lambda: said in chat.stderr, 30, "the chat to say it waits")
        chat.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "this line was not sent" in chat.stdout, 30, "the chat to give up")
        chat.type("hello")
        wait_for(lambda: chat.stderr.count(said) == 2, 30, "the chat to wait again")
        lock.release()
        wait_for(lambda: "first answer" in chat.stdout, 30, "the first answer")
        # at the prompt the chat holds nothing: another turn can take the lock
        wait_for(lambda: lock.try_acquire("cli"), 30, "the lock, between chat turns")
        chat.type("again")
        wait_for(lambda: chat.stderr.count("another turn is running") == 3, 30, "a wait")
        lock.release()
        wait_for(lambda: "second answer" in chat.stdout, 30, "the second answer")
        chat.type("/exit")
        assert chat.wait() == 0, chat.stderr
    finally:
        chat.close()
        lock.release()
    assert "Traceback" not in chat.stderr
    assert not _asked(fake, "never sent")
    assert [q.body["messages"][-1]["content"] for q in model_requests(fake)] == ["hello",
                                                                                 "again"]


def test_a_holder_killed_by_sigkill_leaves_no_obstacle(fake: FakeLLM, home: Path,
                                                       workdir: Path) -> None:
    """flock dies with its process; the note it leaves names a dead pid and is ignored."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from agentd.turnlock import TurnLock; "
        f"l = TurnLock(Path({str(home)!r})); assert l.try_acquire('cli'); "
        "print('held', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    note = home / ".agentd/daemon" / HOLDER_NAME
    assert read_holder(note)["pid"] == holder.pid  # type: ignore[index]
    holder.kill()
    holder.wait(10)
    assert describe_holder(read_holder(note)) == UNKNOWN  # a dead pid is nobody
    fake.push({"text": "ran"})
    r = agentd("run", "-q", "--home", str(home), "-C", str(workdir), "-m", "openai:x", "go")
    assert r.exit_code == 0 and r.stdout == "ran\n"
    assert "another turn" not in r.stderr
    assert not note.exists()  # the new holder's note replaced it and went with the lock


@pytest.mark.parametrize("planted", ["garbage", "huge", "list", "fifo", "symlink",
                                     "foreign pid", "control chars"])
def test_a_corrupt_or_hostile_holder_note_never_hangs_or_misleads(home: Path,
                                                                  planted: str) -> None:
    note = home / ".agentd/daemon" / HOLDER_NAME
    lock = TurnLock(home)
    assert lock.try_acquire("cli")
    note.unlink()
    if planted == "garbage":
        note.write_bytes(b"\xff{not json")
    elif planted == "huge":
        note.write_text(json.dumps({"pid": os.getpid(), "pad": "x" * 100_000}))
    elif planted == "list":
        note.write_text("[1, 2]")
    elif planted == "fifo":
        os.mkfifo(note)
    elif planted == "symlink":
        note.symlink_to("/proc/self/environ")
    elif planted == "foreign pid":
        note.write_text(json.dumps({"pid": 1, "trigger": "cli", "host": "elsewhere"}))
    else:
        note.write_text(json.dumps({"pid": os.getpid(), "trigger": "cli\x1b[2J\nforged"}))
    told: list[str] = []

    async def second_turn() -> None:
        async with turn_lock(home, "cli", on_wait=lambda holder: (told.append(holder),
                                                                  lock.release())):
            pass

    runner = threading.Thread(target=asyncio.run, args=(second_turn(),), daemon=True)
    runner.start()
    runner.join(30)
    if runner.is_alive() and planted == "fifo":  # hung on the FIFO: let it go, then fail
        os.close(os.open(note, os.O_WRONLY | os.O_NONBLOCK))
    assert not runner.is_alive(), "reading the holder note hung"
    expected = (f"pid {os.getpid()}, trigger cli?[2J?forged" if planted == "control chars"
                else UNKNOWN)
    assert told == [expected]


def test_the_lock_file_is_never_followed_through_a_link(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "created-by-root"
    target.parent.mkdir()
    path = home / ".agentd/daemon/turn.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.symlink_to(target)
    lock = TurnLock(home)
    assert lock.try_acquire("cli")
    lock.release()
    assert not target.exists() and path.is_file() and not path.is_symlink()


def test_re_entrant_for_its_own_task_chain_only(home: Path) -> None:
    """The daemon's worker holds the lock and calls run_turn, which takes it again: that
    must not wait for itself. An unrelated task in the same process must wait."""
    events: list[str] = []

    async def main() -> None:
        waiting = asyncio.Event()

        def on_wait(holder: str) -> None:
            events.append(f"waits ({holder})")
            waiting.set()

        async def unrelated() -> None:
            async with turn_lock(home, "other", on_wait=on_wait):
                events.append("unrelated ran")

        async with turn_lock(home, "cron", "digest"):
            async with turn_lock(home, "cron"):  # run_turn inside the worker: no wait
                events.append("nested ran")
            other = asyncio.get_running_loop().create_task(unrelated(),
                                                           context=contextvars.Context())
            await waiting.wait()
        await other

    asyncio.run(asyncio.wait_for(main(), 30))
    assert events == ["nested ran", f"waits (pid {os.getpid()}, trigger cron: digest)",
                      "unrelated ran"]


def test_describe_holder_tolerates_foreign_notes() -> None:
    assert describe_holder(None) == UNKNOWN
    for pid in ("12", True, -5, 0, 2**70, None):
        assert describe_holder({"pid": pid, "trigger": "cli"}) == UNKNOWN
    me = {"pid": os.getpid(), "trigger": "webhook:github", "what": "push"}
    assert describe_holder(me) == f"pid {os.getpid()}, trigger webhook:github: push"
    assert describe_holder({**me, "trigger": 5, "what": None}) == f"pid {os.getpid()}"


def test_undo_waits_for_a_running_turn_and_says_so(fake: FakeLLM, home: Path) -> None:
    """`agentd undo` changes git and files: it must not run in the middle of a turn."""
    fake.push({"tool_calls": [{"name": "write", "arguments": {"path": "notes.md",
                                                              "content": "n\n"}}]},
              {"text": "done"})
    r = agentd("run", "--home", str(home), "--workdir", str(home), "--model",
               "openai:test", "add notes")
    assert r.exit_code == 0, r.stderr
    held = TurnLock(home)
    assert held.try_acquire("cli", "a long turn")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "agentd", "undo", "--home", str(home)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the event: it says it waits
        assert "another turn is running in this home" in line and "cli" in line
        assert (home / "notes.md").exists()  # nothing undone while the turn holds the lock
    finally:
        held.release()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "undone: add notes" in out and not (home / "notes.md").exists()
