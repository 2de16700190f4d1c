"""outbox/: where a turn nobody watches leaves its answer, as a new file.

A heartbeat or cron turn's answer becomes `outbox/<kind>-<name>-<time>.md`; an inbox file's
answer takes the name claimed for it (`outbox/<file>.md`). The turn writes it before its
commit (agentd/turn.py), so one commit holds the agent's files, the answer and the day-log
entry. An answer of `[SILENT]` means "nothing worth reporting" and is not delivered.

outbox/ is writable by every turn, untrusted ones included, so every write here goes
through agentd.homefs: a new file under a free name, never written over or through what a
turn planted there.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agentd.homefs import Root

if TYPE_CHECKING:
    from agentd.loop import LoopResult

SILENT = "[SILENT]"
OUTBOX = "outbox"
MAX_NAMES = 10000  # x.md … x-9999.md: a folder that full is refused, not looped over


def is_silent(text: str) -> bool:
    """`[SILENT]` alone, or at the very start or end of a short reply (models like to add
    a word of politeness around it)."""
    t = text.strip()
    return t == SILENT or (len(t) < 200 and (t.startswith(SILENT) or t.endswith(SILENT)))


def free_names(rel: str) -> Iterator[str]:
    """`rel`, then `stem-2.ext`, `stem-3.ext`… (bounded): the names a new answer or a moved
    inbox file may take, so an earlier one is never overwritten."""
    p = PurePosixPath(rel)
    yield rel
    for n in range(2, MAX_NAMES):
        yield str(p.with_name(f"{p.stem}-{n}{p.suffix}"))


def write_new(root: Root, rel: str, text: str) -> str:
    """Write `text` to a new file at `rel`, else at the next free name beside it; returns
    the name used. Exclusive: whatever is already there (an earlier answer, or a symlink
    the agent planted in outbox/) is never written over or through."""
    for name in free_names(rel):
        try:
            root.write_text(name, text, exclusive=True)
            return name
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    raise FileExistsError(errno.EEXIST, f"no free name for {rel}")


def prepare(root: Root) -> str | None:
    """outbox/ as a real folder: a symlink there is replaced (its target untouched); returns
    a note saying so, for the caller's log."""
    return root.ensure_dir(OUTBOX)


@dataclass(frozen=True)
class Delivery:
    """Where a turn's answer goes (`TurnRequest.delivery`). None of it: the caller reads the
    answer from the report (`agentd run`, chat)."""

    outbox: str | None = None  # a new file at this name (or the next free one beside it),
    # written by the turn before its commit
    always: bool = False  # the inbox: the sender always gets an answer, an unfinished turn's
    # too (with a note); else only an ok, non-silent one is written
    reply: dict[str, Any] | None = None  # a bridge channel ({"via": "telegram", ...}): the
    # bridge sends the answer there after the turn
    on_written: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    # told the file's name once it is written, still before the commit (the inbox marks its
    # claim answered there: see agentd/daemon/inbox.py); never persisted

    def to_json(self) -> dict[str, Any]:
        return {"outbox": self.outbox, "always": self.always, "reply": self.reply}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        """What `to_json` wrote (KeyError when a field is missing)."""
        return cls(data["outbox"], bool(data["always"]), data["reply"])


def answer_text(d: Delivery, result: LoopResult) -> str | None:
    """What to write for `result`, or None when nothing is delivered: a silent or failed
    turn's; with `always`, everything but a turn to be run again (a provider error, an
    interrupted daemon), which leaves the file to its next attempt."""
    text = result.text.strip()
    if not d.always:
        return text if result.status == "ok" and text and not is_silent(text) else None
    if result.status in ("error", "interrupted"):
        return None
    body = text or "(the agent gave no answer)"
    if result.status != "ok":
        body += f"\n\n(agentd: the turn ended early: {result.error})"
    return body


def deliver(home: Path, d: Delivery, result: LoopResult) -> tuple[str | None, str | None]:
    """Write the answer (see `answer_text`) as a new file: (its name or None, a note for the
    log or None)."""
    body = answer_text(d, result) if d.outbox else None
    if body is None or d.outbox is None:
        return None, None
    with Root(home) as root:
        note = prepare(root)
        name = write_new(root, d.outbox, body.rstrip() + "\n")
    if d.on_written is not None:
        d.on_written(name)
    return name, note
