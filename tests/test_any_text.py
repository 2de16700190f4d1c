"""Any text survives agentd (issue 11, "Any text"): U+2028, U+2029, U+0085 and the other
characters `str.splitlines()` takes for line ends, and lone surrogates (from argv bytes that
are not UTF-8, or a `\\ud800` escape a provider sends).

Property tests (Hypothesis) drive arbitrary text through the user's message, the model's
reply and a tool's output, and check what comes back: the JSON-lines files, the transcript
a resumed session sends to the model (through the real CLI, the real SDK and the fake
server), the day log, the commit message and the bridge's reply. Example counts are small:
each CLI example is two whole turns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from bridgekit import TOKEN, BridgeHost, ServeProcess, bridge_env, bridge_home, signed
from conftest import agentd, sandbox_workdir
from daemonkit import model_requests, wait_for
from fakellm import FakeLLM
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agentd import jsonl
from agentd.bridge.store import Runs
from agentd.daylog import append_entry, day_path
from agentd.history import subject_line
from agentd.llm.anthropic import to_anthropic
from agentd.llm.openai import to_openai
from agentd.llm.types import Message, ToolCall, Usage
from agentd.oneline import one_line
from agentd.session import SessionLog, load_messages
from agentd.surrogates import replace_surrogates, replace_surrogates_in
from agentd.usage import Ledger, read_ledger

# Every character str.splitlines() ends a line at; JSON escapes all but the last three.
SEPARATORS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
ODD = "a\u2028b\u2029c\x85d\x1ce\x0bf"
OPENAI = "openai:gpt-5.4"
# No example database: it would be a .hypothesis/ folder in the checkout.
QUICK = settings(max_examples=60, deadline=None, database=None)
# A turn per example, in a home shared by the examples (function-scoped fixtures are fine:
# each example cleans up what it checks).
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)  # shrinking turns takes minutes
SLOW = settings(max_examples=3, deadline=None, phases=NO_SHRINK, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def text(surrogates: bool = True, max_size: int = 30) -> st.SearchStrategy[str]:
    """Any text, separators made likely; lone surrogates only where text comes from
    outside unchecked (argv, a provider's JSON)."""
    odd = [st.sampled_from(SEPARATORS)]
    if surrogates:  # 2048 of 1.1 million code points: made likely, like the separators
        odd.append(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
    chars = st.characters(exclude_categories=() if surrogates else ("Cs",))
    return st.text(st.one_of(*odd, chars), max_size=max_size)


def clean(s: str) -> str:
    return replace_surrogates(s)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12)


@QUICK
@given(json_values)
def test_a_json_line_is_one_line_of_utf8_and_reads_back(value: Any) -> None:
    line = jsonl.dumps(value)
    assert line.splitlines() == [line] and "\n" not in line  # every reader sees one line
    line.encode("utf-8")  # no surrogate left to fail the write
    assert jsonl.loads(line) == replace_surrogates_in(value)
    assert jsonl.loads(line.encode()) == replace_surrogates_in(value)
    assert jsonl.split(line + "\n" + line + "\n") == [line, line]


def test_a_surrogate_escape_read_from_a_file_comes_back_replaced() -> None:
    assert jsonl.loads('{"a": "x\\ud800y", "\\uDFFF": ["\\ud83d\\ude00"]}') == {
        "a": "x\ufffdy", "\ufffd": ["\U0001f600"]}


def _conversation(user: str, reply: str, output: str, arg: str) -> list[Message]:
    call = ToolCall("call_1", "bash", {"command": arg})
    return [Message("user", user),
            Message("assistant", reply, [call], model=OPENAI, usage=Usage(1, 2)),
            Message("tool", output, tool_call_id="call_1"),
            Message("assistant", reply, model=OPENAI)]


@QUICK
@given(text(), text(), text(), text())
def test_a_transcript_round_trips_into_both_providers_requests(
        tmp_path_factory: pytest.TempPathFactory, user: str, reply: str, output: str,
        arg: str) -> None:
    """SessionLog -> load_messages -> each adapter's request, as the SDK encodes it. (Each
    text has a word in it: the adapters drop blank texts, which the APIs refuse.)"""
    user, reply, output = (f"[{t}]" for t in (user, reply, output))
    path = tmp_path_factory.mktemp("s") / "s.jsonl"
    sent = _conversation(user, reply, output, arg)
    log = SessionLog(path, {"id": "s", "trigger": f"chat:{user}"})
    for m in sent:
        log.append(m)
    log.end(status="ok", error=reply)
    back = load_messages(path)
    assert back == _conversation(clean(user), clean(reply), clean(output), clean(arg))
    for request in (to_openai("system", back), to_anthropic(back)):
        body = json.dumps(request, ensure_ascii=False).encode("utf-8")  # as httpx sends it
        for part in (user, reply, output):
            assert json.dumps(clean(part), ensure_ascii=False)[1:-1] in body.decode()


@QUICK
@given(text(), text())
def test_ledger_and_runs_rows_round_trip(tmp_path_factory: pytest.TempPathFactory,
                                         trigger: str, result: str) -> None:
    folder = tmp_path_factory.mktemp("rows")
    Ledger(folder / "usage.jsonl", "run", trigger, {}).record("ollama:x", Usage(3, 4))
    [row], skipped, _ = read_ledger(folder / "usage.jsonl")
    assert skipped == 0 and row.trigger == (clean(trigger) or "?") and row.output == 4
    runs = Runs(folder)
    rid = runs.new("hook", trigger, {"task": result})
    runs.update(rid, status="done", result=result)
    runs.close()
    again = Runs(folder)  # reloaded from runs.jsonl and runs/<id>.json
    assert again.get(rid)["result"] == clean(result)
    assert again.get(rid)["name"] == clean(trigger)
    again.close()


@QUICK
@given(text(), text())
def test_day_log_entry_and_commit_subject_stay_one_line(
        tmp_path_factory: pytest.TempPathFactory, task: str, answer: str) -> None:
    """The owner's task and the answer each become one escaped line, cut at "\\n" only."""
    home = tmp_path_factory.mktemp("home")
    when = datetime(2026, 11, 30, 12, 0)
    path = day_path(home, when)
    append_entry(home, when, "cli", OPENAI, task, answer, [])
    append_entry(home, when, "hook:x", OPENAI, task, answer, [], source="hook:x")
    lines = path.read_text(encoding="utf-8").split("\n")
    assert path.read_text(encoding="utf-8").splitlines() == lines[:-1]
    first = next((x for x in task.split("\n") if x.strip()), "")
    assert f"- Task: {one_line(first, 200)}" in lines  # a surrogate shown as \\ud800
    assert sum(x.startswith("- Task (untrusted, from hook:x): \"") for x in lines) == 1
    subject = subject_line(task)
    assert subject.splitlines() == [subject]
    subject.encode("utf-8")


@SLOW
@given(user=text(), reply=text(), output=text(max_size=20))
def test_any_text_round_trips_through_a_turn_and_its_resumption(
        fake: FakeLLM, home: Path, workdir: Path, user: str, reply: str,
        output: str) -> None:
    """`agentd run` with the text in argv, the model's reply and a tool's output (a file
    `cat` prints), then `agentd chat --resume`: the next request carries all three, and
    the day log and the commit message hold the task as one line."""
    user = "do " + user  # a prompt that strips to nothing is a usage error
    (workdir / "out.txt").write_bytes(output.encode("utf-8", "surrogatepass"))
    shown = output.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # bash's view
    note = home / "notes" / "n.md"
    fake.push({"tool_calls": [
        {"name": "bash", "arguments": {"command": "cat out.txt"}},
        {"name": "write", "arguments": {"path": str(note), "content": "x"}}]},
        {"text": "done " + reply})
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", OPENAI, "--json", user)
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["text"] == clean("done " + reply)
    fake.push({"text": "ok"})
    sid = Path(report["session"]).stem
    r = agentd("chat", "--home", str(home), "-C", str(workdir), "-m", OPENAI, "--resume", sid,
               input="next\n")
    assert r.exit_code == 0, r.stderr
    sent = model_requests(fake)[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool",
                                         "assistant", "user"]
    assert sent[1]["content"] == clean(user).strip()
    assert shown in sent[3]["content"]
    assert sent[5]["content"] == clean("done " + reply)
    assert sent[6]["content"] == "next"
    subject = subprocess.run(["git", "-C", str(home), "log", "-1", "--skip=0", "--format=%s",
                              "--", "notes/n.md"], capture_output=True, check=True).stdout
    assert subject.decode() == subject_line(clean(user).strip()) + "\n"
    note.unlink()
    day = day_path(home, datetime.now()).read_text(encoding="utf-8")
    first = next(x for x in clean(user).strip().split("\n") if x.strip())
    assert f"- Task: {one_line(first, 200)}\n" in day


def test_a_u2028_conversation_goes_on_in_chat_cron_and_the_bridge(
        fake: FakeLLM, home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: one U+2028 (and friends) in the user's text, the model's and a
    tool's output, then every way a session goes on."""
    bridge_env(monkeypatch)
    bridge_home(home)  # the fake's model for cron and the bridge; chat names its own
    (workdir / "odd.txt").write_text(ODD)
    fake.push({"tool_calls": [{"name": "bash", "arguments": {"command": "cat odd.txt"}}]},
              {"text": "seen " + ODD}, {"text": "again"})
    r = agentd("chat", "--home", str(home), "-C", str(workdir), "-m", OPENAI,
               input=f"look {ODD}\n")
    assert r.exit_code == 0, r.stderr
    r = agentd("chat", "--home", str(home), "-C", str(workdir), "-m", OPENAI, "--resume",
               input="more\n")
    assert r.exit_code == 0 and "(4 messages)" in r.stdout, r.stdout + r.stderr
    contents = [m.get("content") for m in model_requests(fake)[-1].body["messages"]]
    assert contents[1:] == [f"look {ODD}", None, ODD, "seen " + ODD, "more"]

    (home / "cron" / "odd.md").write_text(f"---\nevery: 1d\nsession: continue\n---\n{ODD}\n")
    fake.push({"text": f"one {ODD}"}, {"text": "two"})
    for _ in range(2):
        r = agentd("cron", "run", "odd", "--home", str(home), "-q")
        assert r.exit_code == 0, r.stderr
    contents = [m.get("content") for m in model_requests(fake)[-1].body["messages"]]
    assert len(contents) == 4 and contents[2] == f"one {ODD}"
    assert f"\n{ODD}\n" in contents[1] and f"\n{ODD}\n" in contents[3]  # the job's prompt

    fake.push({"text": f"hi {ODD}"}, {"text": "still here"})
    with BridgeHost(home) as host:
        for said in (ODD, "and now?"):
            r = httpx2.post(f"{host.url}/v1/chat/completions", timeout=60, headers={
                "authorization": f"Bearer {TOKEN}"}, json={
                "model": "agentd", "user": "odd", "messages": [{"role": "user",
                                                                "content": said}]})
            assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "still here"
    contents = [m.get("content") for m in model_requests(fake)[-1].body["messages"]]
    assert ODD in contents and f"hi {ODD}" in contents


def test_bytes_that_are_not_utf8_in_argv_and_stdin_are_replaced(
        fake: FakeLLM, home: Path, tmp_path: Path) -> None:
    """`agentd run $'\\xff'` and a chat fed such bytes: U+FFFD, a normal turn, exit 0."""
    work = sandbox_workdir(tmp_path / "w")
    fake.push({"text": "one"}, {"text": "two"})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent),
           "PYTHONIOENCODING": "utf-8:strict"}  # a UTF-8 locale's stdin, which is strict
    base = [sys.executable, "-m", "agentd"]
    run = subprocess.run([*base, "run", "--home", str(home), "-C", str(work), "-m", OPENAI,
                          b"caf\xe9 \xff"], env=env, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    chat = subprocess.run([*base, "chat", "--home", str(home), "-C", str(work), "-m", OPENAI],
                          input=b"ol\xe9 \xff\n", env=env, capture_output=True, timeout=60)
    assert chat.returncode == 0, chat.stderr
    assert b"Traceback" not in run.stderr + chat.stderr
    users = [m["content"] for r in model_requests(fake) for m in r.body["messages"]
             if m["role"] == "user"]
    assert users == ["caf\ufffd \ufffd", "ol\ufffd \ufffd"]


def test_surrogates_from_the_model_are_replaced_everywhere(fake: FakeLLM, home: Path,
                                                           workdir: Path) -> None:
    """A provider's "\\ud800" in its text and in a tool call's arguments: the turn runs,
    the answer prints, the transcript, ledger and day log are written, the session goes on."""
    fake.push({"text": "a \ud800", "tool_calls": [
        {"name": "bash", "arguments": {"command": "echo '\udcff'"}}]}, {"text": "b \udfff"})
    r = agentd("run", "--home", str(home), "-C", str(workdir), "-m", OPENAI, "--json", "go")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["text"] == "b \ufffd"
    fake.push({"text": "ok"})
    r = agentd("chat", "--home", str(home), "-C", str(workdir), "-m", OPENAI, "--resume",
               input="next\n")
    assert r.exit_code == 0, r.stderr
    sent = model_requests(fake)[-1].body["messages"]
    assert sent[2]["content"] == "a \ufffd"
    assert json.loads(sent[2]["tool_calls"][0]["function"]["arguments"]) == {
        "command": "echo '\ufffd'"}
    assert sent[3]["content"].strip() == "\ufffd" and sent[4]["content"] == "b \ufffd"
    rows, skipped, _ = read_ledger(home / ".agentd" / "usage.jsonl")
    assert len(rows) == 3 and skipped == 0
    assert "Outcome: ok, 2 steps: b \ufffd" in day_path(home, datetime.now()).read_text()


def test_a_lone_surrogate_is_a_400_from_a_real_agentd_serve_and_it_lives(
        fake: FakeLLM, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real process: signed webhooks and chat requests holding a lone
    surrogate escape get 400 `invalid_unicode` and start no turn; the next good request
    is served."""
    bridge_env(monkeypatch)
    bridge_home(home)
    auth = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    with ServeProcess(home) as serve:
        for n, escape in enumerate([b"\\ud800", b"\\udfff", b"\\uDBFF"]):
            hook = b'{"text": "x %s y"}' % escape
            r = httpx2.post(f"{serve.url}/hooks/x", content=hook,
                            headers=signed(hook, f"m{n}"), timeout=60)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_unicode"
            chat = b'{"messages": [{"role": "user", "content": "hi %s"}]}' % escape
            r = httpx2.post(f"{serve.url}/v1/chat/completions", content=chat, headers=auth,
                            timeout=60)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_unicode"
        fake.push({"text": f"fine {ODD}"})
        r = httpx2.post(f"{serve.url}/v1/chat/completions", headers=auth, timeout=60, json={
            "messages": [{"role": "user", "content": f"hi {ODD} \U0001f600"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == f"fine {ODD}"
    assert len(model_requests(fake)) == 1  # only the good request reached the model
    assert "Traceback" not in serve.log and "internal error" not in serve.log


def test_the_bridge_replies_and_goes_on_with_any_text(fake: FakeLLM, home: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat request with any valid text, a reply with any text (a provider's lone
    surrogates included): the reply comes back whole (surrogates as U+FFFD), and the
    session's next request carries both. One bridge serves every example."""
    bridge_env(monkeypatch)
    bridge_home(home)
    auth = {"authorization": f"Bearer {TOKEN}"}
    with BridgeHost(home) as host:

        @settings(max_examples=5, deadline=None, phases=NO_SHRINK, database=None)
        @given(said=text(surrogates=False), reply=text())
        def example(said: str, reply: str) -> None:
            reply = f"r {reply} ."  # the bridge strips the answer it sends back
            fake.push({"text": reply}, {"text": "next"})
            user = f"u{len(model_requests(fake))}"  # a new conversation per example
            answers = []
            for content in ("s " + said, "again"):
                r = httpx2.post(f"{host.url}/v1/chat/completions", headers=auth, timeout=60,
                                json={"user": user, "messages": [{"role": "user",
                                                                  "content": content}]})
                assert r.status_code == 200, r.text
                answers.append(r.json()["choices"][0]["message"]["content"])
            assert answers == [clean(reply), "next"]
            contents = [m.get("content") for m in model_requests(fake)[-1].body["messages"]]
            assert contents[1:] == ["s " + said, clean(reply), "again"]

        example()


def test_a_webhook_run_result_with_any_text_survives_a_restart(
        fake: FakeLLM, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """runs.jsonl and runs/<id>.json, written by one bridge and read by the next."""
    bridge_env(monkeypatch)
    bridge_home(home)
    fake.push({"text": f"done {ODD} \ud800"})
    body = json.dumps({"text": ODD}).encode()
    auth = {"authorization": f"Bearer {TOKEN}"}
    with BridgeHost(home) as host:
        r = httpx2.post(f"{host.url}/hooks/x", content=body, headers=signed(body, "m-odd"))
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        wait_for(lambda: httpx2.get(f"{host.url}/runs/{rid}", headers=auth).json()[
            "status"] == "done", 30, "the run")
    with BridgeHost(home) as host:
        run = httpx2.get(f"{host.url}/runs/{rid}", headers=auth).json()
    assert run["status"] == "done" and run["result"] == f"done {ODD} \ufffd"
    task = json.dumps(model_requests(fake)[0].body, ensure_ascii=False)
    assert "a\u2028b\u2029c\x85d" in task  # the event, as JSON, in the hook's prompt
