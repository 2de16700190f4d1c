"""`agentd chat`: a conversation in the terminal, one turn per entry you send (the prompt,
its keys and its history: agentd/chat_prompt.py).

Each entry is an ordinary turn through `run_turn`, so it gets the same books as any other
(transcript, usage ledger, day log, a git commit when files changed), with the trigger
`chat:<session>`. All turns of a chat append to one session transcript: that is what lets
`/model` switch provider mid-conversation and `--resume` pick the conversation up later,
on any provider, since the transcript is provider-neutral.

Each turn takes the home's turn lock (agentd/turnlock.py), in `run_turn` like every
turn, for that turn only, never for the whole chat: a chat sits at its prompt for as long
as a person thinks, and holding the lock then would stall the daemon's heartbeat, cron,
inbox and bridge turns for all that time. A line typed while another turn runs in the
home (the daemon's, an `agentd run`) waits for it, saying so once; Ctrl-C while waiting
gives that line up, and the chat goes on.

Ctrl-C while a turn runs cancels that turn's task (agentd/interrupt.py): the loop gives the
interrupted tool call an error result, `run_turn` still writes the day log and commits, and
the chat goes on. SIGTERM or SIGHUP do the same, then end the chat (exit 143 or 129).
Ctrl-C on an empty prompt ends the chat with exit status 130, like an interrupted `agentd run`;
`/exit` and end of input give 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from rich.console import Console

from agentd import history
from agentd.chain import choose_model, make_provider
from agentd.chat_prompt import Reader, make_reader
from agentd.config import Settings, load_settings
from agentd.errors import AgentdError
from agentd.home import Home
from agentd.interrupt import Interrupted, interruptible
from agentd.redact import from_settings
from agentd.render import LiveRenderer, history_table, make_console, summary
from agentd.session import check_name, new_id
from agentd.termsafe import terminal_safe
from agentd.transcript_view import RECAP_LINES, print_messages, recap
from agentd.transcripts import continued_model, latest_cli, read
from agentd.turn import TurnReport, TurnRequest, run_turn
from agentd.turnlock import run_locked, waiting_message

HELP = """\
/model PROVIDER:MODEL  use that model from the next turn on (e.g. openai:gpt-5.4-mini)
/undo                  revert the last agent turn's commit in the home
/history               the home's last 10 commits
/new                   start a new session (a fresh transcript)
/exit                  end the chat (or Ctrl-D); Ctrl-C stops a running turn
Esc then Enter, or a line ending in \\, starts a new line; a paste is one entry.
Ctrl-C clears the line (on an empty line it ends the chat); Up and Ctrl-R: history.
An entry starting with a space, or of several lines, is sent as text, even after a /."""


def find_session(home: Path, resume: str) -> str:
    """The id `--resume` means: `resume` itself (a checked name), or when empty the most
    recent conversation started from the command line (agentd/transcripts.py:
    latest_cli), the one `agentd run -c` continues."""
    if not resume:
        found = latest_cli(home)
        if found is None:
            raise AgentdError(f"no session to resume in {home}: start one with "
                              "`agentd chat`")
        return found
    sid = check_name(resume)
    if not Home(home).session(sid).is_file():
        raise AgentdError(f"no session {resume!r} in {Home(home).sessions}: `agentd chat "
                          "--resume` takes the last one, `agentd sessions` lists them")
    return sid


def _say_waiting(holder: str) -> None:
    print(waiting_message(holder), file=sys.stderr, flush=True)


class Chat:
    """One chat: the home, the current model and the current session id."""

    def __init__(self, home: Path, settings: Settings, workdir: Path, base: Path,
                 model: str, session: str, console: Console):
        self.home, self.settings, self.workdir, self.base = home, settings, workdir, base
        self.model, self.session, self.console = model, session, console
        self._started = False  # whether the current turn got past the turn lock

    def error(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)

    def run(self, read: Reader | None = None) -> int:
        """Read and handle entries until /exit, end of input (0) or Ctrl-C at the prompt
        (130). An entry of several lines (a paste) is always a turn, never a command."""
        if read is None:
            read = make_reader(Home(self.home).runtime, from_settings(self.settings))
        while True:
            try:
                line = read()
            except KeyboardInterrupt:
                print()
                return 130
            if line is None:
                return 0
            if line.startswith("/") and "\n" not in line.strip():
                name, _, arg = line[1:].strip().partition(" ")
                if not self.command(name, arg):
                    return 0
            elif line.strip():
                self.turn(line.strip())

    def command(self, name: str, arg: str) -> bool:
        """Run a slash command; False means the chat ends. A failing command is one error
        line, never the end of the chat."""
        if name in ("exit", "quit"):
            return False
        try:
            if name == "help":
                self.console.print(HELP, markup=False, highlight=False)
            elif name == "model":
                self.switch_model(arg.strip())
            elif name == "new":
                self.session = new_id()
                self.console.print(f"new session {self.session}", style="dim")
            elif name == "history":
                self.console.print(history_table(history.log(self.home, 10)))
            elif name == "undo":
                sha, subject = run_locked(
                    self.home, "undo", lambda: history.undo(self.home, None, new_id()),
                    _say_waiting)
                self.console.print(f"undone: {terminal_safe(subject)} (new commit "
                                   f"{sha[:8]})", markup=False)
            else:
                self.error(f"unknown command /{name}: /help lists them")
        except AgentdError as e:
            self.error(str(e))
        return True

    def switch_model(self, spec: str) -> None:
        """Check `spec` now (format, provider, key), so a typo fails here, not next turn.
        agentd.toml is read again first: a `[providers.x]` added mid-chat counts. The
        sandbox stays as the chat started (--no-sandbox included): a chat's sandbox never
        changes under it."""
        if not spec:
            self.console.print(f"model: {self.model}", markup=False)
            return
        settings = load_settings(self.home)
        settings.sandbox = self.settings.sandbox
        make_provider(spec, settings, self.base)
        self.settings, self.model = settings, spec
        self.console.print(f"model: {spec} from the next turn on", style="dim", markup=False)

    def _begun(self) -> None:
        self._started = True

    def turn(self, task: str) -> TurnReport | None:
        """One turn in the current session (started by its first turn, continued by the
        next: `run_turn` decides, from whether its transcript exists); errors are printed
        and the chat goes on."""
        req = TurnRequest(task, self.workdir, trigger=f"chat:{self.session}",
                          model=self.model, session=self.session)
        renderer = LiveRenderer(self.console)
        report: TurnReport | None = None
        self._started = False
        sig = None
        try:
            report, sig = asyncio.run(interruptible(run_turn(
                self.home, self.settings, req, renderer, self.base, on_wait=_say_waiting,
                on_start=self._begun), goes_on=(signal.SIGINT,)))
        except KeyboardInterrupt:  # Ctrl-C just outside the handler's window
            pass
        except AgentdError as e:
            renderer.finish()
            self.error(str(e))
            return None
        renderer.finish()
        if sig is not None and sig != signal.SIGINT:
            raise Interrupted(sig)  # SIGTERM, SIGHUP: the chat ends once the turn unwound
        if report is None:
            self.console.print("interrupted: the turn stopped; what it did so far is kept"
                               if self._started else "interrupted while waiting for the "
                               "other turn: this line was not sent", style="yellow")
            return None
        self.console.print(summary(report), style="dim", highlight=False, markup=False)
        if not report.ok:
            self.error(str(report.result.error))
        return report


def start_chat(home: Path, settings: Settings, workdir: Path, base: Path,
               model: str | None, resume: str | None) -> int:
    """Check the model and the session to resume (config errors raise, exit 2), then
    chat. Returns the exit status. A resumed session keeps its model (unless `model`) and
    shows its last few exchanges first."""
    console = make_console()
    if resume is None:
        sid = new_id()
        note = f"new session {sid}"
    else:
        sid = find_session(home, resume)
        messages = read(home, sid).messages()
        note = f"resuming session {sid} ({len(messages)} messages)"
        model, warning = continued_model(home, sid, model, settings, base)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        redactor = from_settings(settings)
        print_messages(console, recap(messages), redactor, lines=RECAP_LINES)
    spec = choose_model(model, settings)
    make_provider(spec, settings, base)
    console.print(f"agentd chat · {note} · {spec} · /help for commands", style="dim",
                  markup=False)
    return Chat(home, settings, workdir, base, spec, sid, console).run()
