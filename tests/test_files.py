"""The read, write and edit tools: path confinement, streaming reads, exact edits."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IN_CI, requires_root, sandbox_workdir

from agentd.tools import ToolContext, ToolResult
from agentd.tools.files import (
    DEFAULT_LIMIT,
    MAX_LINE_CHARS,
    MAX_OUTPUT_CHARS,
    edit_file,
    read_file,
    write_file,
)
from agentd.tools.places import PathError, locate


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    """A home and a workdir as two separate folders, resolved as the runtime does."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".git").mkdir(parents=True)
    (home / ".git" / "config").write_text("[core]\n")
    (home / ".agentd").mkdir()
    (home / "agentd.toml").write_text("# settings\n")
    return ToolContext(home=home.resolve(), workdir=sandbox_workdir(work))


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that is neither the home nor the workdir."""
    d = tmp_path_factory.mktemp("outside").resolve()
    (d / "secret.txt").write_text("top secret\n")
    return d


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- locate ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_workdir(ctx: ToolContext) -> None:
    assert locate(ctx, "a/b.txt", for_write=True).path == ctx.workdir / "a" / "b.txt"
    assert locate(ctx, "./x/../y", for_write=False).path == ctx.workdir / "y"
    assert locate(ctx, ".", for_write=False).path == ctx.workdir
    assert locate(ctx, ".", for_write=False).parts == ()


def test_absolute_paths_inside_both_roots(ctx: ToolContext) -> None:
    for root in (ctx.home, ctx.workdir):
        place = locate(ctx, str(root / "n.md"), for_write=True)
        assert (place.path, place.root, place.parts) == (root / "n.md", root, ("n.md",))
    # From the workdir into the home by a relative path is fine too.
    rel = os.path.relpath(ctx.home / "memory" / "x.md", ctx.workdir)
    assert locate(ctx, rel, for_write=True).path == ctx.home / "memory" / "x.md"


def test_the_deepest_root_holds_the_path(ctx: ToolContext) -> None:
    """A workdir inside the home: its files are opened beneath the workdir, the rest beneath
    the home. Nothing on the disk is consulted to decide."""
    ctx.workdir = ctx.home / "proj"
    assert locate(ctx, "a.md", for_write=True).root == ctx.home / "proj"
    assert locate(ctx, "../b.md", for_write=True).root == ctx.home
    assert not (ctx.home / "proj").exists()


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "..", "/"])
def test_paths_outside_both_roots_are_refused(ctx: ToolContext, path: str) -> None:
    with pytest.raises(PathError, match=r"is outside the home .* and the workdir"):
        locate(ctx, path, for_write=False)
    result = read_file(ctx, path)
    assert result.is_error and "outside the home" in result.content
    assert str(ctx.home) in result.content and str(ctx.workdir) in result.content


def test_outside_message_shows_where_a_relative_path_lands(ctx: ToolContext) -> None:
    result = read_file(ctx, "../../../../../../../../etc/passwd")
    assert result.is_error and "resolves to /etc/passwd" in result.content


@pytest.mark.parametrize("path", ["~/.ssh/id_rsa", "~", "~root/.bashrc"])
def test_tilde_is_refused_not_expanded(ctx: ToolContext, path: str) -> None:
    for result in (read_file(ctx, path), write_file(ctx, path, "x"),
                   edit_file(ctx, path, "a", "b")):
        assert result.is_error
        assert "~ is not expanded" in result.content and str(ctx.workdir) in result.content
    assert not (ctx.workdir / "~").exists()


@pytest.mark.parametrize("path", ["a\0b", "\0", "notes.md\0../../etc/passwd"])
def test_nul_in_path_is_refused(ctx: ToolContext, path: str) -> None:
    for result in (read_file(ctx, path), write_file(ctx, path, "x"),
                   edit_file(ctx, path, "a", "b")):
        assert result.is_error and "NUL" in result.content


@pytest.mark.parametrize("path", ["a\ud800b", "\udcff"])
def test_lone_surrogates_in_a_path_are_refused(ctx: ToolContext, path: str) -> None:
    for result in (read_file(ctx, path), write_file(ctx, path, "x"),
                   edit_file(ctx, path, "a", "b")):
        assert result.is_error and "not valid Unicode" in result.content
    assert list(ctx.workdir.iterdir()) == []


@pytest.mark.parametrize("path", ["", "   "])
def test_empty_path_is_refused(ctx: ToolContext, path: str) -> None:
    result = read_file(ctx, path)
    assert result.is_error and "path is empty" in result.content


def test_symlink_in_workdir_to_etc_is_refused(ctx: ToolContext) -> None:
    (ctx.workdir / "etc").symlink_to("/etc")
    result = read_file(ctx, "etc/passwd")
    assert result.is_error and "leads outside" in result.content
    assert "(etc is a symlink to /etc)" in result.content  # the model learns the real path
    result = write_file(ctx, "etc/agentd-test-should-not-exist", "x")
    assert result.is_error and "leads outside" in result.content
    assert not Path("/etc/agentd-test-should-not-exist").exists()


def test_symlinked_parent_directory_pointing_outside(ctx: ToolContext, outside: Path) -> None:
    (ctx.workdir / "link").symlink_to(outside)
    for result in (write_file(ctx, "link/new/deep.txt", "x"),
                   write_file(ctx, "link/secret.txt", "pwned"),
                   edit_file(ctx, "link/secret.txt", "top", "no"),
                   read_file(ctx, "link/secret.txt")):
        assert result.is_error and "leads outside" in result.content
        assert f"link is a symlink to {outside}" in result.content
    assert not (outside / "new").exists()
    assert (outside / "secret.txt").read_text() == "top secret\n"


def test_symlinks_are_followed_only_within_their_folder(ctx: ToolContext,
                                                        outside: Path) -> None:
    """Deliberately stricter than before: a link is followed only beneath the folder the
    path was matched to, so a link from the workdir into the home (or an absolute link) is
    refused too, with its target in the message so the model can use that path instead."""
    (ctx.workdir / "out").symlink_to(outside / "secret.txt")
    (ctx.workdir / "dangling").symlink_to(outside / "not-yet.txt")
    (ctx.workdir / "to-home").symlink_to(ctx.home / "notes.md")
    assert "leads outside" in read_file(ctx, "out").content
    assert "leads outside" in write_file(ctx, "dangling", "x").content
    assert "leads outside" in edit_file(ctx, "out", "top", "x").content
    result = write_file(ctx, "to-home", "x")
    assert result.is_error and f"to-home is a symlink to {ctx.home / 'notes.md'}" in \
        result.content
    assert not (outside / "not-yet.txt").exists() and not (ctx.home / "notes.md").exists()
    assert (outside / "secret.txt").read_text() == "top secret\n"
    assert (ctx.workdir / "out").is_symlink() and (ctx.workdir / "dangling").is_symlink()


def test_a_link_inside_the_folder_is_followed(ctx: ToolContext) -> None:
    """CLAUDE.md -> AGENTS.md stays a link: write and edit change the file it points to."""
    (ctx.workdir / "docs").mkdir()
    (ctx.workdir / "AGENTS.md").write_text("rules\n")
    (ctx.workdir / "CLAUDE.md").symlink_to("AGENTS.md")
    (ctx.workdir / "d").symlink_to("docs")
    assert read_file(ctx, "CLAUDE.md").content == "     1\trules"
    assert not edit_file(ctx, "CLAUDE.md", "rules", "new rules").is_error
    assert not write_file(ctx, "d/x.md", "in docs\n").is_error
    assert (ctx.workdir / "CLAUDE.md").is_symlink()
    assert (ctx.workdir / "AGENTS.md").read_text() == "new rules\n"
    assert (ctx.workdir / "docs" / "x.md").read_text() == "in docs\n"
    assert not write_file(ctx, "CLAUDE.md", "whole\n").is_error
    assert (ctx.workdir / "CLAUDE.md").is_symlink()
    assert (ctx.workdir / "AGENTS.md").read_text() == "whole\n"
    # A dangling link inside the folder is replaced by the new file.
    (ctx.workdir / "later.md").symlink_to("not-there.md")
    assert not write_file(ctx, "later.md", "now\n").is_error
    assert not (ctx.workdir / "later.md").is_symlink()
    assert not (ctx.workdir / "not-there.md").exists()
    assert "does not exist" in edit_file(ctx, "not-there.md", "a", "b").content


def test_symlink_loop_is_an_error_not_an_exception(ctx: ToolContext) -> None:
    (ctx.workdir / "a").symlink_to("b")
    (ctx.workdir / "b").symlink_to("a")
    for result in (read_file(ctx, "a"), write_file(ctx, "a", "x"), edit_file(ctx, "a", "x", "y")):
        assert result.is_error and "can't be followed safely" in result.content


def test_hardlink_to_outside_file_is_not_modified(ctx: ToolContext, outside: Path) -> None:
    """Deliberately different from before (a refusal): the name is replaced by rename, so
    the other name, outside, keeps its bytes, and the model's write simply works."""
    os.link(outside / "secret.txt", ctx.workdir / "linked.txt")
    os.link(outside / "secret.txt", ctx.workdir / "linked2.txt")
    assert not write_file(ctx, "linked.txt", "overwritten").is_error
    assert not edit_file(ctx, "linked2.txt", "top", "no").is_error
    assert (outside / "secret.txt").read_text() == "top secret\n"
    assert os.stat(outside / "secret.txt").st_nlink == 1
    assert (ctx.workdir / "linked.txt").read_text() == "overwritten"
    assert (ctx.workdir / "linked2.txt").read_text() == "no secret\n"


@pytest.mark.parametrize("rel", [".git/config", ".git/hooks/pre-commit", ".git",
                                 ".agentd/x", ".agentd/sessions/s.jsonl", "agentd.toml"])
def test_runtime_files_in_the_home_are_protected(ctx: ToolContext, rel: str) -> None:
    target = ctx.home / rel
    before = target.read_bytes() if target.is_file() else None
    for path in (str(target), os.path.relpath(target, ctx.workdir)):
        for result in (write_file(ctx, path, "pwned"), edit_file(ctx, path, "[core]", "x")):
            assert result.is_error
            assert "protected: the runtime owns it" in result.content
    assert (target.read_bytes() if target.is_file() else None) == before
    assert not (ctx.home / ".git" / "hooks").exists()


def test_protected_files_are_still_readable(ctx: ToolContext) -> None:
    assert read_file(ctx, str(ctx.home / "agentd.toml")).content == "     1\t# settings"
    assert not read_file(ctx, str(ctx.home / ".git" / "config")).is_error


def test_similar_names_are_not_protected(ctx: ToolContext) -> None:
    for rel in (".gitignore", ".agentd-notes.md", "agentd.toml.bak", "sub/.git/config"):
        assert not write_file(ctx, str(ctx.home / rel), "x").is_error, rel
    assert not write_file(ctx, ".git/config", "x").is_error  # the workdir's own repo


# --- hostile trees: what the agent can plant where the host-side tools act ------------------


def test_a_symlink_at_the_name_to_outside_is_never_written_through(
        ctx: ToolContext, outside: Path, resolver: str) -> None:
    (ctx.workdir / "notes.md").symlink_to(outside / "secret.txt")
    (ctx.home / "MEMORY.md").symlink_to("/etc/passwd")
    for result in (write_file(ctx, "notes.md", "pwned"),
                   edit_file(ctx, "notes.md", "top", "pwned"),
                   write_file(ctx, str(ctx.home / "MEMORY.md"), "pwned"),
                   read_file(ctx, str(ctx.home / "MEMORY.md"))):
        assert result.is_error and "symlink" in result.content
    assert (outside / "secret.txt").read_text() == "top secret\n"
    assert "pwned" not in Path("/etc/passwd").read_text()


def test_a_symlinked_folder_leading_outside_is_refused(ctx: ToolContext, outside: Path,
                                                        resolver: str) -> None:
    (ctx.home / "memory").symlink_to(outside)
    for result in (write_file(ctx, str(ctx.home / "memory/new/x.md"), "x"),
                   write_file(ctx, str(ctx.home / "memory/secret.txt"), "x"),
                   edit_file(ctx, str(ctx.home / "memory/secret.txt"), "top", "x")):
        assert result.is_error and "symlink" in result.content
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "top secret\n"


def _finishes(call: Callable[[], ToolResult]) -> ToolResult:
    """Run a tool call in a thread; fail (instead of hanging the suite) if it blocks."""
    done, box = threading.Event(), []

    def run() -> None:
        box.append(call())
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the tool blocked on a FIFO"
    return box[0]


def test_a_fifo_is_refused_or_replaced_without_hanging(ctx: ToolContext,
                                                       resolver: str) -> None:
    os.mkfifo(ctx.workdir / "pipe")
    for call in (lambda: read_file(ctx, "pipe"), lambda: edit_file(ctx, "pipe", "a", "b")):
        result = _finishes(call)
        assert result.is_error and "not a regular file" in result.content
    assert stat.S_ISFIFO(os.lstat(ctx.workdir / "pipe").st_mode)
    result = _finishes(lambda: write_file(ctx, "pipe", "now a file\n"))
    assert not result.is_error  # replaced by rename, never opened
    assert (ctx.workdir / "pipe").read_text() == "now a file\n"


def _setuid_file(path: Path, how: str) -> None:
    if how == "chmod":
        path.write_text("old\n")
        os.chmod(path, 0o6755 | stat.S_ISVTX)
    else:  # what the sandbox did in the attack: no chmod at all
        try:
            os.mknod(path, stat.S_IFREG | 0o4755)
        except PermissionError:
            if IN_CI:  # CI runs as root, where mknod works: the attack must be tested there
                pytest.fail("CI must allow mknod of a set-uid file (run as root)")
            pytest.skip("mknod of a set-uid file is not permitted here: SECURITY TEST NOT RUN")
        os.truncate(path, 0)
        with path.open("w") as f:
            f.write("old\n")
    assert os.stat(path).st_mode & stat.S_ISUID


@pytest.mark.parametrize("how", ["chmod", "mknod"])
def test_set_id_bits_never_survive_a_write_or_edit(ctx: ToolContext, how: str,
                                                   resolver: str) -> None:
    for name, call in (("w", lambda: write_file(ctx, "w", "#!/bin/sh\nid\n")),
                       ("e", lambda: edit_file(ctx, "e", "old", "#!/bin/sh\nid"))):
        target = ctx.workdir / name
        _setuid_file(target, how)
        assert not call().is_error
        mode = os.stat(target).st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), oct(mode)
        assert stat.S_IMODE(mode) == 0o755 and target.read_text().startswith("#!/bin/sh")


@pytest.mark.parametrize(("alias", "target", "path"), [
    ("g", ".git", "g/config"), ("g", ".git", "g/hooks/pre-commit"),
    ("g", ".git/", "g/new/deep"), ("a", ".agentd", "a/sessions/x.jsonl"),
    ("t", "agentd.toml", "t"), ("d", ".", "d/agentd.toml"), ("d", ".", "d/.git/config")])
def test_protected_names_through_a_symlink_alias(ctx: ToolContext, alias: str, target: str,
                                                 path: str, resolver: str) -> None:
    """`ln -s .git g; write g/config`: the check is on the real folder, not the spelling."""
    (ctx.home / alias).symlink_to(target)
    before = {p: p.read_bytes() for p in ctx.home.rglob("*") if p.is_file()}
    for tool in (lambda p: write_file(ctx, p, "pwned"), lambda p: edit_file(ctx, p, "[", "x")):
        result = tool(str(ctx.home / path))
        assert result.is_error
        assert ("protected" in result.content if resolver == "openat2"
                else "symlink" in result.content), result.content
    assert {p: p.read_bytes() for p in ctx.home.rglob("*") if p.is_file()} == before
    assert not (ctx.home / ".git" / "hooks").exists()
    assert not (ctx.home / ".git" / "new").exists()


def test_protected_names_when_the_workdir_is_the_home(ctx: ToolContext) -> None:
    ctx.workdir = ctx.home
    for path in (".git/config", "./.git/../.git/config", "agentd.toml", ".agentd/x"):
        assert "protected" in write_file(ctx, path, "x").content, path
    assert (ctx.home / ".git" / "config").read_text() == "[core]\n"


@pytest.mark.parametrize("path", ["../outside.txt", "a/../../outside.txt", "/tmp/x.txt",
                                  "//etc/passwd", "/..", "~/x", "~", "x\0y"])
def test_write_and_edit_refuse_paths_out_of_bounds(ctx: ToolContext, path: str) -> None:
    for result in (write_file(ctx, path, "x"), edit_file(ctx, path, "a", "b")):
        assert result.is_error
        assert any(m in result.content for m in ("outside the home", "~ is not expanded",
                                                 "NUL")), result.content
    assert not (ctx.workdir.parent / "outside.txt").exists()


def test_dotdot_is_folded_on_the_text_not_through_a_link(ctx: ToolContext,
                                                         outside: Path) -> None:
    """`link/../x` means the workdir's x (like `cd -L`), never a file next to the link's
    target, and never a reason to look at the disk before choosing the folder."""
    (ctx.workdir / "link").symlink_to(outside)
    assert not write_file(ctx, "link/../secret.txt", "mine").is_error
    assert (ctx.workdir / "secret.txt").read_text() == "mine"
    assert (outside / "secret.txt").read_text() == "top secret\n"


def test_a_root_swapped_for_a_symlink_is_refused(ctx: ToolContext, outside: Path) -> None:
    """The folder the path is matched to is opened without following any link on its way:
    a workdir inside the home, swapped by the agent for a link out, is not written through."""
    (ctx.home / "proj").mkdir()
    ctx.workdir = ctx.home / "proj"
    assert not write_file(ctx, "a.md", "x").is_error
    (ctx.home / "proj").rename(ctx.home / "proj.old")
    (ctx.home / "proj").symlink_to(outside)
    for result in (write_file(ctx, "a.md", "x"), edit_file(ctx, "secret.txt", "top", "x"),
                   read_file(ctx, "secret.txt")):
        assert result.is_error and "no longer a real folder" in result.content
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@requires_root
def test_created_files_and_folders_belong_to_the_sandbox_owner(ctx: ToolContext) -> None:
    ctx.owner = (65534, 65534)
    assert not write_file(ctx, "new/deeper/f.md", "x").is_error
    (ctx.workdir / "mine.md").write_text("a\n")
    assert not edit_file(ctx, "mine.md", "a", "b").is_error
    for rel in ("new", "new/deeper", "new/deeper/f.md", "mine.md"):
        st = os.stat(ctx.workdir / rel)
        assert (st.st_uid, st.st_gid) == (65534, 65534), rel


# --- read -----------------------------------------------------------------------------------


def write_lines(path: Path, n: int) -> None:
    path.write_text("".join(f"line {i}\n" for i in range(1, n + 1)))


def test_read_numbers_lines_like_cat_n(ctx: ToolContext) -> None:
    (ctx.workdir / "a.txt").write_text("alpha\n\tbeta\n\ngamma")
    result = read_file(ctx, "a.txt")
    assert not result.is_error
    assert result.content == "     1\talpha\n     2\t\tbeta\n     3\t\n     4\tgamma"


def test_read_offset_and_limit(ctx: ToolContext) -> None:
    write_lines(ctx.workdir / "n.txt", 100)
    result = read_file(ctx, "n.txt", offset=10, limit=3)
    assert result.content.splitlines() == [
        "    10\tline 10", "    11\tline 11", "    12\tline 12",
        "[… more lines; continue with offset=13]"]
    tail = read_file(ctx, "n.txt", offset=98, limit=10).content
    assert tail.splitlines() == ["    98\tline 98", "    99\tline 99", "   100\tline 100"]
    exact = read_file(ctx, "n.txt", offset=91, limit=10).content  # ends exactly at EOF
    assert "more lines" not in exact and exact.endswith("line 100")
    assert read_file(ctx, "n.txt", offset=0, limit=1).content.startswith("     1\tline 1\n")


def test_read_default_limit(ctx: ToolContext) -> None:
    write_lines(ctx.workdir / "n.txt", DEFAULT_LIMIT + 5)
    lines = read_file(ctx, "n.txt").content.splitlines()
    assert len(lines) == DEFAULT_LIMIT + 1
    assert lines[-1] == f"[… more lines; continue with offset={DEFAULT_LIMIT + 1}]"


@pytest.mark.parametrize(("offset", "limit", "message"), [
    (-1, None, "offset must be"), (None, 0, "limit must be"), (None, -5, "limit must be"),
    (51, None, "offset 51 is past the end"),
])
def test_read_bad_offset_or_limit(ctx: ToolContext, offset: int | None, limit: int | None,
                                  message: str) -> None:
    write_lines(ctx.workdir / "n.txt", 50)
    result = read_file(ctx, "n.txt", offset, limit)
    assert result.is_error and message in result.content


def test_read_cuts_long_lines(ctx: ToolContext) -> None:
    (ctx.workdir / "min.js").write_text("x" * 5000 + "\nshort\n" + "é" * 3000 + "\n")
    lines = read_file(ctx, "min.js").content.splitlines()
    assert lines[0].startswith("     1\t" + "x" * MAX_LINE_CHARS + " [… line cut at")
    assert "x" * (MAX_LINE_CHARS + 1) not in lines[0]
    assert lines[1] == "     2\tshort"
    assert lines[2].startswith("     3\t" + "é" * MAX_LINE_CHARS + " [… line cut")
    # A line of exactly the maximum is shown whole, even in 4-byte characters.
    (ctx.workdir / "max.txt").write_text("😀" * MAX_LINE_CHARS + "\n")
    assert read_file(ctx, "max.txt").content == "     1\t" + "😀" * MAX_LINE_CHARS


def test_read_strips_crlf(ctx: ToolContext) -> None:
    (ctx.workdir / "dos.txt").write_bytes(b"one\r\ntwo\r\n")
    assert read_file(ctx, "dos.txt").content == "     1\tone\n     2\ttwo"


def test_read_output_is_capped_with_a_continue_offset(ctx: ToolContext) -> None:
    (ctx.workdir / "wide.txt").write_text(("y" * 1500 + "\n") * 200)
    result = read_file(ctx, "wide.txt")
    assert len(result.content) <= MAX_OUTPUT_CHARS + 100
    lines = result.content.splitlines()
    shown = len(lines) - 1
    assert lines[-1] == (f"[… output capped at {MAX_OUTPUT_CHARS} chars; "
                         f"continue with offset={shown + 1}]")
    nxt = read_file(ctx, "wide.txt", offset=shown + 1).content
    assert nxt.startswith(f"{shown + 1:>6}\t")


@pytest.mark.parametrize("data", [b"\x7fELF\x02\x01\x00\x00binary", b"PK\x03\x04" + b"\0" * 20,
                                  b"caf\xe9 latin-1\n", b"ok\n" * 1000 + b"\xff\xfe\n"],
                         ids=["elf", "zip", "latin-1", "late-invalid-utf8"])
def test_read_refuses_binary(ctx: ToolContext, data: bytes) -> None:
    (ctx.workdir / "blob").write_bytes(data)
    result = read_file(ctx, "blob")
    assert result.is_error
    path = ctx.workdir / "blob"
    assert result.content == (f"{path} looks binary ({len(data)} bytes); use bash, e.g. "
                              f"`file {path}` or `xxd {path} | head`")


def test_read_judges_only_the_bytes_it_reads(ctx: ToolContext) -> None:
    """A log with one bad byte far down is still readable up to it: reads stream."""
    (ctx.workdir / "log").write_bytes(b"ok\n" * 1000 + b"\xff\n")
    assert read_file(ctx, "log", limit=5).content.endswith("continue with offset=6]")
    assert "looks binary" in read_file(ctx, "log", offset=990).content


def test_read_directory_missing_empty_and_fifo(ctx: ToolContext) -> None:
    (ctx.workdir / "d").mkdir()
    result = read_file(ctx, "d")
    assert result.is_error and "is a directory" in result.content and "ls" in result.content
    result = read_file(ctx, "nope.txt")
    assert result.is_error and "does not exist" in result.content
    (ctx.workdir / "empty.txt").touch()
    assert read_file(ctx, "empty.txt") == read_file(ctx, "empty.txt", offset=3)
    assert read_file(ctx, "empty.txt").content == "(empty file)"
    assert not read_file(ctx, "empty.txt").is_error
    os.mkfifo(ctx.workdir / "pipe")
    result = read_file(ctx, "pipe")  # must not block waiting for a writer
    assert result.is_error and "not a regular file" in result.content


def test_read_50mb_file_streams(ctx: ToolContext) -> None:
    big = ctx.workdir / "big.log"
    line = b"A" * (10 * 1024 * 1024 - 1) + b"\n"
    with big.open("wb") as f:
        for _ in range(5):
            f.write(line)
    assert big.stat().st_size == 50 * 1024 * 1024
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        result = read_file(ctx, "big.log", limit=2)
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not result.is_error
    lines = result.content.splitlines()
    assert lines[0].startswith("     1\tAAAA") and "line cut" in lines[0]
    assert lines[1].startswith("     2\tAAAA")
    assert lines[-1] == "[… more lines; continue with offset=3]"
    assert len(result.content) < 2 * (MAX_LINE_CHARS + 100)
    assert peak < 2 * 1024 * 1024, f"peak memory {peak} bytes: the file was loaded whole"
    assert elapsed < 5


def test_read_50mb_of_short_lines_from_the_middle(ctx: ToolContext) -> None:
    big = ctx.workdir / "many.txt"
    row = b"B" * 99 + b"\n"
    with big.open("wb") as f:
        for _ in range(500):
            f.write(row * 1000)  # 500,000 lines of 100 bytes: 50 MB
    t0 = time.monotonic()
    head = read_file(ctx, "many.txt")
    assert time.monotonic() - t0 < 1
    assert len(head.content) <= MAX_OUTPUT_CHARS + 100
    assert "continue with offset=" in head.content.splitlines()[-1]
    middle = read_file(ctx, "many.txt", offset=250_000, limit=2).content.splitlines()
    assert middle == [f"250000\t{'B' * 99}", f"250001\t{'B' * 99}",
                      "[… more lines; continue with offset=250002]"]


# --- write ----------------------------------------------------------------------------------


def test_write_creates_parents_and_reports_bytes(ctx: ToolContext) -> None:
    result = write_file(ctx, "deep/er/note.md", "héllo\n")
    target = ctx.workdir / "deep" / "er" / "note.md"
    assert result.content == f"wrote 7 bytes to {target}" and not result.is_error
    assert target.read_text() == "héllo\n"
    result = write_file(ctx, str(ctx.home / "memory" / "daily" / "x.md"), "")
    assert result.content == f"wrote 0 bytes to {ctx.home / 'memory' / 'daily' / 'x.md'}"


def test_write_is_atomic_and_keeps_mode(ctx: ToolContext) -> None:
    target = ctx.workdir / "run.sh"
    target.write_text("old\n")
    target.chmod(0o750)
    inode = target.stat().st_ino
    assert not write_file(ctx, "run.sh", "#!/bin/sh\necho new\n").is_error
    assert target.read_text() == "#!/bin/sh\necho new\n"
    assert target.stat().st_mode & 0o777 == 0o750
    assert target.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert leftovers(ctx.workdir) == []


def test_write_refuses_bad_content_and_directories(ctx: ToolContext) -> None:
    result = write_file(ctx, "a.txt", b"bytes")  # type: ignore[arg-type]
    assert result.is_error and "content must be a string" in result.content
    result = write_file(ctx, "a.txt", "\ud800")
    assert result.is_error and "not valid Unicode" in result.content
    (ctx.workdir / "d").mkdir()
    result = write_file(ctx, "d", "x")
    assert result.is_error and "is a directory" in result.content
    (ctx.workdir / "f").write_text("file")
    result = write_file(ctx, "f/under.txt", "x")  # parent is a file
    assert result.is_error and result.content.startswith("cannot write f/under.txt")
    assert not (ctx.workdir / "a.txt").exists() and leftovers(ctx.workdir) == []


# --- edit -----------------------------------------------------------------------------------


def test_edit_replaces_a_unique_match(ctx: ToolContext) -> None:
    target = ctx.workdir / "code.py"
    target.write_text("def f():\n    return 1\n\n\ndef g():\n    return 2\n")
    result = edit_file(ctx, "code.py", "    return 2", "    return 3")
    assert not result.is_error
    assert result.content == f"edited {target} (line 6)"
    assert target.read_text() == "def f():\n    return 1\n\n\ndef g():\n    return 3\n"
    assert leftovers(ctx.workdir) == []


def test_edit_not_found_and_ambiguous(ctx: ToolContext) -> None:
    target = ctx.workdir / "t.txt"
    target.write_text("x = 1\nx = 1\ny = 2\n")
    result = edit_file(ctx, "t.txt", "z = 3", "z = 4")
    assert result.is_error
    assert result.content == (f"old_text not found in {target}; read the file and copy "
                              "the text exactly")
    result = edit_file(ctx, "t.txt", "x = 1", "x = 9")
    assert result.is_error
    assert result.content == (f"old_text matches 2 times in {target}; include more "
                              "surrounding lines to make it unique")
    target.write_text("aaa\n")
    assert "matches 2 times" in edit_file(ctx, "t.txt", "aa", "b").content  # overlapping
    assert target.read_text() == "aaa\n"


def test_edit_refusals(ctx: ToolContext) -> None:
    result = edit_file(ctx, "missing.txt", "a", "b")
    assert result.is_error and "does not exist; use write" in result.content
    (ctx.workdir / "t.txt").write_text("abc\n")
    result = edit_file(ctx, "t.txt", "", "b")
    assert result.is_error and "old_text is empty" in result.content
    (ctx.workdir / "bin").write_bytes(b"ab\0cd")
    assert "looks binary" in edit_file(ctx, "bin", "ab", "x").content
    (ctx.workdir / "latin").write_bytes(b"caf\xe9\n")
    assert "looks binary" in edit_file(ctx, "latin", "caf", "x").content
    (ctx.workdir / "d").mkdir()
    assert "is a directory" in edit_file(ctx, "d", "a", "b").content
    assert (ctx.workdir / "t.txt").read_text() == "abc\n"


def test_edit_keeps_crlf_line_endings(ctx: ToolContext) -> None:
    target = ctx.workdir / "dos.txt"
    target.write_bytes(b"one\r\ntwo\r\nthree\r\n")
    result = edit_file(ctx, "dos.txt", "two\nthree", "2\n3")
    assert not result.is_error and result.content.endswith("(line 2)")
    assert target.read_bytes() == b"one\r\n2\r\n3\r\n"


def test_edit_can_delete_and_handles_unicode(ctx: ToolContext) -> None:
    target = ctx.workdir / "u.md"
    target.write_text("# Tîtle 😀\nremove me\nkeep\n")
    assert not edit_file(ctx, "u.md", "remove me\n", "").is_error
    assert target.read_text() == "# Tîtle 😀\nkeep\n"
    assert not edit_file(ctx, "u.md", "😀", "✓").is_error
    assert target.read_text() == "# Tîtle ✓\nkeep\n"


@requires_root
def test_a_turn_gives_what_the_file_tools_create_to_the_sandbox_uid(
        fake: object, home: Path, workdir: Path) -> None:
    """Through the real turn: as root, a file and folder made by `write` belong to the
    sandbox uid, so the next bash command of the same turn can change them."""
    from conftest import agentd

    from agentd.config import load_settings
    from agentd.tools.owner import sandbox_owner

    who = sandbox_owner(load_settings(home).sandbox)
    assert who is not None
    bash = [{"tool_calls": [{"name": "bash", "arguments": {"command": c}}]}
            for c in ("true", "echo y >> new/n.md")]  # the first one hands the folders over
    write = {"tool_calls": [{"name": "write", "arguments": {"path": "new/n.md",
                                                            "content": "x"}}]}
    fake.push(bash[0], write, bash[1], {"text": "done"})  # type: ignore[attr-defined]
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", "openai:gpt-5.4-mini", "go")
    assert r.exit_code == 0, r.stdout
    assert [c["is_error"] for c in json.loads(r.stdout)["tool_calls"]] == [False] * 3
    for p in (workdir / "new", workdir / "new" / "n.md"):
        assert (p.stat().st_uid, p.stat().st_gid) == who
    assert (workdir / "new" / "n.md").read_text() == "xy\n"
