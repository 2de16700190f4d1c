"""The read, write and edit tools: file access confined to the folders the turn may use.

The model chooses every path, and the agent controls every name, inode type and mode bit
under the home and the workdir, while these tools run on the host (often as root). So no
file operation here follows a path by name: a path is normalised lexically (nothing on the
disk is consulted), matched to the deepest allowed folder that contains it (read: the home,
the workdir, the scratch folder; write and edit: the profile's writable folders), and then
opened beneath that folder's held fd through agentd/homefs.py. Symlinks inside the folder
are followed; one leading out of it, even into another allowed folder, is refused with the
link's target in the message, so the model can use that path instead.

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
import errno
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agentd import homefs
from agentd.home import PROTECTED_NAMES
from agentd.homefs import Refused, Root
from agentd.tools import ToolContext, ToolResult

DEFAULT_LIMIT = 2000  # lines per read
MAX_LINE_CHARS = 2000  # a longer line is cut, so one minified file can't flood the context
MAX_OUTPUT_CHARS = 50_000  # total read output; the rest is one offset away
BINARY_SNIFF = 8192  # a NUL byte in this prefix means binary, as git and grep decide
CHUNK = 64 * 1024  # reads of skipped line tails: memory stays bounded on huge lines
MAX_EDIT_BYTES = 10 * 1024 * 1024  # edit loads the file whole; beyond this use bash
_DIR = os.O_PATH | os.O_DIRECTORY


class PathError(ValueError):
    """A path the tools refuse; `str()` is one line telling the model what to do instead."""


@dataclass(frozen=True)
class Place:
    """Where a model's path points, found without touching the disk.

    `path` is the normalised absolute path (what the model is shown), `root` the deepest
    allowed folder holding it, `parts` the components beneath that root (empty: the root).
    """

    path: Path
    root: Path
    parts: tuple[str, ...]
    shown: str  # the model's own spelling, plus where it lands when that differs


def locate(ctx: ToolContext, path: str, *, for_write: bool) -> Place:
    """Normalise the model's path lexically and pick the folder it must stay beneath.

    Relative paths are taken from the workdir, where bash runs too. `~` is refused rather
    than expanded: the user's home directory is not a place the agent may touch. `..` is
    folded away on the text alone (like `cd -L`), never by following a link on the disk.
    """
    if not isinstance(path, str) or not path.strip():
        raise PathError("path is empty; give a file path relative to the workdir or absolute")
    if "\0" in path:
        raise PathError("path contains a NUL byte; give a plain file path")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PathError(f"path is not valid Unicode ({e.reason}); remove lone surrogates "
                        "from it") from None
    if path.startswith("~"):
        raise PathError(f"~ is not expanded in {path!r}; use a path inside the home "
                        f"({ctx.home}) or the workdir ({ctx.workdir})")
    norm = posixpath.normpath(posixpath.join(str(ctx.workdir), path))
    full = Path("/" + norm.lstrip("/"))  # POSIX keeps a leading "//"; it means "/" here
    shown = path if ".." not in path.split("/") else f"{path} (resolves to {full})"
    readable = [ctx.home, ctx.workdir, *([ctx.scratch] if ctx.scratch else [])]
    if not _under_any(full, readable):
        raise PathError(f"path {shown} is outside the home ({ctx.home}) and the workdir "
                        f"({ctx.workdir}); use a path inside one of them")
    if _hidden(ctx, full):
        raise PathError(f"{shown} is the runtime's private data, not readable in this turn "
                        f"(profile {ctx.profile})")
    roots = _writable(ctx) if for_write else readable
    if not _under_any(full, roots):
        where = " or ".join(str(p) for p in roots) or "nowhere but bash's private /tmp"
        raise PathError(f"{shown} is read-only in this turn (profile {ctx.profile}); "
                        f"it may write only {'under ' if roots else ''}{where}")
    root = max((r for r in roots if full.is_relative_to(r)), key=lambda r: len(r.parts))
    return Place(full, root, full.relative_to(root).parts, shown)


def _hidden(ctx: ToolContext, path: Path) -> bool:
    """Whether `path` (as spelled, or as an open fd really is) is runtime data this profile
    may not read (`<home>/.agentd` for untrusted and readonly turns)."""
    from agentd.tools.bwrap import hidden_paths

    return _under_any(path, hidden_paths(ctx))


def _under_any(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _writable(ctx: ToolContext) -> list[Path]:
    """The same writable set bash gets, so the write and edit tools can't bypass it."""
    from agentd.tools.bwrap import writable_paths
    from agentd.tools.sandbox import ensure_scratch

    try:
        ensure_scratch(ctx)
        return writable_paths(ctx)
    except (ValueError, OSError) as e:
        raise PathError(f"cannot write: {e}") from None


@contextmanager
def _open_root(place: Place) -> Iterator[Root]:
    """Hold the place's root folder open. The runtime resolved it, so it has no symlink on
    the way: it is opened from `/` following none, and an agent that swapped a folder on
    the way for a link (e.g. `outbox`, or a workdir inside the home) is refused."""
    slash = os.open("/", _DIR | os.O_CLOEXEC)
    try:
        fd = homefs.open_beneath(slash, str(place.root).lstrip("/") or ".", _DIR)
    except (Refused, FileNotFoundError, NotADirectoryError):
        raise PathError(f"{place.root} is no longer a real folder (a symlink or a missing "
                        f"folder on the way); {place.shown} can't be used in this turn; "
                        "check it with bash") from None
    finally:
        os.close(slash)
    with Root.from_fd(fd) as root:
        yield root


def _link_note(root: Root, parts: tuple[str, ...]) -> str:
    """' (x is a symlink to T)' for the first symlink on the way, read through held folder
    fds only, so the model learns which real path to use instead; '' if none is found."""
    for i, part in enumerate(parts):
        try:
            with root.dir("/".join(parts[:i])) as d:
                if stat.S_ISLNK(os.stat(part, dir_fd=d, follow_symlinks=False).st_mode):
                    target = os.readlink(part, dir_fd=d)
                    return f" ({'/'.join(parts[: i + 1])} is a symlink to {target})"
        except OSError:
            return ""
    return ""


def _refusal(e: OSError, place: Place, root: Root) -> str:
    """One line for a path homefs would not follow: out of the root, or a loop."""
    note = _link_note(root, place.parts)
    if e.errno == errno.EXDEV:
        return (f"{place.shown} leads outside {place.root} through a symlink{note}; symlinks "
                "are followed only within that folder; use the real path instead")
    return (f"{place.shown} goes through a symlink that can't be followed safely (a loop, "
            f"or a link leading out of {place.root}){note}; use the real path instead")


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
    try:
        place = locate(ctx, path, for_write=False)
        with _open_root(place) as root:
            return _read_open(ctx, root, place, start, count)
    except PathError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot read {path}: {e.strerror or e}")


def _read_open(ctx: ToolContext, root: Root, place: Place, start: int,
               count: int) -> ToolResult:
    """Open the file beneath `root` (regular files only: a FIFO or device is never opened
    for reading) and stream the asked-for lines."""
    real = place.path
    try:
        with root.open_regular("/".join(place.parts), follow=True) as (fd, st), \
                open(fd, "rb", closefd=False) as f:
            if _hidden(ctx, homefs.fd_path(fd)):  # a link inside the home to .agentd/
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
    except OSError as e:
        if not _refused(e):
            raise
        if e.errno == errno.EISDIR:
            return _fail(f"{real} is a directory; use bash to list it, e.g. `ls -la {real}`")
        if e.errno == errno.EINVAL:
            return _fail(f"{real} is not a regular file; use bash to inspect it")
        return _fail(_refusal(e, place, root))


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


# --- where a write lands -------------------------------------------------------------------


def _check_protected(ctx: ToolContext, real: Path, place: Place) -> None:
    """Refuse the runtime's own names in the home, judged on a real path that came from a
    held folder fd (never on the model's spelling, which a symlink alias would dodge)."""
    for name in PROTECTED_NAMES:
        owned = ctx.home / name
        if real == owned:
            raise PathError(f"{place.shown} is protected: the runtime owns it; write "
                            "somewhere else (the user edits it)")
        if real.is_relative_to(owned):
            raise PathError(f"{place.shown} is inside {owned}, which is protected: the "
                            "runtime owns it; write somewhere else in the home or workdir")


def _parent_fd(ctx: ToolContext, root: Root, place: Place, create: bool) -> int:
    """A held O_PATH fd of the folder that holds the file, beneath `root` (symlinks inside
    it followed). With `create`, missing folders are made, each one only after its would-be
    real path was checked against the protected names (also without `create`: a protected
    name is refused as such, not as missing), and owned by `ctx.owner`."""
    parents = place.parts[:-1]
    try:
        return homefs.open_beneath(root.fd, "/".join(parents), _DIR, follow=True)
    except FileNotFoundError:
        pass
    fd = homefs.open_beneath(root.fd, "", _DIR)
    try:
        for i, part in enumerate(parents):
            sub = "/".join(parents[: i + 1])
            try:
                nxt = homefs.open_beneath(root.fd, sub, _DIR, follow=True)
            except FileNotFoundError:
                _check_protected(ctx, homefs.fd_path(fd) / part, place)
                if not create:
                    raise
                _mkdir_at(fd, part, ctx.owner)
                nxt = homefs.open_beneath(root.fd, sub, _DIR, follow=True)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mkdir_at(dirfd: int, name: str, owner: tuple[int, int] | None) -> None:
    """mkdir in a held folder; a racing creator is fine (the next open judges it)."""
    try:
        os.mkdir(name, 0o777, dir_fd=dirfd)
    except FileExistsError:
        return
    if owner:
        os.chown(name, *owner, dir_fd=dirfd, follow_symlinks=False)


@dataclass
class _Target:
    """The folder (held) and the name a write replaces, and what is there now (or None)."""

    folder: Root
    name: str
    st: os.stat_result | None


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_target(ctx: ToolContext, root: Root, place: Place, create: bool) -> _Target:
    """Find the real folder and name a write or edit of `place` changes.

    A symlink at the name is followed when it stays beneath the root (the file it points to
    is the one changed, as `read` shows it); one leading out is refused; a dangling one is
    replaced by the new file. The protected names are checked on the held folder's real
    path plus the final name, after every link was followed.
    """
    if not place.parts:
        raise PathError(f"{place.path} is a directory; give a file path inside it")
    folder = Root.from_fd(_parent_fd(ctx, root, place, create))
    name = place.parts[-1]
    try:
        _check_protected(ctx, folder.path / name, place)
        st = _lstat_at(folder.fd, name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            folder.close()
            folder, name, st = _follow_final(ctx, root, place, create)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise PathError(f"{place.path} is a directory; give a file path inside it")
    except BaseException:
        folder.close()
        raise
    return _Target(folder, name, st)


def _follow_final(ctx: ToolContext, root: Root, place: Place,
                  create: bool) -> tuple[Root, str, os.stat_result | None]:
    """The real folder and name behind a symlink at the final name, beneath the root."""
    rel = "/".join(place.parts)
    try:
        fd = homefs.open_beneath(root.fd, rel, os.O_PATH, follow=True)
    except FileNotFoundError:
        if not create:
            raise
        # A dangling link inside the root: the new file replaces the link itself.
        folder = Root.from_fd(_parent_fd(ctx, root, place, create))
        return folder, place.parts[-1], None
    try:
        real = homefs.fd_path(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        inner = real.relative_to(root.path)
    except ValueError:  # moved away after it was opened
        raise PathError(f"{place.shown} moved while it was being written; try again") from None
    if not inner.parts:  # a link to the root itself
        raise PathError(f"{place.path} is a directory; give a file path inside it")
    folder = Root.from_fd(homefs.open_beneath(root.fd, str(inner.parent), _DIR))
    try:
        _check_protected(ctx, folder.path / inner.name, place)
    except PathError:
        folder.close()
        raise
    return folder, inner.name, st


def write_file(ctx: ToolContext, path: str, content: str) -> ToolResult:
    """Create or replace a whole file, atomically, creating its parent folders."""
    if not isinstance(content, str):
        return _fail(f"content must be a string, not {type(content).__name__}")
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError as e:
        return _fail(f"content is not valid Unicode ({e.reason}); remove lone surrogates")
    try:
        place = locate(ctx, path, for_write=True)
        refusal = ctx.quota.refuse_write(place.path, len(data)) if ctx.quota else None
        if refusal:
            return _fail(refusal)
        with _open_root(place) as root:
            try:
                target = _write_target(ctx, root, place, create=True)
                with target.folder:
                    target.folder.write_bytes(target.name, data, owner=ctx.owner)
            except OSError as e:
                if not _refused(e):
                    raise
                return _fail(_write_refusal(e, place, root))
    except PathError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot write {path}: {e.strerror or e}")
    return ToolResult(f"wrote {len(data)} bytes to {place.path}")


def _refused(e: OSError) -> bool:
    """A homefs refusal, or a symlink met by an O_NOFOLLOW open (the walk without openat2,
    when a racer put the link there after homefs looked)."""
    return isinstance(e, Refused) or e.errno in (errno.ELOOP, errno.EXDEV)


def _write_refusal(e: OSError, place: Place, root: Root) -> str:
    """A homefs refusal during a write or edit, as one line for the model."""
    if e.errno in (errno.EXDEV, errno.ELOOP):
        return _refusal(e, place, root)
    if e.errno == errno.EINVAL:
        return f"{place.path} is not a regular file; use bash to inspect it"
    return f"{place.shown}: {e}"


def edit_file(ctx: ToolContext, path: str, old_text: str, new_text: str) -> ToolResult:
    """Replace the one exact occurrence of `old_text`; ambiguity is refused, never guessed."""
    if not isinstance(old_text, str) or not isinstance(new_text, str):
        return _fail("old_text and new_text must be strings")
    if not old_text:
        return _fail("old_text is empty; copy the exact text to replace from the file "
                     "(to replace a whole file, use write)")
    try:
        place = locate(ctx, path, for_write=True)
        with _open_root(place) as root:
            try:
                target = _write_target(ctx, root, place, create=False)
            except FileNotFoundError:
                return _fail(f"{place.path} does not exist; use write to create it")
            except OSError as e:
                if not _refused(e):
                    raise
                return _fail(_write_refusal(e, place, root))
            with target.folder:
                if target.st is None:
                    return _fail(f"{place.path} does not exist; use write to create it")
                try:
                    return _edit_in(ctx, target, place, old_text, new_text)
                except OSError as e:
                    if not _refused(e):
                        raise
                    return _fail(_write_refusal(e, place, root))
    except PathError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot edit {path}: {e.strerror or e}")


def _edit_in(ctx: ToolContext, target: _Target, place: Place, old_text: str,
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
