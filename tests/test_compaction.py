"""Compaction: near the context window older messages are summarised in what is sent;
the transcript keeps everything, and a resumed session starts from the summary.

The test home gives Anthropic an 8,000-token window (threshold 6,400, keep 2,400). The
fixed prompt is about 1,000 tokens and each file read returns about 3,000, so the third
request is the one that would not fit: it is preceded by the summary call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import agentd, json_out
from fakellm import FakeLLM

from agentd.compact import SUMMARISER, Compactor
from agentd.config import Endpoint, Settings, load_settings
from agentd.llm.types import Message, ToolCall
from agentd.loop import Events
from agentd.session import SUMMARY_HEAD, compacted, load_messages, trim_output
from agentd.turn import TurnReport, TurnRequest, run_turn

MODEL = "anthropic:claude-sonnet-5-5"
SUMMARY = "## Goal\nread both files\n## Progress\nALPHA file read: it is all A's"


def setup(home: Path, workdir: Path) -> None:
    path = home / "agentd.toml"
    text = path.read_text()
    tables = "\n[providers.anthropic]\nmax_retries = 1\n"
    assert text.count(tables) == 1
    path.write_text(f'model = "{MODEL}"\n' + text.replace(
        tables, tables + "context_window = 8000\n"))
    for name in ("alpha", "bravo"):
        line = f"{name.upper()}-" * 20
        (workdir / f"{name}.txt").write_text("\n".join([line] * 100) + "\n")


def read_call(workdir: Path, name: str) -> dict:
    return {"tool_calls": [{"name": "read", "arguments": {"path": str(workdir / name)}}]}


def turn(home: Path, workdir: Path, task: str, session: str | None = None) -> TurnReport:
    req = TurnRequest(task, workdir, session=session)
    return asyncio.run(run_turn(home, load_settings(home), req, Events()))


def posts(fake: FakeLLM) -> list[dict]:
    return [q.body for q in fake.requests if q.method == "POST"]


def text_of(body: dict) -> str:
    return json.dumps(body["messages"])


def assert_paired(body: dict) -> None:
    """Every tool_result answers a tool_use of the assistant turn just before it."""
    msgs = body["messages"]
    assert msgs[0]["role"] == "user"
    for i, m in enumerate(msgs):
        results = [b for b in m["content"] if isinstance(b, dict)
                   and b.get("type") == "tool_result"]
        if results:
            before = msgs[i - 1]
            assert i > 0 and before["role"] == "assistant"
            ids = {b["id"] for b in before["content"] if b["type"] == "tool_use"}
            assert {b["tool_use_id"] for b in results} == ids


def test_compaction_then_resume(fake: FakeLLM, home: Path, workdir: Path) -> None:
    setup(home, workdir)
    fake.push(read_call(workdir, "alpha.txt"), read_call(workdir, "bravo.txt"),
              {"text": SUMMARY}, {"text": "read both"})
    report = turn(home, workdir, "Read alpha.txt, then bravo.txt")
    assert report.ok and report.result.text == "read both"
    bodies = posts(fake)
    assert len(bodies) == 4
    # request 3 is the summary call: its own prompt, no tools, the old messages as text
    summary_call = bodies[2]
    assert summary_call["system"][0]["text"] == SUMMARISER and "tools" not in summary_call
    assert "ALPHA-ALPHA" in text_of(summary_call)
    # request 4 holds the summary and the recent messages, not the old ones
    after = bodies[3]
    first = after["messages"][0]["content"][0]["text"]
    assert first.startswith(SUMMARY_HEAD) and SUMMARY in first
    assert "ALPHA-ALPHA" not in text_of(after) and "BRAVO-BRAVO" in text_of(after)
    assert "Read alpha.txt, then bravo.txt" not in text_of(after)
    assert_paired(after)

    # the transcript lost nothing, and says where the summary starts
    rows = [json.loads(x) for x in Path(report.session or "").read_text().splitlines()]
    messages = [r for r in rows if r["type"] == "message"]
    assert len(messages) == 6  # task, call, result, call, result, answer
    assert "ALPHA-ALPHA" in json.dumps(messages)
    [row] = [r for r in rows if r["type"] == "compaction"]
    assert row["summary"] == SUMMARY and row["model"] == MODEL
    assert messages[row["first_kept"]]["tool_calls"][0]["arguments"]["path"].endswith(
        "bravo.txt")
    # the summary call is booked like any other (and counted in the budget's ledger)
    ledger = (home / ".agentd/usage.jsonl").read_text().splitlines()
    assert len(ledger) == 4

    # resume the session: the first request of the next turn starts from the summary
    fake.push({"text": "resumed fine"})
    again = turn(home, workdir, "and now?", session=Path(report.session or "").stem)
    assert again.ok
    resumed = posts(fake)[4]
    assert resumed["messages"][0]["content"][0]["text"].startswith(SUMMARY_HEAD)
    assert "ALPHA-ALPHA" not in text_of(resumed) and "BRAVO-BRAVO" in text_of(resumed)
    assert "and now?" in text_of(resumed)
    assert_paired(resumed)
    rows = [json.loads(x) for x in Path(report.session or "").read_text().splitlines()]
    assert [r["type"] for r in rows].count("session") == 1 and rows[0]["type"] == "session"


def test_a_compacting_turn_books_and_reports_every_call(fake: FakeLLM, home: Path,
                                                         workdir: Path) -> None:
    """The summary call goes through the turn's own ledger and transcript writers: one
    ledger row per model call, all of this run, and the reported cost (in `run --json`
    and the transcript's end row) is their sum, the summary's included."""
    setup(home, workdir)
    fake.push(read_call(workdir, "alpha.txt"), read_call(workdir, "bravo.txt"),
              {"text": SUMMARY}, {"text": "read both"})
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir),
               "Read alpha.txt, then bravo.txt")
    out = json_out(r)
    assert r.exit_code == 0 and out["status"] == "ok" and out["steps"] == 3
    ledger = [json.loads(x) for x in (home / ".agentd/usage.jsonl").read_text().splitlines()]
    assert len(ledger) == len(posts(fake)) == 4
    assert {row["run"] for row in ledger} == {out["run_id"]}
    summary_row = ledger[2]  # booked before the call it made room for
    assert summary_row["model"] == MODEL and summary_row["cost"] > 0
    assert out["cost"] == round(sum(row["cost"] for row in ledger), 9)
    loop_only = sum(row["cost"] for i, row in enumerate(ledger) if i != 2)
    assert out["cost"] > round(loop_only, 9)

    rows = [json.loads(x) for x in Path(out["session"]).read_text().splitlines()]
    types = [row["type"] for row in rows]
    assert types[0] == "session" and types.count("session") == 1
    assert types.count("compaction") == 1 and types.count("end") == 1
    assert rows[-1]["type"] == "end" and rows[-1]["cost"] == out["cost"]


def test_below_the_threshold_nothing_changes(fake: FakeLLM, home: Path,
                                             workdir: Path) -> None:
    setup(home, workdir)
    fake.push(read_call(workdir, "alpha.txt"), {"text": "done"})
    report = turn(home, workdir, "read alpha.txt")
    assert report.ok and len(posts(fake)) == 2
    rows = Path(report.session or "").read_text()
    assert '"compaction"' not in rows


def _conversation() -> list[Message]:
    msgs = [Message("user", "task " + "t" * 400)]
    for i in range(6):
        msgs.append(Message("assistant", "", [ToolCall(f"c{i}", "bash", {"command": "ls"})]))
        msgs.append(Message("tool", f"out{i} " + "o" * 4000, tool_call_id=f"c{i}"))
    return msgs


class Summariser:
    name = "test:model"

    def __init__(self) -> None:
        self.calls: list[list[Message]] = []

    async def complete(self, system: str, messages: list[Message], tools: list,
                       on_text: object = None, sampling: object = None) -> Message:
        self.calls.append(messages)
        return Message("assistant", "the summary", model=self.name)

    async def aclose(self) -> None:
        pass


def test_the_cut_never_separates_a_call_from_its_result() -> None:
    msgs = _conversation()
    for window in (2000, 3000, 5000, 7000):
        settings = Settings(providers={"test": Endpoint(context_window=window)})
        c = Compactor(settings, None, None)
        sent = asyncio.run(c.prepare(Summariser(), "test:model", "", msgs, []))
        assert sent[0].text.startswith(SUMMARY_HEAD)
        assert sent[1].role != "tool" and msgs[c.cut] is sent[1]
        kept_ids = {m.tool_call_id for m in sent if m.role == "tool"}
        call_ids = {tc.id for m in sent for tc in m.tool_calls}
        assert kept_ids == call_ids
        # old outputs are trimmed in what is sent, the newest one is whole
        tools = [m for m in sent if m.role == "tool"]
        assert tools[-1].text == msgs[-1].text
        assert all(len(m.text) < 2300 for m in tools[:-1])
    assert all(len(m.text) > 4000 for m in msgs if m.role == "tool")  # nothing stored changed


def test_hostile_compaction_rows_are_ignored(tmp_path: Path) -> None:
    msgs = _conversation()
    for row in ({"summary": "s", "first_kept": 2}, {"summary": "s", "first_kept": "1"},
                {"summary": 5, "first_kept": 1}, {"summary": "s", "first_kept": 99},
                {"summary": "", "first_kept": 1}, {"summary": "s", "first_kept": True},
                {"summary": "s", "first_kept": 1, "trim_until": "x"}):
        assert compacted(msgs, row) == msgs  # 2 would start on a tool result
    ok = compacted(msgs, {"summary": "s", "first_kept": 3, "trim_until": 5})
    assert ok[0].text == SUMMARY_HEAD + "s" and ok[1] is msgs[3]
    assert ok[2].text == trim_output(msgs[4], 2000).text and ok[4] is msgs[6]
    # through load_messages, with a torn line after the row
    path = tmp_path / "s.jsonl"
    lines = [json.dumps({"type": "session", "id": "s"})]
    lines += [json.dumps({"type": "message", **m.to_dict()}) for m in msgs]
    lines += [json.dumps({"type": "compaction", "summary": "s", "first_kept": 3}), '{"ty']
    path.write_text("\n".join(lines))
    loaded = load_messages(path)
    assert loaded[0].text == SUMMARY_HEAD + "s" and len(loaded) == len(msgs) - 3 + 1
