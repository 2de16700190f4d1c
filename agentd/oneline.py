"""Text made inert for one line of a trusted file (the day log, which every later turn's
system prompt quotes): nothing in it can start a line of its own, fake a heading, hide
itself from a reader (bidi overrides) or break the encoding (lone surrogates from file
names that are not UTF-8).

`one_line` is for the owner's own text: runs of whitespace (newlines included) become one
space, as always, and any other control character is escaped. `quoted` is for strangers'
text: a double-quoted literal in which newlines and every control character are escaped
(`\\n`, `\\x1b`, `\\u2028`), so it reads as data and cannot close its own quotes. The
C0 and C1 controls are escaped as agentd.termsafe shows them on a terminal.
"""

from __future__ import annotations

import re

from agentd.termsafe import terminal_safe

# What terminal_safe leaves because a terminal shows it as layout: newline and tab; and
# what starts a new line or hides text for other readers (a model, an editor): U+2028 and
# U+2029, bidi controls, and lone surrogates (os.fsdecode's stand-ins for non-UTF-8 bytes).
_LAYOUT = re.compile("[\n\t\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\t": "\\t"}


def _code(m: re.Match[str]) -> str:
    ch = m.group()
    return _SHORT.get(ch) or f"\\u{ord(ch):04x}"


def escape(text: str) -> str:
    """Every control character as a visible escape (`\\n`, `\\x1b`, `\\u2028`); all
    other text unchanged."""
    return _LAYOUT.sub(_code, terminal_safe(text))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int) -> str:
    """Whitespace runs as single spaces, cut to `limit` characters, controls escaped."""
    return escape(_cut(" ".join(text.split()), limit))


def quoted(text: str, limit: int) -> str:
    """`text` (cut to `limit` characters) as a double-quoted literal on one line:
    backslashes and quotes escaped, then every control character."""
    body = _cut(text.strip(), limit).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escape(body)}"'
