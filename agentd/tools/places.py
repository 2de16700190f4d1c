"""Where a file tool's path lands: the model's path normalised lexically (nothing on the
disk is consulted), matched to the deepest allowed folder that holds it (read: the home, the
workdir, the scratch folder; write and edit: the profile's writable folders), that folder
held open, and for a write the real folder and name it changes, checked against the
runtime's protected names. Every refusal is one line for the model (`PathError`, or
`refusals` for what homefs would not follow). See agentd.tools.files for the
rules the tools keep."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agentd import homefs
from agentd.home import PROTECTED_NAMES
from agentd.homefs import Refused, Root
from agentd.tools import ToolContext

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
    if hidden(ctx, full):
        raise PathError(f"{shown} is the runtime's private data, not readable in this turn "
                        f"(profile {ctx.profile})")
    roots = _writable(ctx) if for_write else readable
    if not _under_any(full, roots):
        where = " or ".join(str(p) for p in roots) or "nowhere but bash's private /tmp"
        raise PathError(f"{shown} is read-only in this turn (profile {ctx.profile}); "
                        f"it may write only {'under ' if roots else ''}{where}")
    root = max((r for r in roots if full.is_relative_to(r)), key=lambda r: len(r.parts))
    return Place(full, root, full.relative_to(root).parts, shown)


def hidden(ctx: ToolContext, path: Path) -> bool:
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
def open_root(place: Place) -> Iterator[Root]:
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


def _symlink_refusal(e: OSError, place: Place, root: Root) -> str:
    """One line for a path homefs would not follow: out of the root, or a loop."""
    note = _link_note(root, place.parts)
    if e.errno == errno.EXDEV:
        return (f"{place.shown} leads outside {place.root} through a symlink{note}; symlinks "
                "are followed only within that folder; use the real path instead")
    return (f"{place.shown} goes through a symlink that can't be followed safely (a loop, "
            f"or a link leading out of {place.root}){note}; use the real path instead")


def refused(e: OSError) -> bool:
    """A homefs refusal, or a symlink met by an O_NOFOLLOW open (the walk without openat2,
    when a racer put the link there after homefs looked)."""
    return isinstance(e, Refused) or e.errno in (errno.ELOOP, errno.EXDEV)


def refusal(e: OSError, place: Place, root: Root) -> str:
    """A homefs refusal during a read, write or edit, as one line for the model."""
    if e.errno in (errno.EXDEV, errno.ELOOP):
        return _symlink_refusal(e, place, root)
    if e.errno == errno.EISDIR:
        return f"{place.path} is a directory; use bash to list it, e.g. `ls -la {place.path}`"
    if e.errno == errno.EINVAL:
        return f"{place.path} is not a regular file; use bash to inspect it"
    return f"{place.shown}: {e}"


@contextmanager
def refusals(place: Place, root: Root) -> Iterator[None]:
    """The file tools' one handler for what homefs refuses beneath `root` (a symlink out, a
    loop, a folder or FIFO where a file was asked for): a PathError with one line for the
    model. Other OSErrors pass through."""
    try:
        yield
    except OSError as e:
        if not refused(e):
            raise
        raise PathError(refusal(e, place, root)) from None


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
class Target:
    """The folder (held) and the name a write replaces, and what is there now (or None)."""

    folder: Root
    name: str
    st: os.stat_result | None


def _lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def write_target(ctx: ToolContext, root: Root, place: Place, create: bool) -> Target:
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
    return Target(folder, name, st)


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

