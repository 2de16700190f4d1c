"""Printing agent-written text to the owner's terminal without letting it drive the terminal.

A model reply, a tool's output, a commit subject or a file name can carry escape sequences:
OSC 52 writes the clipboard, others set the title, clear the screen or hide lines. Before
such text reaches a terminal its control characters are made visible (`\\x1b`)."""

from __future__ import annotations

import re
import sys

# C0 controls but tab and newline, DEL, and the C1 controls (ESC/CSI/OSC start sequences)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with every control character but tab and newline shown as `\\xNN`."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def tty_safe(text: str) -> str:
    """terminal_safe when stdout is a terminal; unchanged when piped (scripts get the bytes)."""
    return terminal_safe(text) if sys.stdout.isatty() else text
