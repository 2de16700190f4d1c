"""Benchmarks: prints numbers, asserts nothing. `make bench` or `python bench/run.py`.

- `agentd --help` wall time (cold start of the CLI);
- `agentd run` one-shot against a zero-latency fake OpenAI-compatible server on loopback,
  one tool call (`echo hi > hello.txt`) then a final answer: wall time and peak RSS;
- the fixed prompt (system prompt + tool schemas of a fresh home) in tokens (chars / 4).

Whole-process figures, medians over N runs after one warm-up, each run in a fresh workdir.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakellm import FakeLLM  # noqa: E402

sys.path.insert(0, str(ROOT))
from agentd.tools import SandboxSettings  # noqa: E402
from agentd.tools.owner import sandbox_owner  # noqa: E402

# As root, bash runs as the sandbox uid: give it the workdirs, as a root user would.
SANDBOX_OWNER = sandbox_owner(SandboxSettings())

# The `agentd` script installed beside this interpreter (make bench: the .venv's).
_SCRIPT = Path(sys.executable).parent / "agentd"
AGENTD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "agentd"]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit status of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def median_of(n: int, run: callable) -> tuple[float, float]:
    run()  # warm-up
    walls, rss = zip(*(run() for _ in range(n)), strict=True)
    return statistics.median(walls), statistics.median(rss)


def main() -> None:
    n = int(os.environ.get("BENCH_RUNS", "10"))
    scratch = Path(tempfile.mkdtemp(prefix="agentd-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["HOME"] = str(scratch)
    subprocess.run([*AGENTD, "init", str(scratch / "home")], env=env, check=True,
                   stdout=subprocess.DEVNULL)

    def help_run() -> tuple[float, float]:
        wall, rss, code = timed([*AGENTD, "--help"], env, scratch)
        assert code == 0
        return wall, rss

    help_wall, help_rss = median_of(n, help_run)

    with FakeLLM(auto=True) as fake:
        run_env = {**env, "OPENAI_BASE_URL": fake.openai_url, "OPENAI_API_KEY": "sk-bench"}
        counter = iter(range(10_000))

        def one_shot() -> tuple[float, float]:
            wd = scratch / f"w{next(counter)}"
            wd.mkdir()
            if SANDBOX_OWNER:
                os.chown(wd, *SANDBOX_OWNER)
            wall, rss, code = timed([*AGENTD, "run", "-q", "--home", str(scratch / "home"),
                                     "-m", "openai:mock-model", "create hello.txt containing hi"],
                                    run_env, wd)
            assert code == 0 and (wd / "hello.txt").read_text() == "hi\n", code
            return wall, rss

        run_wall, run_rss = median_of(max(5, n // 2), one_shot)
        first = next(q.body for q in fake.requests if q.method == "POST")
    fixed_chars = len(first["messages"][0]["content"]) + len(json.dumps(first["tools"]))
    shutil.rmtree(scratch, ignore_errors=True)

    rows = [
        ("agentd --help wall (median)", f"{help_wall:.3f} s", "target <= 0.10 s"),
        ("agentd --help peak RSS", f"{help_rss:.1f} MiB", ""),
        ("agentd run one-shot, OpenAI protocol, 1 tool call: wall", f"{run_wall:.3f} s",
         "target <= 0.45 s"),
        ("agentd run one-shot: peak RSS", f"{run_rss:.1f} MiB", "target <= 90 MiB"),
        ("fixed prompt (system + tools), fresh home", f"{fixed_chars / 4:.0f} tokens",
         f"{fixed_chars} chars; target < 1500 tokens"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
