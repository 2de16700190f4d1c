"""Running one attack: a scripted model makes the tool calls through the real loop
(`agentd run` in-process, the real OpenAI SDK against the fake server, real bubblewrap),
then the test inspects the host. What the model saw is read back from the requests the fake
server received, so redaction and truncation are checked where they matter."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import Result
from conftest import agentd
from fakellm import FakeLLM

MODEL = "openai:gpt-5.4-mini"
Call = str | dict[str, Any]  # a bash command, or {"name": ..., "arguments": {...}}


@dataclass
class Attack:
    cli: Result | None  # None for a turn driven through run_turn (run_untrusted)
    data: dict[str, Any]  # the --json summary
    results: list[str]  # what the model received for each tool call, in order
    errors: list[bool]  # is_error per tool call
    session: str  # the raw transcript

    @property
    def seen(self) -> str:
        """Everything the model was shown."""
        return "\n".join(self.results)


def run_attack(fake: FakeLLM, home: Path, workdir: Path, *calls: Call) -> Attack:
    """Each call is one model step; then the model says "done". The turn must end ok:
    a refused attack is an error result, never a crashed turn."""
    tool_calls = [{"name": "bash", "arguments": {"command": c}} if isinstance(c, str) else c
                  for c in calls]
    fake.push(*({"tool_calls": [tc]} for tc in tool_calls), {"text": "done"})
    before = len(fake.requests)
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", MODEL, "attack")
    data = json.loads(r.stdout)
    assert r.exit_code == 0 and data["status"] == "ok", (r.stdout, r.stderr)
    posts = [q for q in fake.requests[before:] if q.method == "POST"]
    last = posts[-1].body["messages"]
    results = [m["content"] for m in last if m["role"] == "tool"]
    assert len(results) == len(calls)
    errors = [c["is_error"] for c in data["tool_calls"]]
    session = Path(data["session"]).read_text()
    return Attack(r, data, results, errors, session)


def run_untrusted(fake: FakeLLM, home: Path, workdir: Path, *calls: Call) -> Attack:
    """Like run_attack, as a stranger's turn: the real loop through agentd.turn.run_turn
    with the "untrusted" profile, as the daemon runs webhook and inbox turns."""
    import asyncio

    from agentd.config import load_settings
    from agentd.loop import Events
    from agentd.turn import TurnRequest, run_turn

    tool_calls = [{"name": "bash", "arguments": {"command": c}} if isinstance(c, str) else c
                  for c in calls]
    fake.push(*({"tool_calls": [tc]} for tc in tool_calls), {"text": "done"})
    before = len(fake.requests)
    req = TurnRequest("attack", workdir, trigger="webhook:attack", model=MODEL,
                      profile="untrusted")
    report = asyncio.run(run_turn(home, load_settings(home), req, Events()))
    assert report.ok, report.result
    posts = [q for q in fake.requests[before:] if q.method == "POST"]
    results = [m["content"] for m in posts[-1].body["messages"] if m["role"] == "tool"]
    assert len(results) == len(calls)
    errors = [c["is_error"] for c in report.tool_calls]
    assert report.session is not None
    return Attack(None, {"status": "ok"}, results, errors, report.session.read_text())


def set_sandbox(home: Path, **values: Any) -> None:
    """Put settings under the home's [sandbox] table: the live one if the file has one (TOML
    forbids a second), else a new one at the end (the template's headers are comments)."""
    path = home / "agentd.toml"
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    text = path.read_text()
    if "\n[sandbox]\n" in text:
        path.write_text(text.replace("\n[sandbox]\n", f"\n[sandbox]\n{lines}", 1))
    else:
        path.write_text(f"{text.rstrip()}\n\n[sandbox]\n{lines}")


def git_state(home: Path) -> str:
    """Everything about the home's repository a planted change could alter: its committed
    files (the day log aside: every turn commits its entry), config and hooks."""
    tree = subprocess.run(["git", "-C", str(home), "ls-tree", "-r", "HEAD"],
                          capture_output=True, text=True, check=True).stdout
    out = "".join(line + "\n" for line in tree.splitlines() if "\tmemory/daily/" not in line)
    hooks = sorted(p.name for p in (home / ".git" / "hooks").iterdir())
    return out + (home / ".git" / "config").read_text() + repr(hooks)


_counter = itertools.count(1)


def marker() -> str:
    """A string no other process on the machine has in its command line."""
    return f"agentdattack{os.getpid()}x{next(_counter)}"


def survivors(pattern: str, wait: float = 10.0) -> list[str]:
    """Host processes whose command line matches, after giving the kernel time to reap (it
    returns as soon as none is left: the deadline only matters on a loaded machine)."""
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run(["pgrep", "-af", re.escape(pattern)], capture_output=True,
                             text=True).stdout.splitlines()
        out = [line for line in out if "pgrep" not in line]
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


from conftest import requires_bwrap  # noqa: E402,F401  (re-exported for the attack tests)
