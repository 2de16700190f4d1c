"""The confined layer (agentd/homefs), on a real filesystem, with openat2 and with the
component-walk fallback: symlinks, FIFOs, devices, set-id bits, hard links and hostile
names planted where agentd reads and writes."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.homefs import Refused, Root


@pytest.fixture
def tree(tmp_path: Path, resolver: str) -> Iterator[tuple[Root, Path, Path]]:
    """(root, its path, a secret file outside it)."""
    inside = tmp_path / "home"
    (inside / "memory").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    with Root(inside) as root:
        yield root, inside, secret


def test_reads_a_regular_file(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    (inside / "memory/MEMORY.md").write_text("remember ünïcode")
    assert root.read_text("memory/MEMORY.md") == "remember ünïcode"


def test_read_ends_reads_a_big_file_only_at_its_ends(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    (inside / "small.md").write_text("é" * 10)
    assert root.read_ends("small.md", 10) == ("é" * 10, 0, "")
    (inside / "big.md").write_bytes("é".encode() * 1000)  # 2000 bytes, cut mid-character
    head, skipped, tail = root.read_ends("big.md", 101)
    assert (head, tail) == ("é" * 50, "é" * 50) and skipped == 2000 - 202


@pytest.mark.parametrize("link", ["{secret}", "../secret.txt", "/proc/self/environ",
                                  "/proc/self/fd/0"])
def test_a_runtime_file_is_never_read_through_a_symlink(tree: tuple[Root, Path, Path],
                                                         link: str) -> None:
    root, inside, secret = tree
    (inside / "memory/MEMORY.md").symlink_to(link.format(secret=secret))
    with pytest.raises(Refused, match="symlink"):
        root.read_text("memory/MEMORY.md")


def test_a_symlinked_folder_on_the_way_is_refused(tree: tuple[Root, Path, Path]) -> None:
    root, inside, secret = tree
    (inside / "skills").symlink_to(secret.parent)
    with pytest.raises(Refused):
        root.read_text("skills/secret.txt")


def test_follow_resolves_links_only_beneath_the_root(tree: tuple[Root, Path, Path],
                                                     resolver: str) -> None:
    root, inside, secret = tree
    (inside / "memory/real.md").write_text("ok")
    (inside / "alias.md").symlink_to("memory/real.md")
    (inside / "out.md").symlink_to(secret)
    if resolver == "openat2":
        assert root.read_text("alias.md", follow=True) == "ok"
    else:  # the fallback refuses every link
        with pytest.raises(Refused):
            root.read_text("alias.md", follow=True)
    with pytest.raises(Refused, match="outside" if resolver == "openat2" else "symlink"):
        root.read_text("out.md", follow=True)


@pytest.mark.parametrize("rel", ["../secret.txt", "/etc/passwd", "memory/../../secret.txt",
                                 "a\0b"])
def test_paths_that_leave_the_root_are_refused(tree: tuple[Root, Path, Path],
                                               rel: str) -> None:
    root, _, _ = tree
    with pytest.raises(Refused):
        root.read_text(rel, follow=True)


def test_a_fifo_is_refused_without_hanging(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    os.mkfifo(inside / "memory/MEMORY.md")
    done = threading.Event()

    def read() -> None:
        with pytest.raises(Refused, match="not a regular file"):
            root.read_text("memory/MEMORY.md")
        done.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert done.wait(5), "reading a FIFO blocked the host"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
def test_a_device_is_never_opened(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    os.mknod(inside / "memory/MEMORY.md", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
    with pytest.raises(Refused, match="not a regular file"):
        root.read_bytes("memory/MEMORY.md")


def test_reads_are_capped_head_or_tail(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    (inside / "big.md").write_text("é" * 3000)  # 6000 bytes
    head = root.read_text("big.md", limit=1001)
    tail = root.read_text("big.md", limit=1001, tail=True)
    assert head == "é" * 500 and tail == "é" * 500


def test_write_replaces_a_symlink_instead_of_following_it(tree: tuple[Root, Path, Path]) -> None:
    root, inside, secret = tree
    (inside / "memory/MEMORY.md").symlink_to(secret)
    root.write_text("memory/MEMORY.md", "mine")
    assert secret.read_text() == "TOP-SECRET"
    assert not (inside / "memory/MEMORY.md").is_symlink()
    assert (inside / "memory/MEMORY.md").read_text() == "mine"


def test_write_never_keeps_set_id_bits(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    target = inside / "memory/tool"
    target.write_text("x")
    os.chmod(target, 0o6755 | stat.S_ISVTX)
    root.write_text("memory/tool", "#!/bin/sh\nid\n")
    st = target.stat()
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert root.read_text("memory/tool").startswith("#!")


def test_write_replaces_a_hard_link_instead_of_writing_through(tree: tuple[Root, Path, Path],
                                                               tmp_path: Path) -> None:
    root, inside, secret = tree
    os.link(secret, inside / "memory/linked.md")
    root.write_text("memory/linked.md", "new")
    assert secret.read_text() == "TOP-SECRET"
    assert (inside / "memory/linked.md").read_text() == "new"


def test_write_through_a_symlinked_folder_is_refused(tree: tuple[Root, Path, Path]) -> None:
    root, inside, secret = tree
    (inside / "outbox").symlink_to(secret.parent)
    with pytest.raises(Refused):
        root.write_text("outbox/planted.md", "x")
    assert not (secret.parent / "planted.md").exists()


def test_write_leaves_no_temp_file_and_sets_owner(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    root.write_text("a/b/c.md", "deep", owner=(os.getuid(), os.getgid()))
    assert (inside / "a/b/c.md").read_text() == "deep"
    assert sorted(p.name for p in (inside / "a/b").iterdir()) == ["c.md"]


def test_exclusive_write_refuses_an_existing_name(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    (inside / "x.md").symlink_to("/nonexistent")
    with pytest.raises(Refused, match="already there"):
        root.write_text("x.md", "y", exclusive=True)


def test_append_to_a_plain_log_appends(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    assert root.append_text("memory/daily/d.md", "one\n", header="# d\n") is None
    assert root.append_text("memory/daily/d.md", "two\n", header="# d\n") is None
    assert (inside / "memory/daily/d.md").read_text() == "# d\none\ntwo\n"


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo", "setuid"])
def test_append_never_writes_through_a_planted_log(tree: tuple[Root, Path, Path],
                                                   plant: str) -> None:
    root, inside, secret = tree
    log = inside / "memory/daily/d.md"
    log.parent.mkdir(parents=True)
    if plant == "symlink":
        log.symlink_to(secret)
    elif plant == "hardlink":
        os.link(secret, log)
    elif plant == "fifo":
        os.mkfifo(log)
    else:
        log.write_text("old\n")
        os.chmod(log, 0o4755)
    note = root.append_text("memory/daily/d.md", "entry\n", header="# d\n")
    assert note and "replaced" in note
    assert secret.read_text() == "TOP-SECRET"
    st = os.lstat(log)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert log.read_text() == "# d\nentry\n"


def test_ensure_dir_replaces_a_symlink_to_elsewhere(tree: tuple[Root, Path, Path]) -> None:
    root, inside, secret = tree
    (inside / "inbox").mkdir()
    (inside / "inbox/.done").symlink_to(secret.parent)
    note = root.ensure_dir("inbox/.done")
    assert note and "symlink" in note
    assert (inside / "inbox/.done").is_dir() and not (inside / "inbox/.done").is_symlink()
    assert secret.exists()


def test_rename_stays_beneath_and_never_clobbers(tree: tuple[Root, Path, Path]) -> None:
    root, inside, _ = tree
    (inside / "inbox/.done").mkdir(parents=True)
    (inside / "inbox/a.txt").write_text("a")
    (inside / "inbox/.done/a.txt").write_text("older")
    with pytest.raises(FileExistsError):
        root.rename("inbox/a.txt", "inbox/.done/a.txt")
    root.rename("inbox/a.txt", "inbox/.done/a-2.txt")
    assert (inside / "inbox/.done/a-2.txt").read_text() == "a"
    assert (inside / "inbox/.done/a.txt").read_text() == "older"


def test_listdir_reports_kinds_without_following(tree: tuple[Root, Path, Path]) -> None:
    root, inside, secret = tree
    (inside / "cron").mkdir()
    (inside / "cron/a.md").write_text("x")
    (inside / "cron/b.md").symlink_to(secret)
    os.mkfifo(inside / "cron/c.md")
    (inside / "cron/d").mkdir()
    assert root.listdir("cron") == [("a.md", "file"), ("b.md", "link"), ("c.md", "other"),
                                    ("d", "dir")]


def test_a_symlink_swap_race_never_escapes(tree: tuple[Root, Path, Path]) -> None:
    """A racer flips `memory/x` between a folder and a symlink to outside while agentd writes
    beneath it: no write ever lands outside."""
    root, inside, secret = tree
    outside = secret.parent / "outside"
    outside.mkdir()
    stop = threading.Event()

    def racer() -> None:
        link, real = inside / "memory/x", inside / "memory/x.real"
        real.mkdir()
        while not stop.is_set():
            try:
                link.symlink_to(outside)
                link.unlink()
                real.rename(link)
                link.rename(real)
            except OSError:
                pass

    t = threading.Thread(target=racer)
    t.start()
    try:
        for i in range(300):
            with contextlib.suppress(OSError):
                root.write_text(f"memory/x/f{i}.md", "x")
    finally:
        stop.set()
        t.join()
    assert list(outside.iterdir()) == []
