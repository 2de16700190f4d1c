"""The daemon's side of the warm path: `agentd run` hands it a turn over
`.agentd/daemon/warm.sock` (the CLI's side and the reasons are in agentd/warm.py, the
frames in agentd/warmwire.py).

A request becomes a "person" turn in the daemon's queue, so it runs after the turn in
progress and before the heartbeat, cron and inbox, holding the home's turn lock like every
daemon turn (runs.jsonl row, log lines: agentd/jobs/records.py). Its events stream back as
they happen; the client's `cancel`, or its connection closing, interrupts the turn, which
still commits what it did.

The client is trusted only as far as the kernel vouches: its uid (SO_PEERCRED) must be the
daemon's, and its mount namespace too (a command the agent runs in its sandbox, as the
same user where agentd is not root, is in another one and gets `cold`). Its request is
checked field by field; a malformed one, a frame over the limit or silence gets one
warning line, never a traceback. A request that would not run as it would in the CLI (its
workdir or folder is not the same folder here, another umask or TZ, a skill whose required
variable is set on one side only) is answered `cold`: the CLI runs it.

The request's checks, the environment it carries and what makes it `cold` are in
agentd/daemon/warm_request.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from pathlib import Path
from typing import Any

from agentd import warmwire as wire
from agentd.daemon.warm_request import Request, differs, environment
from agentd.errors import AgentdError
from agentd.home import Home
from agentd.jobs.log import EventLog, LogEvents
from agentd.jobs.queue import QueuedTurn, TurnQueue
from agentd.llm.types import Message, ToolCall
from agentd.oneline import one_line
from agentd.turnlock import HOLDER_WAIT_POLLS, POLL, UNKNOWN, TurnLock

REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request once connected


class WarmServer:
    """The listener: one `_Client` per connection."""

    def __init__(self, home: Path, queue: TurnQueue, log: EventLog):
        self.home, self.queue, self.log = home, queue, log
        self.lock = TurnLock(home)  # read only: who holds the home, for a waiting client
        self._server: asyncio.Server | None = None
        self._id: list[int] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._seq = itertools.count(1)
        self._own_env = dict(os.environ)  # before any warm turn puts a CLI's in place

    async def start(self) -> None:
        """Listen (replacing a dead daemon's socket); a failure is a warning: `run` then
        simply runs turns itself."""
        dir_fd = wire.open_dir(Home(self.home).daemon)
        if dir_fd is None:
            self.log.warn("warm", "no warm path for `agentd run`: .agentd/daemon is not a "
                          "folder")
            return
        path = wire.in_dir(dir_fd, wire.SOCKET_NAME)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(wire.SOCKET_NAME, dir_fd=dir_fd)
            sock.bind(path)  # the umask leaves no write bit for others: nobody else can
            os.chmod(path, 0o600)  # connect before this; the client's uid is checked too
            self._id = wire.file_id(Path(path))
            self._server = await asyncio.start_unix_server(self._accept, sock=sock,
                                                           limit=wire.FRAME_LIMIT)
        except OSError as e:
            sock.close()
            self.log.warn("warm", f"no warm path for `agentd run`: {e}")
        finally:
            os.close(dir_fd)

    def stop_accepting(self) -> None:
        """No new clients (the daemon is stopping); those connected are still served."""
        if self._server is not None:
            self._server.close()
            self._remove_socket()

    async def close(self) -> None:
        """After the queue's last turn: end every connection left (a client whose turn was
        dropped from the queue unstarted then runs it itself)."""
        self.stop_accepting()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    def _remove_socket(self) -> None:
        dir_fd = wire.open_dir(Home(self.home).daemon)
        if dir_fd is None or self._id is None:
            return
        try:
            if wire.file_id(Path(wire.in_dir(dir_fd, wire.SOCKET_NAME))) == self._id:
                os.unlink(wire.SOCKET_NAME, dir_fd=dir_fd)  # ours, not a newer daemon's
        except OSError:
            pass
        finally:
            os.close(dir_fd)
            self._id = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        pid = 0
        try:
            pid, uid = wire.peer(writer.get_extra_info("socket"))
            if uid != os.getuid():
                self.log.warn("warm", f"refused a connection from uid {uid} (pid {pid})")
                return
            await self._serve(pid, reader, writer)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as e:
            self.log.warn("warm", f"client pid {pid}: gave up on it: "
                          f"{one_line(str(e) or type(e).__name__, 200)}")
        finally:
            self._clients.discard(task)
            writer.close()

    async def _serve(self, pid: int, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
        except (ValueError, asyncio.LimitOverrunError):
            raise wire.Malformed("a request over the size limit") from None
        except TimeoutError:
            raise TimeoutError(f"no request in {REQUEST_TIMEOUT:.0f} s") from None
        req = Request.parse(wire.decode(line))
        name = f"cli pid {pid}"
        why = await asyncio.to_thread(differs, self.home, req, pid, self._own_env)
        client = _Client(self, writer, req, name)
        if why is None and self.queue.put(QueuedTurn("person", name, client.execute,
                                                     key=f"person:warm:{next(self._seq)}")):
            await client.follow(reader)
            return
        why = why or "the queue is full or the daemon is stopping"
        self.log("warm", f"{name}: left to the CLI to run: {why}")
        client.send({"t": "cold", "why": why})
        await writer.drain()


class _Client:
    """One client's turn: queued, run in the worker, streamed back."""

    def __init__(self, server: WarmServer, writer: asyncio.StreamWriter, req: Request,
                 name: str):
        self.server, self.writer, self.req, self.name = server, writer, req, name
        self.picked = False  # the worker took it: it holds the lock
        self.cancelled = False
        self.ended = False  # the last frame is sent: the client may hang up now
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def send(self, frame: dict[str, Any]) -> None:
        self.ended = self.ended or frame["t"] in ("end", "refused")
        if not self.writer.is_closing():
            self.writer.write(wire.encode(frame))

    async def execute(self) -> None:
        """The queue's job. The turn is a task of its own, so the client can cancel it
        without cancelling the queue's worker; the worker's cancellation (the daemon's
        second SIGTERM) still reaches it through the await."""
        self.picked = True
        try:
            if self.cancelled:
                return
            self.task = asyncio.ensure_future(self._turn())
            try:
                await self.task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the worker itself is being stopped
        finally:
            self.done.set()

    async def _turn(self) -> None:
        from agentd.config import load_settings
        from agentd.jobs.records import run_job_turn
        from agentd.render import as_json
        from agentd.turn import TurnRequest

        server, req = self.server, self.req
        turn = TurnRequest(req.task, req.workdir, model=req.model, session=req.session,
                           max_steps=req.max_steps)
        try:
            with environment(req.env, req.prefixes):
                settings = await asyncio.to_thread(load_settings, server.home)
                report = await run_job_turn(
                    server.home, settings, turn, "person", self.name, server.log,
                    _Stream(self, server.log, self.name), base=req.base,
                    on_start=lambda: self.send({"t": "start"}), reraise=True)
        except AgentdError as e:
            self.send({"t": "refused", "error": str(e), "exit_code": e.exit_code})
            return
        except asyncio.CancelledError:
            if self.cancelled:
                server.log("person", f"{self.name}: turn interrupted by its client; it "
                           "committed what it did")
            self.send({"t": "end", "interrupted": True})
            raise
        assert report is not None
        self.send({"t": "end", "report": {**as_json(report, 0), "warnings": report.warnings}})

    def cancel(self) -> None:
        """The client pressed Ctrl-C or went away: stop the turn (it commits what it did),
        or drop it before it starts."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()
        elif not self.picked:
            self.done.set()

    async def follow(self, reader: asyncio.StreamReader) -> None:
        """Until the turn ends: listen for `cancel`, say once when it has to wait (with
        who holds the home, as a cold `run` would), and keep the client's clock alive."""
        listening = asyncio.ensure_future(self._listen(reader))
        loop = asyncio.get_running_loop()
        told, polls, last = False, 0, loop.time()
        try:
            while not self.done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.done.wait(), POLL)
                if not (told or self.picked or self.cancelled):
                    holder = self.server.lock.holder()
                    polls += 1
                    if holder != UNKNOWN or polls > HOLDER_WAIT_POLLS:
                        self.send({"t": "wait", "holder": holder})
                        told = True
                if loop.time() - last >= wire.KEEPALIVE:
                    self.send({"t": "alive"})
                    last = loop.time()
            await self.writer.drain()
        finally:
            listening.cancel()

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        try:
            frame = wire.decode(await reader.readline())
            if frame.get("t") != "cancel":
                raise wire.Malformed(f"an unexpected frame {str(frame.get('t'))[:40]!r}")
        except (ValueError, OSError) as e:
            if not self.ended:
                self.server.log.warn("warm", f"{self.name}: {one_line(str(e), 200)}; "
                                     "interrupting its turn")
        if not self.ended:
            self.cancel()


class _Stream(LogEvents):
    """The turn's events to the client as frames, and its tool calls to the log too."""

    def __init__(self, client: _Client, log: EventLog, name: str):
        super().__init__(log, "person", name)
        self.client = client

    def text(self, delta: str) -> None:
        self.client.send({"t": "text", "d": delta})

    def tool_call(self, call: ToolCall) -> None:
        super().tool_call(call)
        self.client.send({"t": "call", "call": _call(call)})

    def tool_result(self, call: ToolCall, result: Message) -> None:
        self.client.send({"t": "result", "call": _call(call), "result": result.to_dict()})


def _call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}
