"""The profiles and the network setting, as bwrap command lines (the real attacks against
them are in tests/security/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import sandbox_workdir

from agentd.tools import ToolContext
from agentd.tools import bwrap as bw
from agentd.tools import sandbox as sb


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    home = (tmp_path / "home").resolve()
    (home / ".git").mkdir(parents=True)
    return ToolContext(home=home, workdir=sandbox_workdir(tmp_path / "work"))



def test_network_full_shares_the_net_and_is_warned(ctx: ToolContext) -> None:
    assert "--share-net" not in bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    assert sb.turn_warnings(ctx.sandbox) == []
    ctx.sandbox.network = "full"
    argv = bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    assert argv[1:5] == ["--unshare-all", "--unshare-user", "--disable-userns", "--share-net"]
    assert sb.turn_warnings(ctx.sandbox) == [
        'sandbox network is "full": commands can reach this host\'s network and the internet']
    ctx.sandbox.network = "everything"
    with pytest.raises(ValueError, match="unknown sandbox network 'everything'"):
        bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    ctx.sandbox.mode = "off"
    assert sb.turn_warnings(ctx.sandbox) == ["sandbox is off: bash runs unsandboxed on this host"]


def test_profiles_choose_the_writable_binds(ctx: ToolContext, tmp_path: Path) -> None:
    h, w = str(ctx.home), str(ctx.workdir)
    ctx.profile, ctx.scratch = "untrusted", tmp_path / "scratch"
    ctx.scratch.mkdir()
    (ctx.home / "outbox").mkdir()
    (ctx.home / ".agentd").mkdir()
    argv = bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    binds = argv[argv.index("/tmp", argv.index("/var/tmp")) + 1 : argv.index("--seccomp")]
    hide = ["--size", str(256 << 20), "--tmpfs", f"{h}/.agentd", "--remount-ro", f"{h}/.agentd"]
    assert binds == ["--ro-bind", h, h, "--ro-bind", w, w,
                     "--bind", f"{h}/outbox", f"{h}/outbox",
                     "--bind", str(ctx.scratch), str(ctx.scratch), *hide]
    assert bw.sandbox_env(ctx)["HOME"] == str(ctx.scratch)
    assert bw.hidden_paths(ctx) == [ctx.home / ".agentd"]
    ctx.profile = "readonly"
    argv = bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    assert argv[argv.index("/tmp", argv.index("/var/tmp")) + 1 : argv.index("--seccomp")] == [
        "--ro-bind", h, h, "--ro-bind", w, w, *hide]
    assert bw.sandbox_env(ctx)["HOME"] == "/tmp"
    ctx.profile = "trusted"  # sees it, read-only
    argv = bw.bwrap_argv(ctx, "true", seccomp_fd=3)
    assert argv[argv.index(f"{h}/.agentd") - 1] == "--ro-bind" and bw.hidden_paths(ctx) == []
