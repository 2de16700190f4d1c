"""Benchmarks: prints numbers, asserts nothing. `make bench` or `python bench/run.py`.

- `agentd --help` wall time (cold start of the CLI);
- `agentd run` one-shot against a zero-latency fake server on loopback, one tool call
  (`echo hi > hello.txt`) then a final answer: wall time and peak RSS, on the OpenAI and
  the Anthropic protocol, cold (AGENTD_COLD=1: the CLI runs the turn, importing the SDK)
  and warm (handed to a running `agentd daemon` of the home: agentd/warm.py);
- the fixed prompt (system prompt + tool schemas of a fresh home) in tokens (chars / 4).

Whole-process figures, medians over N runs after one warm-up, each run in a fresh workdir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
MODELS = {"OpenAI": "openai:mock-model", "Anthropic": "anthropic:mock-model"}

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


def median_of(n: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    run()  # warm-up
    walls, rss = zip(*(run() for _ in range(n)), strict=True)
    return statistics.median(walls), statistics.median(rss)


@contextlib.contextmanager
def daemon(home: Path, env: dict[str, str]) -> Iterator[None]:
    """`agentd daemon` for `home`, until its warm socket is up; stopped after the block."""
    sock = home / ".agentd" / "daemon" / "warm.sock"
    proc = subprocess.Popen([*AGENTD, "daemon", "--home", str(home)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


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
        keys = {"OPENAI_BASE_URL": fake.openai_url, "OPENAI_API_KEY": "sk-bench",
                "ANTHROPIC_BASE_URL": fake.anthropic_url, "ANTHROPIC_API_KEY": "sk-ant-bench"}
        counter = iter(range(10_000))

        def one_shot(model: str, cold: bool) -> Callable[[], tuple[float, float]]:
            run_env = {**env, **keys, **({"AGENTD_COLD": "1"} if cold else {})}

            def run() -> tuple[float, float]:
                wd = scratch / f"w{next(counter)}"
                wd.mkdir()
                if SANDBOX_OWNER:
                    os.chown(wd, *SANDBOX_OWNER)
                wall, rss, code = timed([*AGENTD, "run", "-q", "--home", str(scratch / "home"),
                                         "-m", model, "create hello.txt containing hi"],
                                        run_env, wd)
                assert code == 0 and (wd / "hello.txt").read_text() == "hi\n", code
                return wall, rss
            return run

        runs = max(5, n // 2)
        kinds = [(proto, path) for path in ("cold", "warm") for proto in ("OpenAI", "Anthropic")]
        shot = {k: one_shot(MODELS[k[0]], cold=k[1] == "cold") for k in kinds}
        with daemon(scratch / "home", env):  # no keys: the CLI carries its own
            for k in kinds:
                shot[k]()  # warm-up
            # interleaved, so a change in the machine's load touches all four alike
            samples = {k: [] for k in kinds}
            for _ in range(runs):
                for k in kinds:
                    samples[k].append(shot[k]())
        shots = {k: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v))
                 for k, v in samples.items()}
        first = next(q.body for q in fake.requests if q.method == "POST")
    fixed_chars = len(first["messages"][0]["content"]) + len(json.dumps(first["tools"]))
    shutil.rmtree(scratch, ignore_errors=True)

    ratio = shots["Anthropic", "cold"][0] / shots["OpenAI", "cold"][0]
    warm_ratio = shots["Anthropic", "warm"][0] / shots["OpenAI", "cold"][0]
    rows = [
        ("agentd --help wall (median)", f"{help_wall:.3f} s", "target <= 0.10 s"),
        ("agentd --help peak RSS", f"{help_rss:.1f} MiB", ""),
        *((f"agentd run one-shot, {proto} protocol, {path}, 1 tool call: wall",
           f"{shots[proto, path][0]:.3f} s", "target <= 0.45 s" if (proto, path) == (
               "OpenAI", "cold") else "") for path in ("cold", "warm")
          for proto in ("OpenAI", "Anthropic")),
        ("agentd run one-shot, OpenAI, cold: peak RSS", f"{shots['OpenAI', 'cold'][1]:.1f} MiB",
         "target <= 90 MiB"),
        ("agentd run one-shot, warm: peak RSS of the CLI",
         f"{shots['OpenAI', 'warm'][1]:.1f} MiB", ""),
        ("Anthropic cold / OpenAI cold", f"{ratio:.2f}x", ""),
        ("Anthropic warm / OpenAI cold", f"{warm_ratio:.2f}x", "target <= 1.3x"),
        ("Anthropic warm / OpenAI warm",
         f"{shots['Anthropic', 'warm'][0] / shots['OpenAI', 'warm'][0]:.2f}x", ""),
        ("fixed prompt (system + tools), fresh home", f"{fixed_chars / 4:.0f} tokens",
         f"{fixed_chars} chars; target < 1500 tokens"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
