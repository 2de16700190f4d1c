"""JSON lines: one JSON object per line, the format of every append-only file agentd keeps
(session transcripts, the usage ledger, the daemon's and the bridge's run records).

Any text must survive the round trip, whatever it holds, so all of them write and read
through here:
- A line is split from the next at "\\n" only. `str.splitlines()` also splits at U+0085,
  U+2028, U+2029 (and controls that JSON escapes anyway), which `json.dumps(...,
  ensure_ascii=False)` leaves raw inside a string: one such character in a message would
  cut its row in two and make the whole transcript unreadable. So `dumps` escapes those
  three (`\\u2028`), and `split` splits at "\\n" alone.
- Lone surrogates (agentd/surrogates.py) cannot be written as UTF-8: `dumps` writes U+FFFD
  for them, and `loads` does the same for a `\\ud800` escape found in a file, so a
  surrogate never reaches the code that sends a conversation on.
Everything else stays UTF-8 as it is, so the files remain readable in an editor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentd.home import private_dir
from agentd.homefs import Root
from agentd.surrogates import REPLACEMENT

# Raw in json.dumps(ensure_ascii=False) output only inside strings, so rewriting them in
# the serialized text is safe: line separators become escapes, surrogates U+FFFD.
_UNSAFE = re.compile("[\x85\u2028\u2029\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _fix(m: re.Match[str]) -> str:
    ch = m.group()
    return REPLACEMENT if "\ud800" <= ch <= "\udfff" else f"\\u{ord(ch):04x}"


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """`value` as one line of JSON, without the newline: valid UTF-8, and no character in
    it that any line reader could take for a line end."""
    text = json.dumps(value, ensure_ascii=False, default=default)
    return _UNSAFE.sub(_fix, text) if _UNSAFE.search(text) else text


def append(path: Path, value: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Append `value` as one line, in one write (appends of a line this size do not
    interleave with another process's), creating the folder on first use.

    These files live in `.agentd/`, which bash can write when the sandbox is off, so the
    append goes through the confined layer (agentd.homefs `append_text`): a symlink, FIFO
    or hard link planted at the name is replaced by a fresh file, never written through;
    a planted `.agentd` folder itself is refused (agentd.home `private_dir`)."""
    private_dir(path.parent)
    with Root(path.parent) as root:
        root.append_text(path.name, dumps(value, default) + "\n")


def split(text: str) -> list[str]:
    """The lines of a JSON-lines text, at "\\n" only; the empty tail after the last
    newline is not a line (a torn last line, with no newline, is)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def loads(line: str | bytes) -> Any:
    """One line's value (ValueError when it is not JSON); a lone surrogate escape in it
    comes back as U+FFFD. Escapes are rare, so the check is a search of the raw line."""
    value = json.loads(line)
    escaped = (_SURROGATE_ESCAPE_BYTES.search(line) if isinstance(line, bytes)
               else _SURROGATE_ESCAPE.search(line))
    if escaped:
        value = json.loads(dumps(value))
    return value
