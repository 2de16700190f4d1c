"""The read, write and edit tools: file access confined to the folders the turn may use.

The model chooses every path, and the agent controls every name, inode type and mode bit
under the home and the workdir, while these tools run on the host (often as root). So no
file operation here follows a path by name: a path is normalised lexically (nothing on the
disk is consulted), matched to the deepest allowed folder that contains it (read: the home,
the workdir, the scratch folder; write and edit: the profile's writable folders), and then
opened beneath that folder's held fd through agentd.homefs (agentd.tools.places finds where
a path lands). Symlinks inside the folder are followed; one leading out of it, even into
another allowed folder, is refused with the link's target in the message, so the model can
use that path instead.

Writes go through `homefs` too: an exclusive temp file plus `renameat` in the held parent
folder, so whatever sits at the name by then (a symlink swapped in, a FIFO, a hard link to a
file elsewhere) is replaced, never written through, and no set-uid, set-gid or sticky bit is
kept. The runtime's own names in the home (`home.PROTECTED_NAMES`) stay readable but are
refused for writing, judged on the real path of the held parent folder, so a symlink alias
inside the home can't reach them either. Every failure is an error result with a one-line
hint.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from agentd import homefs
from agentd.homefs import Root
from agentd.tools import ToolContext, ToolResult
from agentd.tools.places import (
    PathError,
    Place,
    Target,
    hidden,
    locate,
    open_root,
    refusals,
    write_target,
)

DEFAULT_LIMIT = 2000  # lines per read
MAX_LINE_CHARS = 2000  # a longer line is cut, so one minified file can't flood the context
MAX_OUTPUT_CHARS = 50_000  # total read output; the rest is one offset away
BINARY_SNIFF = 8192  # a NUL byte in this prefix means binary, as git and grep decide
CHUNK = 64 * 1024  # reads of skipped line tails: memory stays bounded on huge lines
MAX_EDIT_BYTES = 10 * 1024 * 1024  # edit loads the file whole; beyond this use bash


def _fail(message: str) -> ToolResult:
    return ToolResult(message, is_error=True)


def _binary(path: Path, size: int) -> str:
    return (f"{path} looks binary ({size} bytes); use bash, e.g. `file {path}` or "
            f"`xxd {path} | head`")


def _read_line(f: BinaryIO, keep: int) -> tuple[bytes, int] | None:
    """Read one line keeping at most `keep` bytes; return (kept, full length) or None at EOF.

    The rest of a long line is skipped in chunks, so a 50 MB single-line file costs no more
    memory than a short one.
    """
    head = f.readline(keep)
    if not head:
        return None
    total, tail = len(head), head
    while not tail.endswith(b"\n"):
        tail = f.readline(CHUNK)
        if not tail:
            break
        total += len(tail)
    return head, total


def _format_line(head: bytes, total: int) -> str:
    """Decode one kept line (strictly: invalid UTF-8 means binary) and cut it if too long."""
    cut = total > len(head)
    if head.endswith(b"\n"):
        head = head[:-1]
        if head.endswith(b"\r"):
            head = head[:-1]
    # A cut head may end inside a multi-byte character: the incremental decoder holds it back.
    text = codecs.getincrementaldecoder("utf-8")().decode(head, final=not cut)
    if cut or len(text) > MAX_LINE_CHARS:
        text = f"{text[:MAX_LINE_CHARS]} [… line cut at {MAX_LINE_CHARS} chars; {total} bytes]"
    return text


def read_file(ctx: ToolContext, path: str, offset: int | None = None,
              limit: int | None = None) -> ToolResult:
    """Show lines `offset`.. of a text file, numbered like `cat -n`, streaming from disk."""
    start = 1 if offset is None or offset == 0 else offset
    count = DEFAULT_LIMIT if limit is None else limit
    if start < 1:
        return _fail(f"offset must be a line number from 1 (got {offset})")
    if count < 1:
        return _fail(f"limit must be at least 1 (got {limit})")

    def read() -> ToolResult:
        place = locate(ctx, path, for_write=False)
        with open_root(place) as root, refusals(place, root):
            return _read_open(ctx, root, place, start, count)

    return _guarded("read", path, read)


def _guarded(verb: str, path: str, act: Callable[[], ToolResult]) -> ToolResult:
    """The file tools' one error boundary: a refused path (PathError, see `refusals`) or a
    failed call on the host is an error result with one line, never an exception."""
    try:
        return act()
    except PathError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot {verb} {path}: {e.strerror or e}")


def _read_open(ctx: ToolContext, root: Root, place: Place, start: int,
               count: int) -> ToolResult:
    """Open the file beneath `root` (regular files only: a FIFO or device is never opened
    for reading) and stream the asked-for lines."""
    real = place.path
    try:
        with root.open_regular("/".join(place.parts), follow=True) as (fd, st), \
                open(fd, "rb", closefd=False) as f:
            if hidden(ctx, homefs.fd_path(fd)):  # a link inside the home to .agentd/
                return _fail(f"{place.shown} leads to the runtime's private data, not "
                             f"readable in this turn (profile {ctx.profile})")
            if b"\0" in f.read(BINARY_SNIFF):
                return _fail(_binary(real, st.st_size))
            f.seek(0)
            try:
                return _read_lines(f, real, start, count)
            except UnicodeDecodeError:
                return _fail(_binary(real, st.st_size))
    except FileNotFoundError:
        return _fail(f"{real} does not exist; check the path, e.g. with `ls`")


def _read_lines(f: BinaryIO, real: Path, start: int, count: int) -> ToolResult:
    """Skip to line `start`, then number up to `count` lines within the output budget."""
    number = 1
    while number < start and _read_line(f, CHUNK) is not None:
        number += 1
    out: list[str] = []
    size = 0
    keep = MAX_LINE_CHARS * 4 + 8  # enough bytes for MAX_LINE_CHARS+1 characters of UTF-8
    while len(out) < count:
        line = _read_line(f, keep)
        if line is None:
            if out:
                return ToolResult("\n".join(out))
            if number == 1:
                return ToolResult("(empty file)")
            return _fail(f"offset {start} is past the end of {real} ({number - 1} lines); "
                         "use a smaller offset")
        numbered = f"{number:>6}\t{_format_line(*line)}"
        if out and size + len(numbered) + 1 > MAX_OUTPUT_CHARS:
            out.append(f"[… output capped at {MAX_OUTPUT_CHARS} chars; "
                       f"continue with offset={number}]")
            return ToolResult("\n".join(out))
        out.append(numbered)
        size += len(numbered) + 1
        number += 1
    if f.read(1):
        out.append(f"[… more lines; continue with offset={number}]")
    return ToolResult("\n".join(out))


def write_file(ctx: ToolContext, path: str, content: str) -> ToolResult:
    """Create or replace a whole file, atomically, creating its parent folders."""
    if not isinstance(content, str):
        return _fail(f"content must be a string, not {type(content).__name__}")
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError as e:
        return _fail(f"content is not valid Unicode ({e.reason}); remove lone surrogates")

    def write() -> ToolResult:
        place = locate(ctx, path, for_write=True)
        over_quota = ctx.quota.refuse_write(place.path, len(data)) if ctx.quota else None
        if over_quota:
            return _fail(over_quota)
        with open_root(place) as root, refusals(place, root):
            target = write_target(ctx, root, place, create=True)
            with target.folder:
                target.folder.write_bytes(target.name, data, owner=ctx.owner)
        return ToolResult(f"wrote {len(data)} bytes to {place.path}")

    return _guarded("write", path, write)


def edit_file(ctx: ToolContext, path: str, old_text: str, new_text: str) -> ToolResult:
    """Replace the one exact occurrence of `old_text`; ambiguity is refused, never guessed."""
    if not isinstance(old_text, str) or not isinstance(new_text, str):
        return _fail("old_text and new_text must be strings")
    if not old_text:
        return _fail("old_text is empty; copy the exact text to replace from the file "
                     "(to replace a whole file, use write)")

    def edit() -> ToolResult:
        place = locate(ctx, path, for_write=True)
        with open_root(place) as root, refusals(place, root):
            try:
                target = write_target(ctx, root, place, create=False)
            except FileNotFoundError:
                return _fail(f"{place.path} does not exist; use write to create it")
            with target.folder:
                if target.st is None:
                    return _fail(f"{place.path} does not exist; use write to create it")
                return _edit_in(ctx, target, place, old_text, new_text)

    return _guarded("edit", path, edit)


def _edit_in(ctx: ToolContext, target: Target, place: Place, old_text: str,
             new_text: str) -> ToolResult:
    """Read the file from the held folder (regular files only, size-capped), make the one
    replacement, and write it back by rename into the same folder."""
    real = place.path
    with target.folder.open_regular(target.name) as (fd, st):
        if st.st_size > MAX_EDIT_BYTES:
            return _fail(f"{real} is larger than {MAX_EDIT_BYTES} bytes; edit it with bash "
                         "(e.g. sed) or rewrite it with write")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_EDIT_BYTES + 1)
    if len(data) > MAX_EDIT_BYTES:
        return _fail(f"{real} is larger than {MAX_EDIT_BYTES} bytes; edit it with bash "
                     "(e.g. sed) or rewrite it with write")
    if b"\0" in data:
        return _fail(_binary(real, len(data)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _fail(_binary(real, len(data)))
    if old_text not in text and "\r\n" in text and "\n" in old_text:
        # The model usually types bare newlines; match a CRLF file in its own style.
        old_text, new_text = (re.sub(r"(?<!\r)\n", "\r\n", t) for t in (old_text, new_text))
    first = text.find(old_text)
    if first < 0:
        return _fail(f"old_text not found in {real}; read the file and copy the text exactly")
    matches = text.count(old_text)
    if matches == 1 and text.find(old_text, first + 1) >= 0:
        matches = 2  # overlapping occurrences are just as ambiguous
    if matches > 1:
        return _fail(f"old_text matches {matches} times in {real}; include more "
                     "surrounding lines to make it unique")
    try:
        out = (text[:first] + new_text + text[first + len(old_text):]).encode("utf-8")
    except UnicodeEncodeError as e:
        return _fail(f"new_text is not valid Unicode ({e.reason}); remove lone surrogates")
    target.folder.write_bytes(target.name, out, owner=ctx.owner)
    return ToolResult(f"edited {real} (line {text.count(chr(10), 0, first) + 1})")
