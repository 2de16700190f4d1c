"""The warm path of `agentd run`: hand the turn to the running daemon of the same home.

A cold `agentd run` spends most of its time importing a provider SDK (`anthropic` alone is
over a second); the daemon has it loaded already. So when a daemon (or `agentd serve`) runs
for the home, `run` sends it the turn over `.agentd/daemon/warm.sock` (agentd/warmwire.py)
and draws the events it streams back with the same renderer, so the output, exit codes,
`--json` and Ctrl-C are the cold path's. The turn goes through the daemon's queue as a
"person" turn, so the home still runs one turn at a time.

The CLI's flags and environment mean the same on both paths: the request carries the
task (piped stdin already in it), the resolved model, --max-steps, the workdir, the
session, and the environment a turn reads: the keys of the providers the model chain can
reach, the provider SDKs' own variables (ANTHROPIC_*, OPENAI_* for the protocols it
uses), TZ and PATH; plus the names (never the values) of the other variables set, so the
daemon can tell whether a skill's required variable would differ. What cannot run the same
way there (--record, --no-sandbox, a workdir the daemon does not see as the same folder, a
different umask or TZ, a skill whose variable differs) runs here instead, silently.
`AGENTD_COLD=1` always runs here.

The key never goes to a listener the agent planted: the socket must be a socket itself
(not a symlink) in a folder reached without symlinks, and the kernel's record of the peer
(SO_PEERCRED) must name this user and the pid in `.agentd/daemon.pid`, which the daemon
wrote under its lock. Anything wrong before the turn starts (no daemon, a refusal, a
malformed or missing frame, silence) means the cold path; after it starts, one `error:`
line (exit 1) saying where to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd import warmwire as wire
from agentd.errors import AgentdError
from agentd.home import Home, private_dir

if TYPE_CHECKING:
    from agentd.config import Settings
    from agentd.llm.types import Message, ToolCall
    from agentd.loop import Events
    from agentd.turn import TurnReport

COLD_ENV = "AGENTD_COLD"  # set (not "0"): never the warm path
CONNECT_TIMEOUT = 2.0
UNWIND_WAIT = 60.0  # seconds Ctrl-C waits for the daemon's turn to commit what it did
SDK_PREFIXES = {"anthropic": "ANTHROPIC_", "openai": "OPENAI_"}  # protocol -> its SDK's vars
ALWAYS_CARRIED = ("TZ", "PATH")  # the day log's clock; where bwrap, git and skills' bins are
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Broken(Exception):
    """The connection failed or a frame was malformed (the message says which)."""


def carried_env(spec: str, settings: Settings) -> tuple[dict[str, str | None], list[str]]:
    """The variables a turn on `spec` reads, with this process's values (None: unset), and
    the SDK prefixes the daemon clears its own variables of for the turn. Only the keys of
    providers that `spec`, its fallbacks, escalations and budget fallback name are sent."""
    specs = [spec, *settings.fallbacks, *settings.escalate_to, settings.budget_fallback or ""]
    names: set[str] = set(ALWAYS_CARRIED)
    prefixes: set[str] = set()
    for label in {s.partition(":")[0] for s in specs if s}:
        ep = settings.endpoint(label)
        if ep is None:
            continue  # replay, or unknown: the turn's error does not depend on the env
        if ep.key_env:
            names.add(ep.key_env)
        prefixes.add(SDK_PREFIXES.get(ep.protocol, "OPENAI_"))
    names.update(n for n in os.environ if n.startswith(tuple(prefixes)))
    return {n: os.environ.get(n) for n in sorted(names)}, sorted(prefixes)


def _pid_file(home: Path) -> int | None:
    try:
        fd = os.open(Home(home).pid_file, os.O_RDONLY | os.O_NOFOLLOW |
                     os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(raw) if raw.isdigit() else None


def dial(home: Path) -> socket.socket | None:
    """A connection to the home's daemon, verified (see the module doc); None when there
    is none to trust. A stat, a read and a connect: no daemon costs next to nothing."""
    dir_fd = wire.open_dir(private_dir(wire.runtime_dir(home), create=False))
    if dir_fd is None:
        return None
    sock = None
    try:
        if not wire.is_socket_at(dir_fd, wire.SOCKET_NAME):
            return None
        pid = _pid_file(home)
        if not pid:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(wire.in_dir(dir_fd, wire.SOCKET_NAME))
        if wire.peer(sock) != (pid, os.getuid()):
            raise OSError("the socket is not the daemon's")
        sock.setblocking(False)
        conn, sock = sock, None
        return conn
    except OSError:
        return None
    finally:
        if sock is not None:
            sock.close()
        os.close(dir_fd)


def prepare(home: Path, settings: Settings, task: str, workdir: Path, model: str | None,
            session: str | None, max_steps: int | None) -> WarmTurn | None:
    """The warm turn for this request, connected, or None: run it here (cold)."""
    if os.environ.get(COLD_ENV, "0") not in ("", "0"):
        return None
    from agentd.chain import choose_model

    try:
        spec = choose_model(model, settings)
    except AgentdError:
        return None  # the cold path says why, in its words
    env, prefixes = carried_env(spec, settings)
    try:
        base = Path.cwd()
        ids = wire.file_id(workdir), wire.file_id(base)
    except OSError:
        return None  # gone: the cold path says so
    sock = dial(home)
    if sock is None:
        return None
    request = {"v": wire.VERSION, "task": task, "workdir": str(workdir),
               "workdir_id": ids[0], "base": str(base), "base_id": ids[1], "model": spec,
               "session": session, "max_steps": max_steps, "umask": wire.current_umask(),
               "env": env, "prefixes": prefixes,
               "present": sorted(n for n, v in os.environ.items() if v and _NAME.fullmatch(n))}
    return WarmTurn(sock, request)


class WarmTurn:
    """One request to the daemon; `run` streams its turn into `events`."""

    def __init__(self, sock: socket.socket, request: dict[str, Any]):
        self.sock, self.request = sock, request
        self.started = False

    async def run(self, events: Events, on_wait: Callable[[str], None],
                  cold: Callable[[], Awaitable[TurnReport]]) -> TurnReport:
        """The daemon's report of the turn; `cold()`'s when the daemon did not start it.
        Cancelled (Ctrl-C), it asks the daemon to stop the turn and waits while the turn
        commits what it did, drawing what the unwinding shows, then re-raises."""
        try:
            reader, writer = await asyncio.open_unix_connection(sock=self.sock,
                                                                limit=wire.FRAME_LIMIT)
        except OSError:
            self.sock.close()
            return await cold()
        try:
            try:
                writer.write(wire.encode(self.request))
                await writer.drain()
                report = await self._follow(reader, events, on_wait)
            except _Broken as e:
                if self.started:
                    raise AgentdError(f"the daemon's turn broke off ({e}): `agentd history` "
                                      "and the daemon's log say how it ended", 1) from None
                report = None
            except asyncio.CancelledError:
                await self._unwind(reader, writer, events)
                raise
        finally:
            writer.close()
        return report if report is not None else await cold()

    async def _frame(self, reader: asyncio.StreamReader, timeout: float) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
        except TimeoutError:
            raise _Broken(f"no word from the daemon in {timeout:.0f} s") from None
        except (ValueError, asyncio.LimitOverrunError):
            raise _Broken("a frame over the size limit") from None
        except OSError as e:
            raise _Broken(e.strerror or type(e).__name__) from None
        try:
            return wire.decode(line)
        except wire.Malformed as e:
            raise _Broken(str(e)) from None

    async def _follow(self, reader: asyncio.StreamReader, events: Events,
                      on_wait: Callable[[str], None]) -> TurnReport | None:
        while True:
            frame = await self._frame(reader, wire.SILENCE)
            kind = frame.get("t")
            try:
                if kind == "cold" and not self.started:
                    return None
                if kind == "refused" and not self.started:
                    raise AgentdError(str(frame["error"]), int(frame["exit_code"]))
                if kind == "end" and frame.get("interrupted"):
                    raise AgentdError("the daemon was stopped, which interrupted the turn; "
                                      "it committed what it did (`agentd history`)", 1)
                if kind == "end":
                    return report_from(frame["report"])
                if not self._event(frame, events, on_wait):
                    raise _Broken(f"an unexpected frame {str(kind)[:40]!r}")
            except (KeyError, TypeError, ValueError) as e:
                raise _Broken(f"a malformed {str(kind)[:40]!r} frame: "
                              f"{type(e).__name__}") from None

    def _event(self, frame: dict[str, Any], events: Events,
               on_wait: Callable[[str], None]) -> bool:
        """Draw one streamed event; False when the frame is none of them."""
        kind = frame.get("t")
        if kind == "alive":
            pass
        elif kind == "wait" and not self.started:
            on_wait(str(frame["holder"]))
        elif kind == "start":
            self.started = True
        elif kind == "text":
            events.text(str(frame["d"]))
        elif kind == "call":
            events.tool_call(_call(frame["call"]))
        elif kind == "result":
            events.tool_result(_call(frame["call"]), _message(frame["result"]))
        else:
            return False
        return True

    async def _unwind(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      events: Events) -> None:
        """Ctrl-C: the daemon interrupts the turn, which commits what it did; draw what it
        streams until its `end`, as the cold path's unwinding would (bounded)."""
        with contextlib.suppress(OSError):
            writer.write(wire.encode({"t": "cancel"}))
            await writer.drain()
        if not self.started:
            return
        with contextlib.suppress(_Broken, KeyError, TypeError, ValueError):
            while (frame := await self._frame(reader, UNWIND_WAIT)).get("t") != "end":
                self._event(frame, events, lambda holder: None)


def _call(data: dict[str, Any]) -> ToolCall:
    from agentd.llm.types import ToolCall

    if not isinstance(data.get("arguments"), dict):
        raise TypeError("arguments")
    return ToolCall(str(data["id"]), str(data["name"]), data["arguments"])


def _message(data: dict[str, Any]) -> Message:
    from agentd.llm.types import Message

    return Message.from_dict(data)


def report_from(data: dict[str, Any]) -> TurnReport:
    """The TurnReport the daemon sent (agentd.render.as_json's object plus `warnings`):
    what `run` prints from it, field for field. KeyError, TypeError or ValueError when the
    object is not one."""
    from agentd.llm.types import Usage
    from agentd.loop import LoopResult
    from agentd.turn import TurnReport

    u = data["usage"]
    usage = Usage(int(u["input"]), int(u["output"]), int(u["cache_read"]),
                  int(u["cache_write"]), bool(u["estimated"]))
    result = LoopResult(str(data["status"]), str(data["text"]), int(data["steps"]), usage,
                        None if data["error"] is None else str(data["error"]))
    cost = data["cost"]
    return TurnReport(
        str(data["run_id"]), str(data["model"]), result, float(data["seconds"]),
        None if cost is None else float(cost), [str(m) for m in data["models"]],
        [dict(c) for c in data["tool_calls"]],
        session=Path(data["session"]) if data["session"] else None,
        escalations=[str(e) for e in data["escalated"]],
        warnings=[str(w) for w in data["warnings"]])
