"""Sandbox launch overhead: prints numbers, asserts nothing. `python bench/sandbox.py [N]`.

Medians over N runs (default 50) after a warm-up, each measured end to end:

- `/bin/true` spawned directly (the floor: fork + exec);
- a bare `bwrap --ro-bind / / --dev /dev --proc /proc --unshare-all true` (what bubblewrap
  itself costs here);
- our full bwrap command line (namespaces, masks, binds, protections, seccomp) via
  subprocess, without the rlimits/cgroup;
- `run_bash(ctx, "true")`: what one sandboxed bash tool call costs agentd, everything
  included (probe cache, seccomp memfd, rlimits, pids cgroup, output pipe, cleanup).

Target (issue B): the last one <= 30 ms on these 2-core machines.

As root, also the hand-over (agentd/tools/sandbox.hand_over, once per turn and again after
a host-side write): a home of 2,000 files in 100 folders, measured the first time (every
entry root's, so every one is chown'ed) and then in the steady state (nothing to change:
one lstat per entry), which is what a turn normally pays. `--with-sdks` first
imports the anthropic and openai SDKs, so the process is as large as during a real turn
(the rlimits/cgroup step needs fork + preexec instead of vfork, which costs more in a big
process).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from timing import median_ms  # noqa: E402

from agentd.tools import ToolContext, owner  # noqa: E402
from agentd.tools import sandbox as sb  # noqa: E402
from agentd.tools.bash import run_bash  # noqa: E402
from agentd.tools.bwrap import bwrap_argv  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--with-sdks"]
    n = int(args[0]) if args else 50
    if "--with-sdks" in sys.argv:
        import anthropic  # noqa: F401
        import openai  # noqa: F401
    bwrap = sb.find_bwrap()
    if bwrap is None:
        print("bubblewrap is not installed: nothing to measure")
        return
    with tempfile.TemporaryDirectory() as tmp:
        home, work = Path(tmp, "home"), Path(tmp, "work")
        (home / ".git").mkdir(parents=True)
        (home / "agentd.toml").write_text("")
        work.mkdir()
        ctx = ToolContext(home=home.resolve(), workdir=work.resolve())

        def run(argv: list[str], **kw: object) -> None:
            subprocess.run(argv, env=sb.launcher_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                           **kw)  # type: ignore[call-overload]

        def full_argv() -> None:
            fd = sb.seccomp_memfd()
            try:
                run(bwrap_argv(ctx, "true", bwrap=bwrap, seccomp_fd=fd), pass_fds=(fd,))
            finally:
                os.close(fd)

        loop = asyncio.new_event_loop()

        def tool_call() -> None:
            result = loop.run_until_complete(run_bash(ctx, "true"))
            assert not result.is_error, result.content

        rows = [
            ("/bin/true", median_ms(lambda: run(["/bin/true"]), n)),
            ("bare bwrap true", median_ms(lambda: run(
                [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                 "--unshare-all", "--", "/bin/true"]), n)),
            ("agentd bwrap argv + seccomp", median_ms(full_argv, n)),
            ("run_bash('true'), everything", median_ms(tool_call, n)),
        ]
        loop.close()
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"medians of {n} runs, ms (this process: {rss:.0f} MiB peak RSS)")
    for name, ms in rows:
        print(f"  {name:<32} {ms:7.1f}")
    overhead = rows[3][1] - rows[0][1]
    print(f"  {'sandbox overhead per command':<32} {overhead:7.1f}  (target: total <= 30)")
    bench_hand_over(n)


def bench_hand_over(n: int, files: int = 2000, folders: int = 100) -> None:
    """The hand-over of a home of `files` files, first time and steady state."""
    from agentd.tools import SandboxSettings

    who = owner.sandbox_owner(SandboxSettings())
    if who is None:
        print("hand-over: not root, nothing is handed over")
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp, "home")
        (home / ".git").mkdir(parents=True)
        for i in range(files):
            folder = home / f"d{i % folders:03d}"
            folder.mkdir(exist_ok=True)
            (folder / f"f{i}.md").write_text("x")

        def fresh() -> float:
            for path in home.rglob("*"):  # give everything back to root first
                os.lchown(path, 0, 0)
            ctx = ToolContext(home=home, workdir=home)
            start = time.perf_counter()
            sb.hand_over(ctx)
            return (time.perf_counter() - start) * 1000

        def steady() -> None:
            sb.hand_over(ToolContext(home=home, workdir=home))

        first = statistics.median(fresh() for _ in range(max(3, n // 10)))
        again = median_ms(steady, n)
    entries = files + folders
    print(f"hand-over of a home of {files} files in {folders} folders ({entries} entries), ms")
    print(f"  {'first turn (every entry chowned)':<32} {first:7.1f}")
    print(f"  {'steady state (nothing to do)':<32} {again:7.1f}")


if __name__ == "__main__":
    main()
