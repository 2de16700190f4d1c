"""Session transcripts: `.agentd/sessions/<id>.jsonl`, appended message by message as the
turn happens, so a crash loses at most the message being written. Written and read as
agentd.jsonl lines, so no text in a message (a U+2028, a lone surrogate) can break one."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from agentd import jsonl
from agentd.errors import AgentdError
from agentd.llm.types import Message
from agentd.redact import Redactor
from agentd.redact import default as default_redactor


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class SessionLog:
    """Appends to a transcript; `header` starts a new one, None continues an existing one.

    Every row is redacted (agentd/redact.py) before it is written, so a key the model typed
    or a provider echoed in an error never lands on disk. Without an explicit `redactor`,
    the default one (well-known key variables and key shapes) is used."""

    def __init__(self, path: Path, header: dict[str, Any] | None,
                 redactor: Redactor | None = None):
        self.path = path
        self.redactor = redactor or default_redactor()
        path.parent.mkdir(parents=True, exist_ok=True)
        if header is not None:
            self._write({"type": "session", **header})

    def _write(self, row: dict[str, Any]) -> None:
        jsonl.append(self.path, self.redactor.redact_data(row))

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
        lines = jsonl.split(path.read_text(encoding="utf-8"))
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
        from agentd.compact import compacted

        return compacted(messages, compaction)
    return messages
