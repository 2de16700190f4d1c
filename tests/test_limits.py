"""Per-command limits: the rlimits computed from settings, the pids cgroup's life cycle, and
what `limits_status()` claims about this host (checked against the real thing)."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
from pathlib import Path

import pytest
from conftest import requires_bwrap, requires_root_bwrap

from agentd.config import parse_settings
from agentd.errors import AgentdError
from agentd.tools import SandboxSettings, ToolContext
from agentd.tools import limits as lim
from agentd.tools.bash import run_bash


def test_rlimits_follow_settings() -> None:
    s = SandboxSettings(cpu_seconds=7, memory_mb=100, file_size_mb=3, open_files=64)
    got = dict(lim.rlimits(s, cgroup=True))
    assert got[resource.RLIMIT_CORE] == 0
    assert got[resource.RLIMIT_CPU] == 7
    assert got[resource.RLIMIT_AS] == 100 * lim.MIB
    assert got[resource.RLIMIT_FSIZE] == 3 * lim.MIB
    assert got[resource.RLIMIT_NOFILE] == min(64, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    assert resource.RLIMIT_NPROC not in got  # the cgroup counts processes instead


def test_zero_means_no_limit() -> None:
    s = SandboxSettings(cpu_seconds=0, memory_mb=0, file_size_mb=0, open_files=0)
    assert dict(lim.rlimits(s, cgroup=True)) == {resource.RLIMIT_CORE: 0}


def test_nproc_fallback_only_for_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert resource.RLIMIT_NPROC not in dict(lim.rlimits(SandboxSettings(), cgroup=False))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(lim, "_user_tasks", lambda uid=None: 40)
    got = dict(lim.rlimits(SandboxSettings(processes=10), cgroup=False))
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    assert got[resource.RLIMIT_NPROC] == (50 if hard == resource.RLIM_INFINITY else min(50, hard))
    # agentd as root dropping to the sandbox uid: that uid's tasks are what counts
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    counted: list[int | None] = []
    monkeypatch.setattr(lim, "_user_tasks", lambda uid=None: counted.append(uid) or 5)
    got = dict(lim.rlimits(SandboxSettings(processes=10), cgroup=False, uid=65534))
    assert counted == [65534] and got[resource.RLIMIT_NPROC] == min(15, hard)
    assert resource.RLIMIT_NPROC not in dict(lim.rlimits(SandboxSettings(), cgroup=True,
                                                         uid=65534))


def test_settings_are_validated() -> None:
    s = parse_settings({"sandbox": {"memory_mb": 512, "processes": 0, "network": "full"}})
    assert (s.sandbox.memory_mb, s.sandbox.processes, s.sandbox.network) == (512, 0, "full")
    for bad, message in (({"processes": -1}, "sandbox.processes must not be negative"),
                         ({"network": "allowlist"}, "needs sandbox.allow_domains"),
                         ({"network": "some"}, 'must be "none", "allowlist" or "full"'),
                         ({"tmp_size_mb": 0}, "at least 1"),
                         ({"memory_mb": "1G"}, "sandbox.memory_mb must be a number")):
        with pytest.raises(AgentdError, match=message):
            parse_settings({"sandbox": bad})


def test_status_tells_the_truth_about_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {r.name: r for r in lim.limits_status(SandboxSettings(processes=9))}
    assert set(rows) >= {"wall time", "cpu time", "memory", "file size", "open files",
                         "processes", "core dumps", "output"}
    procs = rows["processes"]
    if lim.pids_base() is not None:
        assert procs.enforced and "pids cgroup" in procs.how
    monkeypatch.setattr(lim, "pids_base", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    procs = {r.name: r for r in lim.limits_status()}["processes"]  # root: drops to nobody
    assert procs.enforced and "more than uid 65534 runs now (RLIMIT_NPROC)" in procs.how
    off = SandboxSettings(mode="off")  # root, unsandboxed: nothing counts its processes
    procs = {r.name: r for r in lim.limits_status(off)}["processes"]
    assert not procs.enforced and "NOT enforced" in procs.how
    off = {r.name: r for r in lim.limits_status(SandboxSettings(memory_mb=0))}["memory"]
    assert not off.enforced


def test_this_root_host_has_a_pids_cgroup() -> None:
    """Research (security.md §7): cgroup v1 pids works on these machines. If this fails on
    a new host, `agentd doctor` must say processes are not enforced there."""
    if os.geteuid() != 0:
        assert resource.RLIMIT_NPROC in dict(lim.rlimits(SandboxSettings(), cgroup=False))
        return
    base = lim.pids_base()
    assert base is not None and (base / "cgroup.procs").exists()


@requires_bwrap
def test_cgroup_is_joined_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = lim.pids_base()
    if base is None:
        pytest.fail("no pids cgroup on this host (see test_this_root_host_has_a_pids_cgroup)")
    work = tmp_path / "w"
    work.mkdir()
    ctx = ToolContext(home=work, workdir=work, sandbox=SandboxSettings(processes=33))
    seen: list[tuple[Path, str]] = []  # only the cgroup this command got: other agentd
    real_open = lim.open_cgroup  # processes on the machine have theirs in the same place

    def spy(s: SandboxSettings) -> lim.PidsCgroup | None:
        cg = real_open(s)
        assert cg is not None and cg.path.parent == base
        assert cg.path.name.startswith(f"agentd-{os.getpid()}-")
        seen.append((cg.path, (cg.path / "pids.max").read_text().strip()))
        return cg

    monkeypatch.setattr(lim, "open_cgroup", spy)
    counts = (f"sleep 0.2 & sleep 0.2 & for d in {base}/agentd-{os.getpid()}-*; do "
              'echo "$(basename $d) $(cat $d/pids.current)"; done; wait; echo ok')
    result = asyncio.run(run_bash(ctx, counts, 10))
    [(path, limit)] = seen
    lines = dict(line.split() for line in result.content.splitlines()[:-1])
    assert result.content.split()[-1] == "ok" and limit == "33"
    assert int(lines[path.name]) >= 5  # bwrap x2, bash x3: the command is in its cgroup
    assert not path.exists()  # removed again


def test_close_kills_leftovers(tmp_path: Path) -> None:
    base = lim.pids_base()
    if base is None:
        pytest.fail("no pids cgroup on this host")
    cg = lim.PidsCgroup(base, 10)
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=lim.preexec([], cg.procs_fd))
    assert cg.pids() == [proc.pid]
    cg.close()
    assert proc.wait(5) == -9 and not cg.path.exists()


@requires_root_bwrap
def test_nproc_binds_the_sandbox_uid_where_there_is_no_cgroup(tmp_path: Path) -> None:
    """Root without a pids cgroup: RLIMIT_NPROC now holds, because the command runs as the
    sandbox uid (it is ignored for root). Spawned by hand with the real pieces, no cgroup."""
    from agentd.tools import owner
    from agentd.tools import sandbox as sb

    # A uid of its own: RLIMIT_NPROC counts every task of the uid on the machine, and other
    # agentd processes (a parallel test run) start and end commands as the default one.
    private = 3_000_000 + os.getpid() % 1_000_000
    s = SandboxSettings(processes=20, uid=private, gid=private)
    who = owner.sandbox_owner(s)
    assert who == (private, private)
    work = tmp_path / "w"
    work.mkdir()
    os.chown(work, private, private)
    rl = lim.rlimits(s, cgroup=False, uid=who[0])
    assert dict(rl)[resource.RLIMIT_NPROC] == min(
        20 + lim._user_tasks(who[0]), resource.getrlimit(resource.RLIMIT_NPROC)[1])
    script = ("import os, time\nn = 0\ntry:\n    while n < 200:\n        if os.fork() == 0:\n"
              "            time.sleep(30); os._exit(0)\n        n += 1\n"
              "except BlockingIOError:\n    print('stopped at', n)\n")
    (work / "bomb.py").write_text(script)
    launch = sb.prepare(ToolContext(home=work, workdir=work, sandbox=s), "python3 bomb.py",
                        with_limits=False)  # the drop only; the rlimits are added below
    assert launch.preexec is not None and launch.cgroup is None
    steps = [lim.preexec(rl, None), launch.preexec]
    try:
        out = subprocess.run(launch.argv, env=launch.env, capture_output=True, text=True,
                             timeout=60, pass_fds=launch.pass_fds,
                             preexec_fn=lambda: [step() for step in steps] and None)
    finally:
        launch.cleanup()
    assert out.stdout.startswith("stopped at "), (out.stdout, out.stderr)
    assert int(out.stdout.split()[-1]) <= 20
