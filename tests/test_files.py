"""The read, write and edit tools: path confinement, streaming reads, exact edits."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import sandbox_workdir

from agentd.tools import ToolContext
from agentd.tools.files import (
    DEFAULT_LIMIT,
    MAX_LINE_CHARS,
    MAX_OUTPUT_CHARS,
    PathError,
    edit_file,
    read_file,
    resolve_path,
    write_file,
)


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


# --- resolve_path ---------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_workdir(ctx: ToolContext) -> None:
    assert resolve_path(ctx, "a/b.txt", for_write=True) == ctx.workdir / "a" / "b.txt"
    assert resolve_path(ctx, "./x/../y", for_write=False) == ctx.workdir / "y"
    assert resolve_path(ctx, ".", for_write=False) == ctx.workdir


def test_absolute_paths_inside_both_roots(ctx: ToolContext) -> None:
    for root in (ctx.home, ctx.workdir):
        assert resolve_path(ctx, str(root / "n.md"), for_write=True) == root / "n.md"
    # From the workdir into the home by a relative path is fine too.
    rel = os.path.relpath(ctx.home / "memory" / "x.md", ctx.workdir)
    assert resolve_path(ctx, rel, for_write=True) == ctx.home / "memory" / "x.md"


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "..", "/"])
def test_paths_outside_both_roots_are_refused(ctx: ToolContext, path: str) -> None:
    with pytest.raises(PathError, match=r"is outside the home .* and the workdir"):
        resolve_path(ctx, path, for_write=False)
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


@pytest.mark.parametrize("path", ["", "   "])
def test_empty_path_is_refused(ctx: ToolContext, path: str) -> None:
    result = read_file(ctx, path)
    assert result.is_error and "path is empty" in result.content


def test_symlink_in_workdir_to_etc_is_refused(ctx: ToolContext) -> None:
    (ctx.workdir / "etc").symlink_to("/etc")
    result = read_file(ctx, "etc/passwd")
    assert result.is_error and "resolves to /etc/passwd" in result.content
    result = write_file(ctx, "etc/agentd-test-should-not-exist", "x")
    assert result.is_error and "outside the home" in result.content
    assert not Path("/etc/agentd-test-should-not-exist").exists()


def test_symlinked_parent_directory_pointing_outside(ctx: ToolContext, outside: Path) -> None:
    (ctx.workdir / "link").symlink_to(outside)
    for result in (write_file(ctx, "link/new/deep.txt", "x"),
                   write_file(ctx, "link/secret.txt", "pwned"),
                   edit_file(ctx, "link/secret.txt", "top", "no"),
                   read_file(ctx, "link/secret.txt")):
        assert result.is_error and "outside the home" in result.content
    assert not (outside / "new").exists()
    assert (outside / "secret.txt").read_text() == "top secret\n"


def test_file_symlinks_are_judged_by_their_target(ctx: ToolContext, outside: Path) -> None:
    (ctx.workdir / "out").symlink_to(outside / "secret.txt")
    (ctx.workdir / "dangling").symlink_to(outside / "not-yet.txt")
    (ctx.workdir / "inside").symlink_to(ctx.home / "agentd.toml")
    (ctx.workdir / "ok").symlink_to(ctx.home / "notes.md")
    assert read_file(ctx, "out").is_error
    assert write_file(ctx, "dangling", "x").is_error
    assert not (outside / "not-yet.txt").exists()
    # A link into the home is followed, and the protection still applies to its target.
    assert not read_file(ctx, "inside").is_error
    assert "protected" in write_file(ctx, "inside", "x").content
    assert not write_file(ctx, "ok", "hello\n").is_error
    assert (ctx.home / "notes.md").read_text() == "hello\n"


def test_symlink_loop_is_an_error_not_an_exception(ctx: ToolContext) -> None:
    (ctx.workdir / "a").symlink_to(ctx.workdir / "b")
    (ctx.workdir / "b").symlink_to(ctx.workdir / "a")
    for result in (read_file(ctx, "a"), write_file(ctx, "a", "x"), edit_file(ctx, "a", "x", "y")):
        assert result.is_error


def test_hardlink_to_outside_file_is_not_modified(ctx: ToolContext, outside: Path) -> None:
    os.link(outside / "secret.txt", ctx.workdir / "linked.txt")
    result = write_file(ctx, "linked.txt", "overwritten")
    assert result.is_error and "hard links" in result.content
    result = edit_file(ctx, "linked.txt", "top", "no")
    assert result.is_error and "hard links" in result.content
    assert (outside / "secret.txt").read_text() == "top secret\n"
    assert (ctx.workdir / "linked.txt").read_text() == "top secret\n"
    assert read_file(ctx, "linked.txt").content == "     1\ttop secret"  # reading is harmless


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
