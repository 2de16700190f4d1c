"""Session transcripts: `.agentd/sessions/<id>.jsonl`, appended message by message as the
turn happens, so a crash loses at most the message being written. Written and read as
agentd.jsonl lines, so no text in a message (a U+2028, a lone surrogate) can break one."""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from agentd import jsonl
from agentd.errors import AgentdError
from agentd.home import private_dir
from agentd.homefs import Root
from agentd.llm.types import Message
from agentd.redact import Redactor
from agentd.redact import default as default_redactor

# How a compacted conversation reads (agentd/compact.py writes the rows): its summary
# stands first, as a user message that starts with this.
SUMMARY_HEAD = ("[agentd: the earlier conversation, summarised to fit the context window; "
                "the session transcript keeps all of it]\n\n")

# A session name: what `new_id` makes, `chat-<key>` (the bridge), `cron-<job>`, or a name a
# person gives (`agentd run --session NAME`). It is a file name in .agentd/sessions/, and
# names also come from files the agent can write, so nothing else passes: no "/", no
# leading "." or "-", no control characters, nothing longer than a file name wants.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def check_name(name: str) -> str:
    """`name` (a `.jsonl` suffix dropped) when it is a valid session name, else AgentdError."""
    sid = name.removesuffix(".jsonl")
    if not NAME.fullmatch(sid):
        raise AgentdError(f"{name!r} is not a session name: letters, digits, '_', '-' and "
                          "'.', at most 128, not starting with '.' or '-'")
    return sid


class SessionLog:
    """Appends to a transcript. `header` is its first row when this log starts it; a turn
    resuming an existing transcript says so (`continues`), and None never writes one.

    Every row is redacted (agentd/redact.py) before it is written, so a key the model typed
    or a provider echoed in an error never lands on disk. Without an explicit `redactor`,
    the default one (well-known key variables and key shapes) is used.

    Rows are appended through the confined layer (agentd.jsonl `append`, through
    agentd/homefs `append_text` as the day log is): a symlink planted at the transcript's
    name (a dangling one to /etc/cron.d/x, say, which `path.exists()` calls absent, so the
    turn starts a new session there) or a FIFO is replaced by a fresh file, never written
    through or opened."""

    def __init__(self, path: Path, header: dict[str, Any] | None,
                 redactor: Redactor | None = None):
        self.path = path
        self.redactor = redactor or default_redactor()
        private_dir(path.parent)
        # written with the first row: a turn that fails before it (a config error) leaves
        # no file, and a log can be made before the turn knows it will run
        self._header = None if header is None else {"type": "session", **header}

    def _write(self, row: dict[str, Any]) -> None:
        if self._header is not None:
            header, self._header = self._header, None
            self._write(header)
        jsonl.append(self.path, self.redactor.redact_data(row))

    def continues(self) -> None:
        """The transcript exists already (the turn resumes it): write no header."""
        self._header = None

    def append(self, msg: Message) -> None:
        self._write({"type": "message", "ts": round(time.time(), 3), **msg.to_dict()})

    def end(self, **info: Any) -> None:
        self._write({"type": "end", "ts": round(time.time(), 3), **info})

    def compaction(self, summary: str, first_kept: int, **info: Any) -> None:
        """From here on the conversation is `summary` + the messages from the
        `first_kept`-th on (counting message rows from 0); nothing is deleted."""
        self._write({"type": "compaction", "ts": round(time.time(), 3), "summary": summary,
                     "first_kept": first_kept, **info})


def load_messages(path: Path) -> list[Message]:
    """The conversation in a transcript, for resuming it (possibly on another provider).

    A line cut short by a crash is skipped; anything else unreadable is an error naming the
    file and line, since silently dropping history would change what the model sees.
    After a compaction row, the conversation is its summary + the messages it kept
    (agentd/compact.py); a malformed compaction row is ignored, which sends more, not less.
    """
    try:
        lines = jsonl.split(_read_whole(path).decode("utf-8"))
    except FileNotFoundError:
        raise AgentdError(f"no session {path.stem}: see .agentd/sessions/") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AgentdError(f"cannot read session {path}: {e}") from None
    messages = []
    compaction: dict[str, Any] | None = None
    for n, line in enumerate(lines, 1):
        try:
            row = jsonl.loads(line)
        except ValueError:
            if n == len(lines):
                continue  # a torn last line
            raise AgentdError(f"{path}:{n}: not a JSON line; fix or remove it") from None
        if isinstance(row, dict) and row.get("type") == "message":
            try:
                messages.append(Message.from_dict(row))
            except (TypeError, ValueError) as e:
                raise AgentdError(f"{path}:{n}: not a message ({e})") from None
        elif isinstance(row, dict) and row.get("type") == "compaction":
            compaction = row
    if compaction is not None:
        return compacted(messages, compaction)
    return messages


def _read_whole(path: Path) -> bytes:
    """The transcript's bytes, read through the confined layer (agentd/homefs): a symlink
    or a FIFO planted in its place is refused (Refused, an OSError), never followed."""
    with Root(path.parent) as root, root.open_regular(path.name) as (fd, _), \
            os.fdopen(os.dup(fd), "rb") as f:
        return f.read()


def is_summary(m: Message) -> bool:
    return m.role == "user" and m.text.startswith(SUMMARY_HEAD)


def summary_message(text: str) -> Message:
    return Message("user", SUMMARY_HEAD + text.strip())


def trim_output(m: Message, limit: int) -> Message:
    """A tool result cut to `limit` characters (head and tail) for sending."""
    if m.role != "tool" or len(m.text) <= limit:
        return m
    head, tail = m.text[: limit * 2 // 3], m.text[-(limit // 3):]
    cut = len(m.text) - len(head) - len(tail)
    text = (f"{head}\n[… {cut} characters of this old output cut by compaction; run the "
            f"command again if you need them …]\n{tail}")
    return Message("tool", text, tool_call_id=m.tool_call_id, is_error=m.is_error)


def compacted(messages: list[Message], row: dict[str, Any]) -> list[Message]:
    """A transcript's messages as they are sent after its compaction `row`: the summary,
    then the kept messages, tool outputs before `trim_until` trimmed. A row that does not
    fit the transcript (hand-edited, or from another file) leaves the messages whole."""
    first, text = row.get("first_kept"), row.get("summary")
    until, tool_output = row.get("trim_until", first), row.get("tool_output", 2000)
    if (not isinstance(text, str) or not text.strip()
            or not all(isinstance(n, int) and not isinstance(n, bool)
                       for n in (first, until, tool_output))
            or not 0 < first < len(messages) or messages[first].role == "tool"
            or tool_output < 100):
        return messages
    kept = [trim_output(m, tool_output) if first + i < until else m
            for i, m in enumerate(messages[first:])]
    return [summary_message(text), *kept]
