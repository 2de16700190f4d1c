"""Session transcripts: `.agentd/sessions/<id>.jsonl`, appended message by message as the
turn happens, so a crash loses at most the message being written."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from agentd.llm.types import Message


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class SessionLog:
    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write({"type": "session", **header})

    def _write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def append(self, msg: Message) -> None:
        self._write({"type": "message", "ts": round(time.time(), 3), **msg.to_dict()})

    def end(self, **info: Any) -> None:
        self._write({"type": "end", "ts": round(time.time(), 3), **info})
