"""Session transcripts: `.agentd/sessions/<id>.jsonl`, appended message by message as the
turn happens, so a crash loses at most the message being written."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from agentd.errors import AgentdError
from agentd.llm.types import Message
from agentd.redact import Redactor
from agentd.redact import default as default_redactor


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class SessionLog:
    """Appends to a transcript. `header` is its first row when this log starts it; a turn
    resuming an existing transcript says so (`continues`), and None never writes one.

    Every row is redacted (agentd/redact.py) before it is written, so a key the model typed
    or a provider echoed in an error never lands on disk. Without an explicit `redactor`,
    the default one (well-known key variables and key shapes) is used."""

    def __init__(self, path: Path, header: dict[str, Any] | None,
                 redactor: Redactor | None = None):
        self.path = path
        self.redactor = redactor or default_redactor()
        path.parent.mkdir(parents=True, exist_ok=True)
        # written with the first row: a turn that fails before it (a config error) leaves
        # no file, and a log can be made before the turn knows it will run
        self._header = None if header is None else {"type": "session", **header}

    def _write(self, row: dict[str, Any]) -> None:
        if self._header is not None:
            header, self._header = self._header, None
            self._write(header)
        row = self.redactor.redact_data(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

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
        # "\n" only: str.splitlines() also splits at U+0085, U+2028 and other separators
        # that json.dumps(ensure_ascii=False) leaves raw inside a message's text.
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
    except FileNotFoundError:
        raise AgentdError(f"no session {path.stem}: see .agentd/sessions/") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AgentdError(f"cannot read session {path}: {e}") from None
    messages = []
    compaction: dict[str, Any] | None = None
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
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
        from agentd.compact import compacted

        return compacted(messages, compaction)
    return messages
