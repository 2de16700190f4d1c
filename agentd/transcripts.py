"""Reading session transcripts for people: which sessions a home has, what each cost, and
the messages of one (`agentd sessions`, `agentd run -c`, `agentd chat --resume`).

Transcripts live in `.agentd/sessions/`; treat them as hostile input all the same (a
hand-edited file, a copy from another machine, a bug): every read goes through
agentd/homefs (no symlink followed, only regular files, reads capped), every name is checked
against `session.NAME`, and a line that is not a JSON object, or a row that is not a valid
message, is counted and skipped, never a traceback. Resuming a conversation is stricter and
stays with `session.load_messages`, since a dropped line would change what the model sees.

Costs come from the usage ledger, joined on the run ids of the transcript's `end` rows: the
ledger holds every model call of a turn (fallbacks and compaction summaries included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd import jsonl
from agentd.errors import AgentdError
from agentd.home import RUNTIME, Home
from agentd.homefs import Refused, Root
from agentd.llm.types import Message
from agentd.session import NAME, check_name
from agentd.usage import read_ledger

if TYPE_CHECKING:
    from agentd.config import Settings

SESSIONS = f"{RUNTIME}/sessions"
TRANSCRIPT_LIMIT = 64 << 20  # what one read of a transcript takes at most: its tail
HEADER_LIMIT = 64 << 10  # a header row is a few hundred bytes


@dataclass
class Transcript:
    """One transcript as read: its valid rows, and how many lines were skipped."""

    id: str
    rows: list[dict[str, Any]]
    broken: int = 0
    cut: bool = False  # over TRANSCRIPT_LIMIT: only its tail was read
    _messages: list[Message] | None = field(default=None, repr=False)

    @property
    def header(self) -> dict[str, Any]:
        first = self.rows[0] if self.rows else {}
        return first if first.get("type") == "session" else {}

    def messages(self) -> list[Message]:
        """Every message row that is a valid message, in order (invalid ones counted in
        `broken`, once: the result is kept)."""
        if self._messages is None:
            out = []
            for row in self.rows:
                if row.get("type") != "message":
                    continue
                try:
                    out.append(Message.from_dict(row))
                except (TypeError, ValueError, KeyError, AttributeError):
                    self.broken += 1
            self._messages = out
        return self._messages

    def runs(self) -> list[str]:
        return [r["run"] for r in self.rows if r.get("type") == "end"
                and isinstance(r.get("run"), str)]

    def model(self) -> str | None:
        """The model the conversation last used: the last reply's, else the header's."""
        for m in reversed(self.messages()):
            if m.role == "assistant" and isinstance(m.model, str) and ":" in m.model:
                return m.model
        model = self.header.get("model")
        return model if isinstance(model, str) and model else None


def parse(sid: str, text: str, cut: bool = False) -> Transcript:
    lines = jsonl.split(text)
    if cut and lines:
        lines = lines[1:]  # the first line of a tail is a piece of one
    rows, broken = [], 0
    for line in lines:
        try:
            row = jsonl.loads(line)
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict) and isinstance(row.get("type"), str):
            rows.append(row)
        else:
            broken += 1
    return Transcript(sid, rows, broken, cut)


def _read(root: Root, name: str, limit: int, tail: bool = False) -> str:
    data = root.read_bytes(f"{SESSIONS}/{name}", limit, tail=tail)
    return data.decode("utf-8", "replace")


def read(home: Path, sid: str) -> Transcript:
    """The transcript of session `sid` (a checked name); AgentdError when there is none or
    it cannot be read (a symlink, a FIFO: refused)."""
    sid = check_name(sid)
    try:
        with Root(home) as root:
            size = root.lstat(f"{SESSIONS}/{sid}.jsonl").st_size
            cut = size > TRANSCRIPT_LIMIT
            text = _read(root, f"{sid}.jsonl", TRANSCRIPT_LIMIT, tail=cut)
    except FileNotFoundError:
        raise AgentdError(f"no session {sid!r} in {home / SESSIONS}: `agentd sessions` "
                          "lists them") from None
    except (Refused, OSError) as e:
        raise AgentdError(f"cannot read session {sid!r}: {e}") from None
    return parse(sid, text, cut)


def newest(home: Path) -> list[tuple[str, float]]:
    """(session id, last written) of every transcript with a valid name that is a regular
    file, newest first. Empty when the home has no sessions folder."""
    try:
        with Root(home) as root:
            found = []
            for name, kind in root.listdir(SESSIONS):
                sid = name.removesuffix(".jsonl")
                if kind != "file" or sid == name or not NAME.fullmatch(sid):
                    continue
                try:
                    found.append((sid, root.lstat(f"{SESSIONS}/{name}").st_mtime))
                except OSError:
                    continue
    except (FileNotFoundError, NotADirectoryError, Refused):
        return []
    return sorted(found, key=lambda s: (-s[1], s[0]))


def header(home: Path, sid: str) -> dict[str, Any]:
    """The header row of a transcript ({} when it has none or cannot be read)."""
    try:
        with Root(home) as root:
            text = _read(root, f"{sid}.jsonl", HEADER_LIMIT)
    except (OSError, Refused):
        return {}
    return parse(sid, text.split("\n", 1)[0]).header


def from_cli(sid: str, head: dict[str, Any]) -> bool:
    """Whether the session was started by `agentd run` (trigger `cli`) or `agentd chat`
    (trigger `chat:<its own id>`); the bridge's chats are `chat:<key>` in `chat-<key>`."""
    trigger = head.get("trigger")
    return trigger == "cli" or trigger == f"chat:{sid}"


def latest_cli(home: Path) -> str | None:
    """The most recent conversation started from this home's command line: of the sessions
    `agentd run` or `agentd chat` started, the one whose transcript was written last (so a
    session resumed yesterday beats one started this morning and left since). Daemon, cron
    and bridge sessions are never picked: name them (`--session`, `--resume ID`)."""
    for sid, _ in newest(home):
        if from_cli(sid, header(home, sid)):
            return sid
    return None


@dataclass
class SessionInfo:
    """One line of `agentd sessions`."""

    id: str
    updated: float  # when the transcript was last written
    started: float | None
    trigger: str
    models: list[str]
    turns: int  # the person's (or trigger's) messages: one per turn
    messages: int
    cost: float | None  # None: unknown (no ledger rows, or a model without a price)
    broken: int = 0
    runs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "updated": round(self.updated, 3), "started": self.started,
                "trigger": self.trigger, "models": self.models, "turns": self.turns,
                "messages": self.messages, "cost": self.cost, "broken_lines": self.broken}


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def summarise(home: Path, count: int) -> list[SessionInfo]:
    """The `count` sessions written last, newest first, with their cost from the ledger."""
    picked = newest(home)[:count]
    infos: list[SessionInfo] = []
    last_model: dict[str, str | None] = {}
    for sid, mtime in picked:
        try:
            t = read(home, sid)
        except AgentdError:
            continue  # gone or replaced since it was listed
        msgs = t.messages()
        trigger = t.header.get("trigger")
        last_model[sid] = t.model()
        infos.append(SessionInfo(
            sid, mtime, _number(t.header.get("ts")) or _first_ts(t),
            trigger if isinstance(trigger, str) else "?",
            [], sum(m.role == "user" for m in msgs), len(msgs),
            None, t.broken, t.runs()))
    _add_costs(home, infos)
    for info in infos:  # no ledger rows (a hand-made transcript): what the transcript says
        if not info.models and (model := last_model[info.id]):
            info.models.append(model)
    return infos


def _first_ts(t: Transcript) -> float | None:
    return next((ts for r in t.rows if (ts := _number(r.get("ts"))) is not None), None)


def _add_costs(home: Path, infos: list[SessionInfo]) -> None:
    """Each session's cost and models from the ledger rows of its runs."""
    owner = {run: info for info in infos for run in info.runs}
    if not owner:
        return
    rows, _, _ = read_ledger(Home(home).ledger)
    seen: dict[str, list[float | None]] = {}
    for row in rows:
        info = owner.get(row.run)
        if info is None:
            continue
        seen.setdefault(info.id, []).append(row.cost)
        if row.model not in info.models:
            info.models.append(row.model)
    for info in infos:
        costs = seen.get(info.id)
        if costs and all(c is not None for c in costs):
            info.cost = round(sum(c for c in costs if c is not None), 9)


def when(ts: float | None) -> str:
    """A local time for a table: `2026-11-30 15:42`."""
    return "?" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def continued_model(home: Path, sid: str | None, explicit: str | None, settings: Settings,
                    base: Path) -> tuple[str | None, str | None]:
    """(model, warning) for a turn that continues session `sid`: `-m` when given, else the
    model the conversation last used (a resumed chat or `run -c` keeps its model, as `llm
    -c` does), else None (the home's default). A session model this home can no longer
    build (its provider removed, its key unset) gives None and a warning saying so."""
    if explicit or sid is None:
        return explicit, None
    try:
        model = read(home, sid).model()
    except AgentdError:
        return None, None  # a new session: started under this name
    if model is None:
        return None, None
    from agentd.chain import make_provider

    try:
        make_provider(model, settings, base)
    except AgentdError as e:
        return None, f"the session's model {model} cannot be used ({e}): using the default"
    return model, None
