"""Which chat session a stateless OpenAI client is continuing, from the history it sends.

`llm` and most chat UIs send no `user` field and no session header: each request carries
the whole conversation as the client remembers it. The bridge cannot trust that history
as input (only the last user message is new input; the transcript holds the rest), but it
can use it to recognise the conversation.

What "match" means. The *visible history* of a request is its user and assistant messages
before the last user message, each reduced to its text (string content, or the text parts
of an array) with runs of whitespace collapsed to one space; system, developer, tool and
function messages, and assistant messages with no text (tool calls only), are left out.
For every chat session the bridge keeps the same reduction of what it exchanged: each
user message it took as input and each answer exactly as it sent it (redacted, and for a
stream the streamed text with any tool lines). A request continues the session whose
latest exchanges end with its visible history (the history is a tail of the session: a
client may have dropped older messages, never added any); an empty history, or one that
is the tail of no session, starts a new one. When several sessions end the same way, the
one that answered last wins. An edited or regenerated message (a history that stops
before a session's latest answer) is not a tail: it starts a new session.

The index: per session, a short hash of each of its last TAIL items, and for each hash
the sessions whose latest item it is, so a request costs one dict lookup and a check of
at most a few tails, not a read of every transcript. It lives in
`.agentd/bridge/conversations.jsonl` (one row per answered turn, the session's new tail;
the last row of a session wins), compacted when mostly stale, keeping the MAX_SESSIONS
most recent sessions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from agentd import jsonl
from agentd.home import atomic_write
from agentd.state import append_line

TAIL = 64  # items (user or assistant texts) kept per session: a longer history is
# compared on its last TAIL items
MAX_SESSIONS = 5_000


def fingerprint(role: str, text: str) -> str:
    """A short hash of one visible message: its role and its text, whitespace-normalised
    (clients strip, re-wrap or re-join streamed text; the words stay)."""
    norm = " ".join(text.split())
    return hashlib.sha256(f"{role}\0{norm}".encode("utf-8", "replace")).hexdigest()[:16]


def visible(messages: list[dict[str, Any]]) -> list[str]:
    """The fingerprints of the user and assistant messages that have text, in order."""
    out = []
    for m in messages:
        if m.get("role") in ("user", "assistant"):
            text = content_text(m.get("content"))
            if text.strip():
                out.append(fingerprint(m["role"], text))
    return out


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of an array (images,
    audio and other parts carry none); "" for null or anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict)
                         and p.get("type") == "text" and isinstance(p.get("text"), str))
    return ""


def is_tail(history: list[str], tail: list[str]) -> bool:
    history = history[-TAIL:]
    return len(history) <= len(tail) and tail[len(tail) - len(history):] == history


class Conversations:
    """The session index of the OpenAI endpoint (see the module docstring)."""

    def __init__(self, folder: Path):
        self.path = folder / "conversations.jsonl"
        self.tails: dict[str, list[str]] = {}  # session -> hashes, oldest first
        self.by_last: dict[str, dict[str, None]] = {}  # hash -> sessions, latest last
        self.rows = 0
        try:
            lines = jsonl.split(self.path.read_bytes().decode("utf-8", "replace"))
        except OSError:
            lines = []
        for line in lines:
            try:
                row = jsonl.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if (isinstance(row, dict) and isinstance(s := row.get("s"), str)
                    and isinstance(t := row.get("tail"), list)
                    and t and all(isinstance(h, str) for h in t)):
                self._set(s, t[-TAIL:])
            self.rows += 1
        if self.rows > len(self.tails) + 100:
            self._compact()

    def find(self, history: list[str]) -> str | None:
        """The session whose latest items end with `history` (see the module docstring);
        None for an empty history or one that continues no session."""
        if not history:
            return None
        for session in reversed(self.by_last.get(history[-1], {})):
            if is_tail(history, self.tails[session]):
                return session
        return None

    def record(self, session: str, history: list[str], exchanged: list[str]) -> None:
        """`session` answered: the client's `history` and the items just `exchanged`
        (the user's input, the answer as sent) are its new tail. When the history was the
        session's tail, the longer tail the index knew is kept."""
        old = self.tails.get(session, [])
        base = old if is_tail(history, old) else history
        tail = (base + exchanged)[-TAIL:]
        self._set(session, tail)
        append_line(self.path, {"s": session, "tail": tail})
        self.rows += 1
        if self.rows > 2 * len(self.tails) + 1_000:
            self._compact()

    def _set(self, session: str, tail: list[str]) -> None:
        if session in self.tails:
            self._drop(session)
        self.tails[session] = tail  # re-inserted: the dict runs oldest to latest
        self.by_last.setdefault(tail[-1], {})[session] = None
        while len(self.tails) > MAX_SESSIONS:
            self._drop(next(iter(self.tails)))

    def _drop(self, session: str) -> None:
        tail = self.tails.pop(session)
        sessions = self.by_last.get(tail[-1], {})
        sessions.pop(session, None)
        if not sessions:
            self.by_last.pop(tail[-1], None)

    def _compact(self) -> None:
        rows = [jsonl.dumps({"s": s, "tail": t}) + "\n" for s, t in self.tails.items()]
        atomic_write(self.path, "".join(rows), durable=False)
        self.rows = len(rows)
