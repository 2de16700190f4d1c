"""§9 attacks 8-11 (security.md): exhausting processes, output, time, memory and disk.
Every limit here is set small so the attack ends in seconds and can't hurt the machine."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from attack import marker, requires_bwrap, run_attack, set_sandbox, survivors
from fakellm import FakeLLM

from agentd.tools import limits

pytestmark = requires_bwrap


def _cgroups_left() -> list[str]:
    """This process's command cgroups still there (other agentd processes on the machine,
    e.g. a parallel test run, have their own: agentd-<their pid>-N)."""
    base = limits.pids_base()
    mine = f"agentd-{os.getpid()}-"
    return [p.name for p in base.iterdir() if p.name.startswith(mine)] if base else []


def test_8_fork_bomb_is_bounded(fake: FakeLLM, home: Path, workdir: Path) -> None:
    # Refuse to run a fork bomb this host can't bound (root without a pids cgroup).
    status = {r.name: r for r in limits.limits_status()}["processes"]
    assert status.enforced, status.how
    set_sandbox(home, processes=50, timeout=4)
    tag = marker()
    (workdir / f"{tag}.sh").write_text("b() { b | b & }; b\n")
    started = time.monotonic()
    a = run_attack(fake, home, workdir, f"bash {tag}.sh; sleep 2; ps -e --no-headers | wc -l",
                   "echo still-working")
    assert time.monotonic() - started < 15
    assert "Resource temporarily unavailable" in a.results[0]
    assert a.results[1] == "still-working\n"  # the next command runs normally
    assert survivors(tag) == [] and _cgroups_left() == []


def test_9_endless_output_is_cut(fake: FakeLLM, home: Path, workdir: Path) -> None:
    started = time.monotonic()
    a = run_attack(fake, home, workdir, "head -c 100000000 /dev/zero | tr '\\0' a",
                   "yes")
    assert time.monotonic() - started < 10
    for text in a.results:
        assert len(text) < 31_000 and "the command was killed" in text and "cut ...]" in text
    assert a.errors == [True, True]


def test_10_sleepers_and_escapees_die_at_the_timeout(fake: FakeLLM, home: Path,
                                                     workdir: Path) -> None:
    set_sandbox(home, timeout=2)
    tags = [f"1000.{marker()[-6:]}{i}" for i in range(3)]  # unique sleep durations
    started = time.monotonic()
    a = run_attack(fake, home, workdir,
                   f"setsid sleep {tags[0]} & nohup sleep {tags[1]} >/dev/null 2>&1 & "
                   f"(trap '' HUP TERM; sleep {tags[2]}) & disown -a; sleep 1000")
    assert time.monotonic() - started < 10
    assert "timed out after 2 s" in a.results[0]
    for tag in tags:
        assert survivors(f"sleep {tag}") == []
    assert _cgroups_left() == []


def test_11_memory_hog_big_file_and_full_tmp(fake: FakeLLM, home: Path, workdir: Path) -> None:
    set_sandbox(home, memory_mb=256, file_size_mb=16, tmp_size_mb=8)
    free_before = shutil.disk_usage(workdir).free
    a = run_attack(fake, home, workdir,
                   "python3 -c 'b = bytearray(1 << 30)' 2>&1 | tail -1",
                   "head -c 10G /dev/zero > big; echo rc=$?; ls -l big",
                   "head -c 64M /dev/zero > /tmp/fill; echo rc=$?; df -m /tmp | tail -1")
    assert "MemoryError" in a.results[0]
    assert "File size limit exceeded" in a.results[1] and "rc=153" in a.results[1]
    assert (workdir / "big").stat().st_size == 16 * 1024 * 1024
    assert "No space left on device" in a.results[2] and "rc=1" in a.results[2]
    assert free_before - shutil.disk_usage(workdir).free < 64 * 1024 * 1024
