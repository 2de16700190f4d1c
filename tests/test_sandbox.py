"""The bash sandbox: the exact bwrap argv, and real bubblewrap against the attacks it must stop.

The real tests skip only when bwrap is missing; on dev machines and in CI it is installed.
All traffic stays on loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import requires_bwrap, requires_root_bwrap, sandbox_workdir

from agentd.tools import SandboxSettings, ToolContext, ToolResult
from agentd.tools import bwrap as bw
from agentd.tools import owner as own
from agentd.tools import sandbox as sb
from agentd.tools.bash import HARD_CAP_BYTES, effective_timeout, format_output, run_bash

SECRET = "sk-test-SECRETVALUE123"
SIZE = str(256 * 1024 * 1024)  # every tmpfs is capped at tmp_size_mb
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    """A home with the protected paths present, and a separate workdir; both under /tmp."""
    home = (tmp_path / "home").resolve()
    (home / ".git" / "hooks").mkdir(parents=True)
    (home / "agentd.toml").write_text("model = 'x'\n")
    return ToolContext(home=home, workdir=sandbox_workdir(tmp_path / "work"))


def run(ctx: ToolContext, command: str, timeout: float | None = None) -> ToolResult:
    return asyncio.run(run_bash(ctx, command, timeout))


# --- (a) the argv, exactly ------------------------------------------------------------------


def test_bwrap_argv_is_pinned(ctx: ToolContext) -> None:
    h, w = str(ctx.home), str(ctx.workdir)
    assert bw.bwrap_argv(ctx, "echo hi", seccomp_fd=7) == [
        "/usr/bin/bwrap",
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--clearenv",
        "--setenv", "PATH", PATH,
        "--setenv", "HOME", w,
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "LC_ALL", "C.UTF-8",
        "--setenv", "TERM", "dumb",
        "--setenv", "TMPDIR", "/tmp",
        "--setenv", "AGENTD_HOME", h,
        "--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev",
        "--size", SIZE, "--tmpfs", "/dev/shm", "--proc", "/proc",
        "--size", SIZE, "--tmpfs", "/home", "--size", SIZE, "--tmpfs", "/root",
        "--size", SIZE, "--tmpfs", "/run", "--size", SIZE, "--tmpfs", "/var/tmp",
        "--size", SIZE, "--tmpfs", "/tmp",
        "--bind", h, h, "--bind", w, w,
        "--ro-bind", f"{h}/.git", f"{h}/.git",
        "--ro-bind", f"{h}/agentd.toml", f"{h}/agentd.toml",
        "--size", SIZE, "--tmpfs", f"{h}/.agentd", "--remount-ro", f"{h}/.agentd",
        "--seccomp", "7",
        "--chdir", w, "--", "/bin/bash", "-c", "echo hi",
    ]  # fmt: skip


def test_binds_come_after_the_tmpfs_masks(ctx: ToolContext) -> None:
    argv = bw.bwrap_argv(ctx, "true", bwrap="/opt/bwrap", seccomp_fd=3)
    assert argv[0] == "/opt/bwrap"
    last_mask = next(i for i, a in enumerate(argv) if argv[i - 1 : i + 1] == ["--tmpfs", "/tmp"])
    binds = [i for i, a in enumerate(argv) if a == "--bind"]
    protections = [i for i, a in enumerate(argv)
                   if a in ("--ro-bind", "--remount-ro") and i > last_mask]
    assert last_mask < min(binds) and max(binds) < min(protections)
    assert max(protections) < argv.index("--seccomp") < argv.index("--chdir") < argv.index("--")
    assert argv[argv.index("--") :] == ["--", "/bin/bash", "-c", "true"]


def test_missing_protected_paths_are_masked_too(tmp_path: Path) -> None:
    home, work = tmp_path / "h", sandbox_workdir(tmp_path / "w")
    home.mkdir()
    bare = ToolContext(home=home, workdir=work)
    argv = bw.bwrap_argv(bare, "true", seccomp_fd=3)
    start = argv.index("--bind") + 6  # past `--bind h h --bind w w`
    assert argv[start - 6 : start] == ["--bind", str(home), str(home), "--bind", str(work),
                                       str(work)]
    assert argv[start : argv.index("--seccomp")] == [
        "--size", SIZE, "--tmpfs", f"{home}/.git", "--remount-ro", f"{home}/.git",
        "--ro-bind", "/dev/null", f"{home}/agentd.toml",
        "--size", SIZE, "--tmpfs", f"{home}/.agentd", "--remount-ro", f"{home}/.agentd",
    ]  # fmt: skip
    (home / ".agentd").mkdir()
    argv = bw.bwrap_argv(bare, "true", seccomp_fd=3)
    assert argv[argv.index(f"{home}/.agentd") - 1] == "--ro-bind"


def test_a_symlinked_protected_path_is_refused(ctx: ToolContext) -> None:
    (ctx.home / "agentd.toml").unlink()
    (ctx.home / "agentd.toml").symlink_to(ctx.workdir / "evil.toml")
    with pytest.raises(ValueError, match="symlink"):
        bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    reason = sb.check_sandbox(ctx)
    assert reason is not None and "agentd.toml is a symlink" in reason


def test_every_tmpfs_is_capped_by_tmp_size(ctx: ToolContext, tmp_path: Path) -> None:
    ctx.sandbox.tmp_size_mb = 8
    bare = ToolContext(home=tmp_path / "bare", workdir=tmp_path / "bare",
                       sandbox=ctx.sandbox)  # missing .git/.agentd: tmpfs mount points
    for c in (ctx, bare):
        argv = bw.bwrap_argv(c, "true", seccomp_fd=3)
        tmpfs = [i for i, a in enumerate(argv) if a == "--tmpfs"]
        assert len(tmpfs) >= 7  # /dev/shm, 4 masks, /tmp, .agentd (and .git when missing)
        for i in tmpfs:  # bwrap's --size applies to the next --tmpfs only
            assert argv[i - 2 : i] == ["--size", str(8 * 1024 * 1024)], argv[i + 1]
        assert argv.count("--size") == len(tmpfs)


def test_environments_are_allow_lists(ctx: ToolContext) -> None:
    assert sb.launcher_env() == {"PATH": PATH}
    assert bw.sandbox_env(ctx) == {
        "PATH": PATH, "HOME": str(ctx.workdir), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "TERM": "dumb", "TMPDIR": "/tmp", "AGENTD_HOME": str(ctx.home),
    }  # fmt: skip


def test_unknown_mode_refuses(ctx: ToolContext) -> None:
    ctx.sandbox.mode = "landlock"
    result = run(ctx, "touch ran")
    assert result.is_error and "unknown sandbox mode 'landlock'" in result.content
    assert not (ctx.workdir / "ran").exists()


def test_format_output_passes_short_text_through() -> None:
    assert format_output(b"hello\n", 100) == "hello\n"
    assert format_output(b"", 100) == ""


def test_format_output_keeps_head_and_tail() -> None:
    raw = b"".join(b"line %03d\n" % i for i in range(100))  # 9 bytes a line
    out = format_output(raw, 36)
    assert out.startswith("line 000\nline 001\n")
    assert out.endswith("line 098\nline 099\n")
    assert "[... 864 bytes (96 lines) cut ...]\n" in out
    assert len(out) == 36 + len("[... 864 bytes (96 lines) cut ...]\n")


def test_format_output_never_crashes_on_bad_utf8() -> None:
    assert format_output(b"a\xff\xfeb", 100) == "a\ufffd\ufffdb"
    out = format_output(b"\xff" * 10 + "é".encode() * 10, 4)
    assert out.startswith("\ufffd\ufffd\n[... 24 bytes (0 lines) cut ...]\n")  # 8 + 8 x 2 bytes
    assert out.endswith("éé")
    assert format_output(b"abc", 0) == "[... 3 bytes (0 lines) cut ...]\n"


def test_effective_timeout_never_exceeds_the_setting(ctx: ToolContext) -> None:
    assert effective_timeout(ctx, None) == 120
    assert effective_timeout(ctx, 5) == 5
    assert effective_timeout(ctx, 1000) == 120
    ctx.sandbox.timeout = 0
    assert effective_timeout(ctx, None) == 120


# --- (b) real bubblewrap --------------------------------------------------------------------


@requires_bwrap
def test_only_home_and_workdir_are_writable(ctx: ToolContext, tmp_path: Path) -> None:
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (ctx.workdir / "out").symlink_to(sibling)
    result = run(
        ctx,
        f"""
        touch /etc/x || echo ETC-DENIED
        touch /usr/x || echo USR-DENIED
        touch {sibling}/x || echo SIBLING-DENIED
        touch out/x || echo SYMLINK-DENIED
        touch ~/w-ok "$AGENTD_HOME/h-ok" /tmp/t-ok && echo WROTE
    """,
    )
    for word in ("ETC", "USR", "SIBLING", "SYMLINK"):
        assert f"{word}-DENIED" in result.content
    assert "WROTE" in result.content and "Read-only file system" in result.content
    assert not Path("/etc/x").exists() and not Path("/usr/x").exists()
    assert list(sibling.iterdir()) == []
    assert (ctx.workdir / "w-ok").exists() and (ctx.home / "h-ok").exists()


@requires_bwrap
def test_protected_paths_in_the_home_are_read_only(ctx: ToolContext) -> None:
    result = run(
        ctx,
        """
        cd "$AGENTD_HOME"
        touch .git/hooks/pre-commit || echo HOOK-DENIED
        echo 'sandbox = "off"' >> agentd.toml || echo TOML-DENIED
        mv .git moved || echo MV-DENIED
        touch notes.md && echo NOTES-OK
    """,
    )
    for word in ("HOOK-DENIED", "TOML-DENIED", "MV-DENIED", "NOTES-OK"):
        assert word in result.content
    assert not (ctx.home / ".git" / "hooks" / "pre-commit").exists()
    assert (ctx.home / "agentd.toml").read_text() == "model = 'x'\n"
    assert (ctx.home / ".git").is_dir()


@requires_bwrap
def test_no_network_even_to_host_loopback(ctx: ToolContext, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    bash = run(ctx, f"echo hi > /dev/tcp/127.0.0.1/{port}")
    assert bash.is_error
    py = run(
        ctx, f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\""
    )
    assert py.is_error and "ConnectionRefusedError" in py.content
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever reached the host


@requires_bwrap
def test_secrets_of_the_daemon_are_invisible(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    result = run(ctx, "env; cat /proc/1/environ /proc/1/cmdline; echo; echo DONE")
    assert "DONE" in result.content and "--clearenv" in result.content  # really read pid 1
    assert SECRET not in result.content and "OPENAI_API_KEY" not in result.content


@requires_bwrap
def test_no_privilege_to_escape(ctx: ToolContext) -> None:
    result = run(
        ctx,
        """
        mount -o remount,rw / && echo REMOUNTED
        mount -o remount,bind,rw / && echo REMOUNTED
        unshare -U true && echo NESTED-USERNS
        grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
        touch /x 2>/dev/null || echo ROOT-RO
    """,
    )
    assert "REMOUNTED" not in result.content and "NESTED-USERNS" not in result.content
    assert "CapEff:\t0000000000000000" in result.content
    assert "NoNewPrivs:\t1" in result.content and "ROOT-RO" in result.content


@requires_bwrap
def test_host_homes_are_empty_tmpfs(ctx: ToolContext) -> None:
    result = run(ctx, "for d in /root /home /run /var/tmp; do stat -f -c %T $d; ls -A $d; done")
    assert result.content.split() == ["tmpfs"] * 4


@requires_bwrap
def test_timeout_leaves_no_process_behind(ctx: ToolContext) -> None:
    a, b, c, d = (_unique_sleep() for _ in range(4))
    start = time.monotonic()
    result = run(ctx, f"sleep {a} & setsid sleep {b} & nohup sleep {c} >/dev/null & sleep {d}", 1)
    assert time.monotonic() - start < 5
    assert result.is_error and result.content.endswith(
        "[timed out after 1 s: the command was killed]"
    )
    assert not any(_survivors(f"sleep {s}") for s in (a, b, c, d))


def _unique_sleep() -> str:
    """A sleep duration of about 100 s that no other process on the machine runs."""
    return f"100.{os.getpid()}{next(_counter)}"


_counter = itertools.count(1000)


def _survivors(pattern: str, wait: float = 10.0) -> bool:
    """pgrep for `pattern` on the host, allowing the kernel time to finish the kills (it
    returns as soon as none is left: the deadline only matters on a loaded machine)."""
    deadline = time.monotonic() + wait
    while subprocess.run(["pgrep", "-f", re.escape(pattern)],
                         capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)
    return False


@requires_bwrap
@pytest.mark.parametrize("command", ["yes | head -c 50000000", "yes"])
def test_endless_output_is_cut_and_killed(ctx: ToolContext, command: str) -> None:
    start = time.monotonic()
    result = run(ctx, command, timeout=10)
    assert time.monotonic() - start < 5
    assert result.is_error and "the command was killed" in result.content
    assert "bytes (" in result.content and "lines) cut ...]" in result.content
    assert len(result.content) < ctx.sandbox.output_limit + 200
    cut = int(result.content.split("[... ")[1].split(" bytes")[0])
    assert cut == HARD_CAP_BYTES - ctx.sandbox.output_limit


@requires_bwrap
def test_output_details(ctx: ToolContext) -> None:
    assert run(ctx, "printf 'a\\xff\\xfeb'").content == "a\ufffd\ufffdb"
    assert run(ctx, "echo out; echo err >&2").content == "out\nerr\n"
    ok = run(ctx, "true")
    assert ok == ToolResult("(no output)", is_error=False)
    failed = run(ctx, "echo nope; exit 2")
    assert failed == ToolResult("nope\n[exit code 2]", is_error=True)


def test_mode_off_runs_without_bwrap(ctx: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sb, "find_bwrap", lambda: None)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    ctx.sandbox = SandboxSettings(mode="off")
    result = run(ctx, "pwd; echo $HOME; env | grep -c OPENAI; touch $AGENTD_HOME/.git/hooks/x")
    assert result.content == f"{ctx.workdir}\n{ctx.workdir}\n0\n"
    assert (ctx.home / ".git" / "hooks" / "x").exists()  # really unsandboxed


def test_mode_off_timeout_kills_the_group(ctx: ToolContext) -> None:
    ctx.sandbox.mode = "off"
    a, b = _unique_sleep(), _unique_sleep()
    result = run(ctx, f"sleep {a} & sleep {b}", timeout=0.5)
    assert result.is_error and "timed out after 0.5 s" in result.content
    assert not _survivors(f"sleep {a}") and not _survivors(f"sleep {b}")


def test_missing_bwrap_refuses(ctx: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sb, "find_bwrap", lambda: None)
    result = run(ctx, "touch ran")
    assert result.is_error and "apt-get install bubblewrap" in result.content
    assert 'sandbox = "off"' in result.content and "--no-sandbox" in result.content
    assert not (ctx.workdir / "ran").exists()


def test_broken_bwrap_refuses(ctx: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sb, "find_bwrap", lambda: "/bin/false")
    reason = sb.check_sandbox(ctx)
    assert reason == "bubblewrap (/bin/false) failed a trivial launch (exit 1): no message"
    result = run(ctx, "touch ran")
    assert result.is_error and "failed a trivial launch" in result.content
    assert not (ctx.workdir / "ran").exists()


@requires_bwrap
def test_check_sandbox_passes_on_a_working_install(ctx: ToolContext) -> None:
    assert sb.check_sandbox(ctx) is None
    ctx.sandbox.mode = "off"
    assert sb.check_sandbox(ctx) is None


def test_find_bwrap_prefers_usr_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.access("/usr/bin/bwrap", os.X_OK):
        assert sb.find_bwrap() == "/usr/bin/bwrap"
    monkeypatch.setattr(os, "access", lambda *_: False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert sb.find_bwrap() is None



# --- (c) the unprivileged sandbox: owner, reach, hand-over ----------------------------------


def test_resolve_owner_takes_numbers_and_names() -> None:
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    assert own.resolve_owner(65534) == (65534, nobody.pw_gid)
    assert own.resolve_owner("nobody") == (nobody.pw_uid, nobody.pw_gid)
    assert own.resolve_owner("65534", "nogroup") == (65534, grp.getgrnam("nogroup").gr_gid)
    assert own.resolve_owner(4242) == (4242, 4242)  # no passwd entry: the same number
    assert own.resolve_owner(4242, 77) == (4242, 77)
    for bad, message in (((0,), "must not be 0"), (("root",), "must not be 0"),
                         ((65534, 0), "sandbox.gid must not be 0"),
                         (("no-such-user-x",), "no user named"),
                         ((65534, "no-such-group-x"), "no group named"),
                         ((2**32,), "out of range")):
        with pytest.raises(ValueError, match=message):
            own.resolve_owner(*bad)


def test_sandbox_owner_only_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    s = SandboxSettings(uid="nobody", gid=123)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert own.sandbox_owner(s) is None
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert own.sandbox_owner(s) == (65534, 123)
    assert own.sandbox_owner(SandboxSettings(mode="off")) is None


def test_config_accepts_uid_and_gid() -> None:
    from agentd.config import parse_settings
    from agentd.errors import AgentdError

    s = parse_settings({"sandbox": {"uid": "nobody", "gid": 65534}}).sandbox
    assert (s.uid, s.gid) == ("nobody", 65534)
    assert parse_settings({}).sandbox.uid == 65534
    with pytest.raises(AgentdError, match="no user named 'nosuchuserx'"):
        parse_settings({"sandbox": {"uid": "nosuchuserx"}})
    with pytest.raises(AgentdError, match=r"sandbox\.uid must be a number or name"):
        parse_settings({"sandbox": {"uid": 1.5}})


def test_reach_plan_covers_the_topmost_folder_the_uid_cannot_search(tmp_path: Path) -> None:
    private = tmp_path / "private"
    (private / "deep" / "home" / "work").mkdir(parents=True)
    private.chmod(0o700)
    (private / "deep").chmod(0o700)
    os.chown(private, 0, 0)
    home, work = private / "deep" / "home", private / "deep" / "home" / "work"
    plan = own.reach_plan([home, work, tmp_path], (4242, 4242))
    blocked = next(str(p) for p in [*reversed(tmp_path.parents), tmp_path, private]
                   if not own.can_search(p, (4242, 4242)))
    if blocked == str(private):
        assert plan == [(str(private), [str(home)])]  # work comes along inside home
    else:  # pytest's own 0700 folder comes first: everything below it, bound back
        assert plan == [(blocked, [str(tmp_path)])]
    assert own.reach_plan([Path("/usr/share")], (4242, 4242)) == []


@pytest.fixture
def opt_private() -> Iterator[Path]:
    """A 0700 root folder outside every tmpfs mask (as /srv/agentd or /root would be)."""
    folder = Path("/opt") / f"agentd-private-{os.getpid()}-{next(_counter)}"
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@requires_root_bwrap
def test_a_home_under_a_private_root_folder_is_reached_and_its_siblings_stay_hidden(
        opt_private: Path) -> None:
    home = opt_private / "home"
    (home / ".git").mkdir(parents=True)
    (opt_private / "sibling-secret.txt").write_text("SIBLING\n")
    ctx = ToolContext(home=home, workdir=home)
    assert own.reach_plan([home], own.sandbox_owner(ctx.sandbox) or (0, 0)) == [
        (str(opt_private), [str(home)])]
    r = run(ctx, f"id -u; ls -A {opt_private}; cat {opt_private}/sibling-secret.txt; "
                 "echo made > notes.md && cat notes.md")
    assert r.content.splitlines()[:2] == ["65534", "home"], r.content
    assert "No such file or directory" in r.content and "SIBLING" not in r.content
    assert (home / "notes.md").read_text() == "made\n"
    assert (home / "notes.md").stat().st_uid == 65534
    assert sorted(p.name for p in opt_private.iterdir()) == ["home", "sibling-secret.txt"]


@requires_root_bwrap
def test_hand_over_gives_the_tree_but_keeps_the_runtimes_own(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for d in (".git/hooks", ".agentd/sessions", "memory/daily", "outbox"):
        (home / d).mkdir(parents=True)
    (home / "agentd.toml").write_text("")
    (home / "memory" / "MEMORY.md").write_text("m\n")
    setuid = home / "memory" / "tool"
    setuid.write_text("x")
    setuid.chmod(0o4755)
    setgid_dir = home / "memory" / "shared"
    setgid_dir.mkdir()
    setgid_dir.chmod(0o2775)
    outside = tmp_path / "outside.txt"  # root's, linked to from inside in two ways
    outside.write_text("root's\n")
    (home / "memory" / "link").symlink_to(outside)
    os.link(outside, home / "memory" / "hard")
    os.mknod(home / "memory" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    ctx = ToolContext(home=home, workdir=home)
    assert sb.hand_over(ctx) == [] and ctx.handed_over
    after = _tree(home)
    nobody = (65534, 65534)
    for name in ("memory", "memory/MEMORY.md", "memory/daily", "outbox", "memory/tool",
                 "memory/shared", "memory/link"):
        assert after[name][:2] == nobody, name
    for name in (".git", ".git/hooks", ".agentd", ".agentd/sessions", "agentd.toml",
                 "memory/hard", "memory/null"):
        assert after[name][:2] == (0, 0), name  # runtime's own, a hard link, a device
    assert not after["memory/tool"][2] & 0o6000 and not after["memory/shared"][2] & 0o6000
    assert (outside.stat().st_uid, outside.stat().st_nlink) == (0, 2)  # never followed
    st = home.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7070) == (0, 65534, 0o070)
    (home / "memory" / "late.md").write_text("root wrote this\n")
    assert sb.hand_over(ctx) == [] and (home / "memory" / "late.md").stat().st_uid == 0
    ctx.handed_over = False  # a new turn (a fresh ToolContext) hands over again
    sb.hand_over(ctx)
    assert (home / "memory" / "late.md").stat().st_uid == 65534


@requires_root_bwrap
def test_untrusted_hand_over_touches_only_outbox_and_scratch(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "memory").mkdir(parents=True)
    (home / "outbox").mkdir()
    (home / "outbox" / "old.md").write_text("x")
    ctx = ToolContext(home=home, workdir=home, profile="untrusted")
    try:
        sb.hand_over(ctx)
        assert ctx.scratch is not None and ctx.scratch.stat().st_uid == 65534
        assert (home / "outbox" / "old.md").stat().st_uid == 65534
        assert (home / "memory").stat().st_uid == 0 and home.stat().st_uid == 0
        assert (home / ".agentd").stat().st_uid == 0  # created as root, not left to bwrap
    finally:
        if ctx.scratch is not None:
            shutil.rmtree(ctx.scratch)


def test_nothing_is_handed_over_when_not_root(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    home = tmp_path / "home"
    home.mkdir()
    before = home.stat()
    ctx = ToolContext(home=home, workdir=tmp_path)
    assert sb.hand_over(ctx) == [] and not ctx.handed_over
    assert home.stat() == before and bw.workdir_writable(ctx)


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """path → (uid, gid, mode) of everything under root, symlinks not followed."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = Path(folder, name).lstat()
            out[str(Path(folder, name).relative_to(root))] = (st.st_uid, st.st_gid, st.st_mode)
    return out
