"""The read, write and edit tools: file access confined to the home and the workdir.

The model chooses the paths, so every path is resolved (symlinks followed) before it is
checked: a link inside the workdir cannot smuggle a read or write outside it. The runtime's
own state (the home's git repository, `.agentd/`, `agentd.toml`) is readable but never
writable through these tools. Every failure is an error result with a one-line hint.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from agentd.config import CONFIG_NAME
from agentd.home import atomic_write
from agentd.tools import ToolContext, ToolResult

DEFAULT_LIMIT = 2000  # lines per read
MAX_LINE_CHARS = 2000  # a longer line is cut, so one minified file can't flood the context
MAX_OUTPUT_CHARS = 50_000  # total read output; the rest is one offset away
BINARY_SNIFF = 8192  # a NUL byte in this prefix means binary, as git and grep decide
CHUNK = 64 * 1024  # reads of skipped line tails: memory stays bounded on huge lines
MAX_EDIT_BYTES = 10 * 1024 * 1024  # edit loads the file whole; beyond this use bash


class PathError(ValueError):
    """A path the tools refuse; `str()` is one line telling the model what to do instead."""


def resolve_path(ctx: ToolContext, path: str, *, for_write: bool) -> Path:
    """Turn the model's path into a real absolute path inside the home or the workdir.

    Relative paths are taken from the workdir, where bash runs too. `~` is refused rather
    than expanded: the user's home directory is not a place the agent may touch. Resolution
    follows symlinks (also for a file not created yet: its deepest existing parent is
    resolved), so the containment check applies to where the bytes really are.
    """
    if not isinstance(path, str) or not path.strip():
        raise PathError("path is empty; give a file path relative to the workdir or absolute")
    if "\0" in path:
        raise PathError("path contains a NUL byte; give a plain file path")
    if path.startswith("~"):
        raise PathError(f"~ is not expanded in {path!r}; use a path inside the home "
                        f"({ctx.home}) or the workdir ({ctx.workdir})")
    joined = ctx.workdir / path
    try:
        real = joined.resolve()
    except (OSError, RuntimeError) as e:  # symlink loop, unreadable parent
        raise PathError(f"cannot resolve {path}: {e}") from None
    shown = path if str(real) in (path, str(joined)) else f"{path} (resolves to {real})"
    roots = [ctx.home, ctx.workdir, *([ctx.scratch] if ctx.scratch else [])]
    if not any(real.is_relative_to(root) for root in roots):
        raise PathError(f"path {shown} is outside the home ({ctx.home}) and the workdir "
                        f"({ctx.workdir}); use a path inside one of them")
    from agentd.tools.sandbox import hidden_paths

    if any(real.is_relative_to(h.resolve()) for h in hidden_paths(ctx)):
        raise PathError(f"{shown} is the runtime's private data, not readable in this turn "
                        f"(profile {ctx.profile})")
    if for_write:
        _check_writable(ctx, real, shown)
    return real


def _check_writable(ctx: ToolContext, real: Path, shown: str) -> None:
    """Refuse what the profile keeps read-only (the same set bash gets, so the write and
    edit tools can't bypass it), the runtime's own files, and files hard-linked elsewhere."""
    from agentd.tools.sandbox import ensure_scratch, writable_paths

    try:
        ensure_scratch(ctx)
        writable = [p.resolve() for p in writable_paths(ctx)]
    except (ValueError, OSError) as e:
        raise PathError(f"cannot write: {e}") from None
    if not any(real.is_relative_to(p) for p in writable):
        where = " or ".join(str(p) for p in writable) or "nowhere but bash's private /tmp"
        raise PathError(f"{shown} is read-only in this turn (profile {ctx.profile}); "
                        f"it may write only {'under ' if writable else ''}{where}")
    for name in (".git", ".agentd"):
        if real.is_relative_to((ctx.home / name).resolve()):
            raise PathError(f"{shown} is inside {ctx.home / name}, which is protected: "
                            "the runtime owns it; write somewhere else in the home or workdir")
    if real == (ctx.home / CONFIG_NAME).resolve():
        raise PathError(f"{shown} is protected: the runtime owns it; ask the user to edit it")
    try:
        st = os.stat(real)
    except OSError:
        return  # not there yet (or unreadable: the write itself will say so)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        # Another name for these bytes may live outside the home and workdir.
        raise PathError(f"{shown} has {st.st_nlink} hard links (one may be outside the home "
                        "and workdir); refusing to modify it; write a new file instead")


def _fail(message: str) -> ToolResult:
    return ToolResult(message, is_error=True)


def _regular_file(real: Path, missing_hint: str) -> str | None:
    """Why `real` can't be opened as a file, or None. A FIFO would block the read forever."""
    try:
        st = real.stat()
    except FileNotFoundError:
        return f"{real} does not exist; {missing_hint}"
    if stat.S_ISDIR(st.st_mode):
        return f"{real} is a directory; use bash to list it, e.g. `ls -la {real}`"
    if not stat.S_ISREG(st.st_mode):
        return f"{real} is not a regular file; use bash to inspect it"
    return None


def _binary(real: Path) -> str:
    try:
        size: int | str = real.stat().st_size
    except OSError:
        size = "?"
    return (f"{real} looks binary ({size} bytes); use bash, e.g. `file {real}` or "
            f"`xxd {real} | head`")


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
    try:
        real = resolve_path(ctx, path, for_write=False)
        problem = _regular_file(real, "check the path, e.g. with `ls`")
        if problem:
            return _fail(problem)
        with real.open("rb") as f:
            if b"\0" in f.read(BINARY_SNIFF):
                return _fail(_binary(real))
            f.seek(0)
            return _read_lines(f, real, start, count)
    except PathError as e:
        return _fail(str(e))
    except UnicodeDecodeError:
        return _fail(_binary(real))
    except OSError as e:
        return _fail(f"cannot read {path}: {e.strerror or e}")


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
        real = resolve_path(ctx, path, for_write=True)
        if real.is_dir():
            return _fail(f"{real} is a directory; give a file path inside it")
        data = content.encode("utf-8")
        atomic_write(real, data)
    except PathError as e:
        return _fail(str(e))
    except UnicodeEncodeError as e:
        return _fail(f"content is not valid Unicode ({e.reason}); remove lone surrogates")
    except OSError as e:
        return _fail(f"cannot write {path}: {e.strerror or e}")
    return ToolResult(f"wrote {len(data)} bytes to {real}")


def edit_file(ctx: ToolContext, path: str, old_text: str, new_text: str) -> ToolResult:
    """Replace the one exact occurrence of `old_text`; ambiguity is refused, never guessed."""
    if not isinstance(old_text, str) or not isinstance(new_text, str):
        return _fail("old_text and new_text must be strings")
    if not old_text:
        return _fail("old_text is empty; copy the exact text to replace from the file "
                     "(to replace a whole file, use write)")
    try:
        real = resolve_path(ctx, path, for_write=True)
        problem = _regular_file(real, "use write to create it")
        if problem:
            return _fail(problem)
        if real.stat().st_size > MAX_EDIT_BYTES:
            return _fail(f"{real} is larger than {MAX_EDIT_BYTES} bytes; edit it with bash "
                         "(e.g. sed) or rewrite it with write")
        data = real.read_bytes()
        if b"\0" in data:
            return _fail(_binary(real))
        text = data.decode("utf-8")
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
        atomic_write(real, text[:first] + new_text + text[first + len(old_text):])
    except PathError as e:
        return _fail(str(e))
    except UnicodeDecodeError:
        return _fail(_binary(real))
    except UnicodeEncodeError as e:
        return _fail(f"new_text is not valid Unicode ({e.reason}); remove lone surrogates")
    except OSError as e:
        return _fail(f"cannot edit {path}: {e.strerror or e}")
    return ToolResult(f"edited {real} (line {text.count(chr(10), 0, first) + 1})")
