"""The HEARTBEAT.md format: a markdown checklist whose items carry zero-token conditions.

Each top-level list item is one standing task; indented lines under it may carry
conditions the runtime checks before any model call:

    - Summarise new files in notes/inbox-log.md.
      every: 2h
      when: `test -n "$(find notes -newer notes/inbox-log.md)"`

`every: <duration>` — at most that often (90s, 15m, 2h, 1d). `when: <command>` — a gate:
a shell command run in the sandbox (as the bash tool runs it); exit status 0 means "needs
attention", anything else means "not now". With both, the gate runs at most once per
interval. An item with neither is due on every tick (and so costs a model call on every
tick: give it a condition). Text outside list items, inside code fences or HTML comments
is documentation and never sent to the model. Why this shape: it renders as an ordinary
checklist, the agent can edit it with the same tools as any note, and a condition is a
line a person reads at a glance."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agentd.config import parse_duration
from agentd.errors import AgentdError
from agentd.homefs import Refused, Root

HEARTBEAT = "memory/HEARTBEAT.md"
MAX_BYTES = 256 * 1024

ITEM = re.compile(r"^ ?(?:[-*+]|\d{1,3}[.)])\s+(?:\[[ xX]\]\s+)?(.*\S)\s*$")
COND = re.compile(r"^\s+(?:[-*+]\s+)?(every|when)\s*:\s*(.*?)\s*$", re.I)
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass
class Item:
    text: str  # the item's own lines, conditions removed
    line: int
    every: float | None = None
    gate: str | None = None

    @property
    def key(self) -> str:
        return hashlib.sha1(" ".join(self.text.split()).encode()).hexdigest()[:12]


def _gate_command(value: str) -> str:
    """`cmd` (any run of backticks) or the bare rest of the line."""
    m = re.fullmatch(r"(`+)(.*?)\1", value)
    if m:
        return m.group(2).strip()
    if value.startswith("`"):
        raise ValueError("the command's opening backtick is not closed")
    return value


def _strip_comments(lines: list[str]) -> list[str]:
    """Blank out HTML comments and fenced code, keeping line numbers."""
    out, in_fence, in_comment = [], False, False
    for line in lines:
        if in_comment:
            if "-->" in line:
                in_comment = False
                line = line.split("-->", 1)[1]
            else:
                line = ""
        if FENCE.match(line):
            in_fence = not in_fence
            out.append("")
            continue
        if in_fence:
            out.append("")
            continue
        while "<!--" in line:
            head, _, rest = line.partition("<!--")
            if "-->" in rest:
                line = head + rest.split("-->", 1)[1]
            else:
                line, in_comment = head, True
        out.append(line)
    return out


def parse(data: bytes) -> tuple[list[Item], list[str]]:
    """Items and problems ("line 7: every: 'soon' is not a duration"). A bad condition
    drops only its item; the others still run."""
    if len(data) > MAX_BYTES:
        return [], [f"over {MAX_BYTES // 1024} KiB; keep the checklist short"]
    if b"\0" in data:
        return [], ["not a text file"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], [f"not UTF-8 text (byte {e.start})"]
    items: list[Item] = []
    errors: list[str] = []
    bad: set[int] = set()
    current: Item | None = None
    for n, line in enumerate(_strip_comments(text.splitlines()), 1):
        m = ITEM.match(line)
        if m:
            current = Item(m.group(1), n)
            items.append(current)
            continue
        if current is None:
            continue
        if line.strip() and not line[:1].isspace():
            current = None  # a paragraph or heading ends the item
            continue
        c = COND.match(line)
        if not c:
            if line.strip():
                current.text += "\n" + line.strip()
            continue
        key, value = c.group(1).lower(), c.group(2)
        try:
            if key == "every":
                if current.every is not None:
                    raise ValueError("two every: lines")
                current.every = parse_duration(value, "every")
            else:
                if current.gate is not None:
                    raise ValueError("two when: lines; join them with && in one")
                current.gate = _gate_command(value)
                if not current.gate:
                    raise ValueError("when: needs a command, e.g. when: `test -s notes/todo.md`")
        except (AgentdError, ValueError) as e:
            errors.append(f"line {n}: {e}; item on line {current.line} skipped")
            bad.add(id(current))
    return [i for i in items if id(i) not in bad], errors


def load(home: Path) -> tuple[list[Item], list[str]]:
    """The checklist's items and problems. The file is agent-written: it is read through
    homefs, so a symlink (to /proc/self/environ, say) or a FIFO is a problem, never read."""
    try:
        with Root(home) as root:
            data = root.read_bytes(HEARTBEAT, limit=MAX_BYTES + 1)
    except FileNotFoundError:
        return [], []
    except Refused as e:
        return [], [f"not read: {e}"]
    except OSError as e:
        return [], [f"cannot read: {e.strerror}"]
    return parse(data)




@dataclass
class Due:
    item: Item
    output: str = ""  # the gate's output, when a gate fired


def build_task(due: list[Due], now: datetime) -> str:
    lines = [f"Heartbeat, {now:%Y-%m-%d %H:%M %Z}. These items from {HEARTBEAT} need "
             "attention now:", ""]
    for n, d in enumerate(due, 1):
        body = d.item.text.replace("\n", "\n   ")
        lines.append(f"{n}. {body}")
        if d.item.gate:
            lines.append(f"   (its check `{d.item.gate}` says it needs attention"
                         + (")" if not d.output else "; its output:"))
            if d.output:
                lines += ["   ```", *("   " + x for x in d.output.splitlines()), "   ```"]
    lines += ["", "Do what they ask. If there is nothing worth telling the user, answer "
              "exactly [SILENT]; otherwise answer with a short report for them."]
    return "\n".join(lines)
