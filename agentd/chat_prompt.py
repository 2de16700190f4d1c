"""The chat's `you> ` prompt: what a person types becomes one entry, one turn.

On a terminal it is prompt_toolkit (imported here only, when a chat starts): line editing,
history across chats of this home (`.agentd/chat-history`, written redacted), and

- a paste is one entry: the terminal brackets it (ESC[200~ … ESC[201~) and its newlines go
  into the line being edited, so a 3-line paste is one turn, not three;
- Esc then Enter (Alt+Enter), or a line ending in `\\`, starts a new line in the entry;
  Enter sends it;
- Ctrl-C clears a line that has text; on an empty line it ends the chat (exit 130, as an
  interrupted run); Ctrl-D on an empty line ends it (exit 0).

Not a terminal (a pipe, a test): a plain reader, one line per entry, where a line ending
in `\\` continues on the next, so a script can send a multi-line entry too. Bytes that are
not UTF-8 become U+FFFD either way.
"""

from __future__ import annotations

import contextlib
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agentd.redact import Redactor
from agentd.surrogates import replace_surrogates

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

PROMPT = "you> "
HISTORY_NAME = "chat-history"  # in the home's .agentd/: git-ignored, out of the sandbox's reach

Reader = Callable[[], str | None]


def plain_reader(stream: IO[bytes] | None = None) -> Reader:
    """Entries from a byte stream: one per line; a line ending in `\\` goes on."""
    def read() -> str | None:
        src = stream if stream is not None else sys.stdin.buffer
        parts: list[str] = []
        while True:
            raw = src.readline()
            if not raw:
                return "\n".join(parts) if parts else None
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.endswith("\\"):
                parts.append(line[:-1])
                continue
            parts.append(line)
            return "\n".join(parts)

    return read


def _history(path: Path, redactor: Redactor) -> Any:
    """The chat's saved history, or one kept in memory when `path` is something other than
    a regular file: prompt_toolkit opens it by name, so a link would be read and appended
    through, and a FIFO would hang the chat before its first prompt."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    try:
        planted = not stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        planted = False
    except OSError:
        planted = True
    if planted:
        print(f"warning: {path} is not a regular file: this chat's history is not saved "
              "(remove it to keep history again)", file=sys.stderr, flush=True)
        return InMemoryHistory()

    class RedactedHistory(FileHistory):
        """The history file never holds a key typed or pasted at the prompt, and a file
        that cannot be written (a full disk) costs the history, never the chat."""

        def store_string(self, string: str) -> None:
            with contextlib.suppress(OSError):
                super().store_string(redactor.redact(string))

    return RedactedHistory(str(path))


def terminal_session(history: Path, redactor: Redactor, input: Any = None,
                     output: Any = None) -> PromptSession[str]:
    """A prompt_toolkit session with the chat's keys (module doc). `input`/`output` are for
    tests (prompt_toolkit's pipe input and DummyOutput); None: the terminal."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    @Condition
    def _continued() -> bool:
        from prompt_toolkit.application import get_app

        return get_app().current_buffer.document.text_before_cursor.endswith("\\")

    @keys.add("enter", filter=_continued)
    def _backslash(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        buf.delete_before_cursor(1)
        buf.insert_text("\n")

    @keys.add("c-c")
    def _cancel(event: KeyPressEvent) -> None:
        buf = event.current_buffer
        if buf.text:
            buf.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

    return PromptSession(PROMPT, history=_history(history, redactor), key_bindings=keys,
                         input=input, output=output, enable_open_in_editor=False)


def terminal_reader(session: PromptSession[str]) -> Reader:
    """Entries from a prompt_toolkit session; None at Ctrl-D (EOFError); Ctrl-C on an
    empty line raises KeyboardInterrupt, for the chat to end."""
    def read() -> str | None:
        try:
            return replace_surrogates(session.prompt())
        except EOFError:
            return None

    return read


def make_reader(runtime: Path, redactor: Redactor) -> Reader:
    """The terminal prompt when stdin and stdout are a terminal, else the plain reader."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        return terminal_reader(terminal_session(runtime / HISTORY_NAME, redactor))
    return plain_reader()
