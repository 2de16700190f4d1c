"""`agentd chat`: scripted lines through CliRunner, and Ctrl-C for real in a pseudo-terminal.

Each test checks what the chat left behind (session transcripts, files, git) and what the
fake model server received, on the real SDKs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import Result
from conftest import agentd
from daemonkit import wait_for
from fakellm import FakeLLM
from prockit import sleepers
from prompt_toolkit import PromptSession
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from agentd.chat import Chat
from agentd.chat_prompt import HISTORY_NAME, terminal_reader, terminal_session
from agentd.config import load_settings
from agentd.home import Home
from agentd.redact import default
from agentd.render import make_console
from agentd.session import new_id

ANTHROPIC, OPENAI = "anthropic:claude-sonnet-5-5", "openai:gpt-5.4"


def chat(home: Path, workdir: Path, *args: str, input: str) -> Result:
    return agentd("chat", "--home", str(home), "-C", str(workdir), *args, input=input)


def sessions(home: Path) -> list[Path]:
    return sorted((home / ".agentd" / "sessions").glob("*.jsonl"))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def messages(path: Path) -> list[tuple[str, str]]:
    return [(r["role"], r.get("text", "")) for r in rows(path) if r["type"] == "message"]


def posts(fake: FakeLLM) -> list:
    return [q for q in fake.requests if q.method == "POST"]


def user_texts(body: dict) -> list[str]:
    """The user's own lines in a request, on either protocol."""
    out = []
    for m in body["messages"]:
        if m["role"] != "user":
            continue
        content = m["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out += [b["text"] for b in content if b.get("type") == "text"]
    return out


def git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout


def test_two_turns_share_a_session_across_a_model_switch(fake: FakeLLM, home: Path,
                                                         workdir: Path) -> None:
    fake.push({"text": "hi from claude"}, {"text": "hi from gpt"})
    r = chat(home, workdir, "-m", ANTHROPIC,
             input="hello\n/model openai:gpt-5.4\nsecond\n/exit\n")
    assert r.exit_code == 0, r.stderr
    assert "hi from claude" in r.stdout and "hi from gpt" in r.stdout
    assert r.stdout.count(" steps") + r.stdout.count(" step ") == 2  # a summary per turn
    [path] = sessions(home)
    sid = path.stem
    assert messages(path) == [("user", "hello"), ("assistant", "hi from claude"),
                              ("user", "second"), ("assistant", "hi from gpt")]
    assert rows(path)[0]["id"] == sid and rows(path)[0]["trigger"] == f"chat:{sid}"
    assert [x["type"] for x in rows(path)].count("session") == 1  # started once, resumed
    assert [x["status"] for x in rows(path) if x["type"] == "end"] == ["ok", "ok"]
    first, second = posts(fake)
    assert first.path == "/v1/messages" and first.body["model"] == "claude-sonnet-5-5"
    assert second.path == "/v1/chat/completions" and second.body["model"] == "gpt-5.4"
    assert [(m["role"], m["content"]) for m in second.body["messages"][1:]] == [
        ("user", "hello"), ("assistant", "hi from claude"), ("user", "second")]
    day = (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()
    assert day.count(f"chat:{sid}") == 2


def test_undo_reverts_the_last_turn(fake: FakeLLM, home: Path, workdir: Path) -> None:
    note = home / "notes" / "todo.md"
    fake.push({"tool_calls": [{"name": "write", "arguments": {
        "path": str(note), "content": "- buy milk\n"}}]}, {"text": "noted"})
    r = chat(home, workdir, "-m", OPENAI, input="note: buy milk\n/history\n/undo\n")
    assert r.exit_code == 0, r.stderr
    assert not note.exists()
    assert "undone: note: buy milk" in r.stdout
    log = git(home, "log", "-3", "--format=%s%n%b")
    assert "Undo: note: buy milk" in log and "Agentd-Trigger: undo" in log
    turn_msg = git(home, "log", "-1", "--skip=1", "--format=%B")
    assert "Agentd-Trigger: chat:" in turn_msg and "Agentd-Model: openai:gpt-5.4" in turn_msg
    # /history ran before /undo: it lists the chat turn
    assert "note: buy milk" in r.stdout.split("undone:")[0] and "chat:" in r.stdout
    assert git(home, "status", "--porcelain") == ""


def test_undo_with_nothing_to_undo_is_one_error_line(fake: FakeLLM, home: Path,
                                                     workdir: Path) -> None:
    r = chat(home, workdir, "-m", OPENAI, input="/undo\n/exit\n")
    assert r.exit_code == 0
    assert r.stderr.strip().splitlines() == [
        "error: no agent turn to undo in this home's history: see `agentd history`"]


def test_new_starts_a_fresh_transcript(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "one"}, {"text": "two"})
    r = chat(home, workdir, "-m", OPENAI, input="first\n/new\nsecond\n")
    assert r.exit_code == 0, r.stderr
    a, b = sorted(sessions(home), key=lambda p: p.stat().st_mtime)
    assert messages(a) == [("user", "first"), ("assistant", "one")]
    assert messages(b) == [("user", "second"), ("assistant", "two")]
    assert f"new session {b.stem}" in r.stdout
    assert user_texts(posts(fake)[1].body) == ["second"]  # nothing of the first session


def test_resume_continues_the_last_or_a_named_session(fake: FakeLLM, home: Path,
                                                      workdir: Path) -> None:
    fake.push({"text": "A1"}, {"text": "B1"})
    chat(home, workdir, "-m", OPENAI, input="alpha\n/new\nbeta\n")
    older, newer = sorted(sessions(home), key=lambda p: p.stat().st_mtime)
    fake.push({"text": "B2"}, {"text": "A2"})
    r = chat(home, workdir, "-m", ANTHROPIC, "--resume", input="beta again\n")
    assert r.exit_code == 0, r.stderr
    assert f"resuming session {newer.stem} (2 messages)" in r.stdout
    assert user_texts(posts(fake)[2].body) == ["beta", "beta again"]
    r = chat(home, workdir, "-m", ANTHROPIC, "--resume", older.stem, input="alpha again\n")
    assert r.exit_code == 0, r.stderr
    assert user_texts(posts(fake)[3].body) == ["alpha", "alpha again"]
    assert messages(older)[-2:] == [("user", "alpha again"), ("assistant", "A2")]
    assert len(sessions(home)) == 2


def test_resume_errors(fake: FakeLLM, home: Path, workdir: Path) -> None:
    r = chat(home, workdir, "-m", OPENAI, "--resume", input="")
    assert r.exit_code == 2 and r.stderr.startswith("error: no session to resume in ")
    r = chat(home, workdir, "-m", OPENAI, "--resume", "20200101-000000-abcdef", input="")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no session '20200101-000000-abcdef'" in r.stderr
    r = chat(home, workdir, "-m", OPENAI, "--resume", "../../etc/passwd", input="")
    assert r.exit_code == 2


def test_bad_model_and_unknown_command_keep_the_chat_going(fake: FakeLLM, home: Path,
                                                           workdir: Path) -> None:
    fake.push({"text": "still here"})
    r = chat(home, workdir, "-m", OPENAI,
             input="/model nope\n/model mystery:x\n/frobnicate\n/help\n\nhello\n/model\n")
    assert r.exit_code == 0
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert "'nope' is not PROVIDER:MODEL" in errors[0]
    assert "unknown provider 'mystery'" in errors[1]
    assert errors[2] == "error: unknown command /frobnicate: /help lists them"
    assert "/model PROVIDER:MODEL" in r.stdout and "/undo" in r.stdout  # /help
    assert "still here" in r.stdout and "model: openai:gpt-5.4" in r.stdout
    [req] = posts(fake)
    assert req.body["model"] == "gpt-5.4"  # the bad specs changed nothing


def test_a_line_starting_with_a_space_is_sent_as_text(fake: FakeLLM, home: Path,
                                                      workdir: Path) -> None:
    fake.push({"text": "a path"})
    r = chat(home, workdir, "-m", OPENAI, input=" /etc/hosts: what is it?\n")
    assert r.exit_code == 0 and r.stderr == ""
    assert user_texts(posts(fake)[0].body) == ["/etc/hosts: what is it?"]


def test_provider_error_is_one_line_and_the_chat_continues(fake: FakeLLM, home: Path,
                                                           workdir: Path) -> None:
    fake.push({"error": 400, "message": "bad request, sorry"}, {"text": "better now"})
    r = chat(home, workdir, "-m", OPENAI, input="one\ntwo\n")
    assert r.exit_code == 0
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: openai:gpt-5.4") and "400" in line
    assert "better now" in r.stdout
    [path] = sessions(home)
    assert [x["status"] for x in rows(path) if x["type"] == "end"] == ["error", "ok"]


def test_eof_ends_the_chat(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "bye"})
    r = chat(home, workdir, "-m", OPENAI, input="hello")  # no newline, no /exit
    assert r.exit_code == 0 and "bye" in r.stdout
    r = chat(home, workdir, "-m", OPENAI, input="")
    assert r.exit_code == 0 and sessions(home)[1:] == []  # nothing said, no transcript


def test_no_model_is_a_config_error(home: Path, workdir: Path) -> None:
    r = chat(home, workdir, input="hello\n")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: no model configured")


# -- Ctrl-C, for real: a pseudo-terminal whose line discipline turns ^C into SIGINT -------


class Terminal:
    """`agentd chat` on the slave side of a pty, as its controlling terminal."""

    # setsid (start_new_session) and TIOCSCTTY make the pty the child's controlling
    # terminal, so a ^C typed into it is a SIGINT to the chat, as in a real terminal.
    LAUNCH = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
              "os.execv(sys.executable, [sys.executable, '-m', 'agentd', *sys.argv[1:]])")

    def __init__(self, *args: str, cwd: Path):
        self.master, slave = pty.openpty()
        env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
        self.proc = subprocess.Popen([sys.executable, "-c", self.LAUNCH, *args], stdin=slave,
                                     stdout=slave, stderr=slave, cwd=cwd, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.out = ""

    def expect(self, text: str, timeout: float = 20) -> None:
        """Read until `text` has appeared since the last expect."""
        deadline = time.monotonic() + timeout
        while text not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in output:\n{self.out}"
            if select.select([self.master], [], [], min(left, 0.2))[0]:
                try:
                    self.out += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    assert text in self.out, f"no {text!r} in output:\n{self.out}"
        self.out = self.out[self.out.index(text) + len(text):]

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        """Wait for the chat to end; what it printed meanwhile is added to `out`."""
        try:
            code = self.proc.wait(timeout=20)
            while select.select([self.master], [], [], 0)[0]:
                self.out += os.read(self.master, 65536).decode(errors="replace")
        except OSError:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.master)
        return code


def test_ctrl_c_interrupts_the_turn_and_the_chat_goes_on(fake: FakeLLM, home: Path,
                                                         workdir: Path) -> None:
    marker = f"30.{os.getpid()}"  # a sleep no other process on this machine is running
    fake.push({"tool_calls": [{"name": "bash", "arguments": {"command": f"sleep {marker}"}}]},
              {"text": "after the interruption"})
    term = Terminal("chat", "--home", str(home), "-C", str(workdir), "-m", OPENAI,
                    cwd=workdir)
    try:
        term.expect("you> ")
        term.type("take a nap\n")
        term.expect(f"▸ bash sleep {marker}")
        wait_for(lambda: sleepers(marker), 10, "the sandboxed sleep to start")
        started = time.monotonic()
        term.type("\x03")  # Ctrl-C
        term.expect("interrupted: the turn stopped")
        assert time.monotonic() - started < 10
        term.expect("you> ")  # the chat goes on
        wait_for(lambda: not sleepers(marker), 10, "the sandboxed sleep to end")
        term.type("and now?\n")
        term.expect("after the interruption")
        term.expect("you> ")
        term.type("/exit\n")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    [path] = sessions(home)
    msgs = [x for x in rows(path) if x["type"] == "message"]
    call = msgs[1]["tool_calls"][0]
    assert msgs[2]["role"] == "tool" and msgs[2]["tool_call_id"] == call["id"]
    assert msgs[2]["is_error"] and "interrupted by the user" in msgs[2]["text"]
    assert [x["status"] for x in rows(path) if x["type"] == "end"] == ["interrupted", "ok"]
    # the next request carried the interrupted call and its error result, validly paired
    later = posts(fake)[1].body["messages"]
    [sent_call] = [c for m in later if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    [tool] = [m for m in later if m["role"] == "tool"]
    assert json.loads(sent_call["function"]["arguments"]) == {"command": f"sleep {marker}"}
    assert tool["tool_call_id"] == sent_call["id"] and "interrupted by the user" in tool["content"]
    # the interrupted turn still wrote its day log entry
    day = (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()
    assert "take a nap" in day and "interrupted" in day


def test_ctrl_c_at_the_prompt_ends_the_chat_with_130(fake: FakeLLM, home: Path,
                                                     workdir: Path) -> None:
    term = Terminal("chat", "--home", str(home), "-C", str(workdir), "-m", OPENAI,
                    cwd=workdir)
    try:
        term.expect("you> ")
        # readline prints the prompt a moment before it waits for keys; a SIGINT in that
        # gap is only noticed at the next key (CPython's readline): press it again until
        # the chat ends, as a person would
        for _ in range(40):
            term.type("\x03")
            with contextlib.suppress(subprocess.TimeoutExpired):
                term.proc.wait(0.5)
                break
        assert term.close() == 128 + signal.SIGINT
        assert "Traceback" not in term.out
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert posts(fake) == []


# -- the terminal prompt, driven through prompt_toolkit's own pipe input ----------------


def keyed(session: object, *chunks: str) -> Callable[[], str | None]:
    """A chat reader that types `chunks[i]` into the prompt before its i-th read, the way
    a person types at the prompt the chat is showing."""
    pending = list(chunks)
    read = terminal_reader(session)  # type: ignore[arg-type]

    def typed() -> str | None:
        if pending:
            session.input.send_text(pending.pop(0))  # type: ignore[attr-defined]
        return read()

    return typed


@contextlib.contextmanager
def prompt_session(home: Path) -> Iterator[PromptSession[str]]:
    with create_pipe_input() as pipe:
        yield terminal_session(Home(home).runtime / HISTORY_NAME, default(), input=pipe,
                               output=DummyOutput())


def in_process_chat(home: Path, workdir: Path, model: str = OPENAI) -> tuple[Chat, io.StringIO]:
    out = io.StringIO()
    return Chat(home, load_settings(home), workdir, workdir, model, new_id(),
                make_console(out)), out


def test_a_bracketed_paste_is_one_turn(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "one answer for three lines"})
    chat_, out = in_process_chat(home, workdir)
    with prompt_session(home) as session:
        code = chat_.run(keyed(session, "\x1b[200~first line\r\n/second line\rthird line"
                                        "\x1b[201~\r", "\x04"))  # the paste, Enter; Ctrl-D
    assert code == 0
    [req] = posts(fake)  # one billed call, not three
    assert user_texts(req.body) == ["first line\n/second line\nthird line"]
    assert "one answer for three lines" in out.getvalue()


def test_explicit_new_lines_and_ctrl_c_clears_the_line(home: Path) -> None:
    with prompt_session(home) as session:
        read = keyed(session, "one\x1b\rtwo\r", "three\\\rfour\r", "typo\x03fixed\r",
                     "\x03")
        assert read() == "one\ntwo"  # Esc, Enter: a new line; Enter sends
        assert read() == "three\nfour"  # a trailing backslash continues
        assert read() == "fixed"  # Ctrl-C dropped "typo", the prompt stayed
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C on an empty line ends the chat
            read()


def test_history_is_kept_across_chats_and_redacted(home: Path) -> None:
    key = "sk-ant-api03-" + "x" * 40
    with prompt_session(home) as session:
        read = keyed(session, "/help\r", f"/model {key}\r", "\x04")
        assert [read(), read(), read()] == ["/help", f"/model {key}", None]
    saved = (home / ".agentd" / HISTORY_NAME).read_text()
    assert "/help" in saved and key not in saved and "[REDACTED:anthropic-key]" in saved
    with prompt_session(home) as session:  # a new chat: Up, Up recalls the earlier line
        assert keyed(session, "\x1b[A\x1b[A\r")() == "/help"


@pytest.mark.parametrize("plant", ["link", "fifo"])
def test_a_planted_history_file_is_neither_followed_nor_opened(home: Path, tmp_path: Path,
                                                                plant: str,
                                                                capfd: pytest.CaptureFixture[str],
                                                                ) -> None:
    """`.agentd/chat-history` as a link (to a file outside the home) or a FIFO: the chat
    keeps its history in memory and says so; the link's target is untouched and a FIFO
    does not hang the prompt (the pipe input would be waited on forever otherwise)."""
    history = Home(home).runtime / HISTORY_NAME
    history.parent.mkdir(exist_ok=True)
    target = tmp_path / "elsewhere.txt"
    target.write_text("not the chat's\n")
    if plant == "link":
        history.symlink_to(target)
    else:
        os.mkfifo(history)
    with prompt_session(home) as session:
        assert keyed(session, "/help\r")() == "/help"
    assert target.read_text() == "not the chat's\n"
    assert history.is_symlink() if plant == "link" else stat.S_ISFIFO(history.lstat().st_mode)
    [line] = capfd.readouterr().err.splitlines()
    assert line.startswith("warning: ") and "not a regular file" in line


def test_model_rereads_agentd_toml(fake: FakeLLM, home: Path, workdir: Path) -> None:
    fake.push({"text": "from the lab"})
    chat_, out = in_process_chat(home, workdir)
    said = iter(["/model lab:tiny", "/model lab:tiny", "hello lab"])
    typed: list[str] = []

    def read() -> str | None:
        if len(typed) == 1:  # the first /model failed: the person adds the provider
            with (home / "agentd.toml").open("a") as f:
                f.write(f'\n[providers.lab]\nprotocol = "openai"\nbase_url = '
                        f'"{fake.openai_url}"\nkey_env = "OPENAI_API_KEY"\n')
        line = next(said, None)
        if line is not None:
            typed.append(line)
        return line

    assert chat_.run(read) == 0
    [req] = posts(fake)
    assert req.body["model"] == "tiny" and "from the lab" in out.getvalue()
    assert chat_.settings.providers["lab"].base_url == fake.openai_url
    assert "model: lab:tiny from the next turn on" in out.getvalue()


def test_resume_keeps_the_sessions_model_and_recaps(fake: FakeLLM, home: Path,
                                                    workdir: Path) -> None:
    fake.push({"text": "the first answer"})
    chat(home, workdir, "-m", OPENAI, input="first question\n")
    fake.push({"text": "the second answer"})
    r = chat(home, workdir, "--resume", input="second question\n")  # no -m
    assert r.exit_code == 0, r.stderr
    assert f"· {OPENAI} ·" in r.stdout
    recap = r.stdout.split("agentd chat ·")[0]
    assert "you> first question" in recap and "the first answer" in recap
    _, second = posts(fake)
    assert second.path == "/v1/chat/completions" and second.body["model"] == "gpt-5.4"


def test_piped_lines_ending_in_a_backslash_are_one_entry(fake: FakeLLM, home: Path,
                                                         workdir: Path) -> None:
    fake.push({"text": "ok"})
    r = chat(home, workdir, "-m", OPENAI, input="line one\\\nline two\n")
    assert r.exit_code == 0, r.stderr
    assert user_texts(posts(fake)[0].body) == ["line one\nline two"]
