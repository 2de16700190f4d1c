"""Bridge benchmarks: prints numbers, asserts nothing. `python bench/bridge.py`.

Against a real `agentd serve` process on loopback, with a zero-latency fake model:

- chat round trip: one non-streaming POST /v1/chat/completions after another (a full
  turn each: queue, prompt, model call, transcript, day log), p50 and p99 over
  BENCH_CHATS (default 100), after a few warm-up turns (the first imports the SDK);
- accepted signed webhooks per second: BENCH_HOOKS (default 3000) Standard Webhooks
  deliveries, each with its own id, from BENCH_CONCURRENCY (default 32) keep-alive
  connections; the rate is 202 answers over wall time, while the queue's worker runs
  the accepted turns in the same process (rate limits raised, a queue large enough to
  accept them all).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx2  # noqa: E402
from fakellm import FakeLLM  # noqa: E402

from agentd.bridge.auth import sign  # noqa: E402

TOKEN = "bench-bridge-token-0123456789abcdef"
KEY = b"bench-webhook-secret-0123456789"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def chats(url: str, n: int) -> list[float]:
    body = {"model": "agentd", "messages": [{"role": "user", "content": "ping"}]}
    times = []
    async with httpx2.AsyncClient(base_url=url, timeout=60,
                                  headers={"authorization": f"Bearer {TOKEN}"}) as c:
        for _ in range(n):
            start = time.perf_counter()
            r = await c.post("/v1/chat/completions", json=body)
            times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    return times


async def hooks(url: str, n: int, concurrency: int) -> tuple[float, dict[int, int]]:
    event = json.dumps({"action": "opened", "repository": {"full_name": "a/b"},
                        "sender": {"login": "someone"}}).encode()
    codes: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        async def one(i: int) -> None:
            msg, ts = f"msg_{i}", int(time.time())
            headers = {"webhook-id": msg, "webhook-timestamp": str(ts),
                       "webhook-signature": sign(KEY, msg, ts, event),
                       "content-type": "application/json"}
            async with sem:
                r = await c.post("/hooks/bench", content=event, headers=headers)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start, codes


def main() -> None:
    n_chats = int(os.environ.get("BENCH_CHATS", "100"))
    n_hooks = int(os.environ.get("BENCH_HOOKS", "3000"))
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "32"))
    scratch = Path(tempfile.mkdtemp(prefix="agentd-bench-bridge-"))
    home = scratch / "home"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(HOME=str(scratch), AGENTD_BRIDGE_TOKEN=TOKEN,
               AGENTD_WEBHOOK_SECRET=KEY.decode())
    subprocess.run([sys.executable, "-m", "agentd", "init", str(home)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    (home / "agentd.toml").write_text(
        'model = "openai:bench"\n' + (home / "agentd.toml").read_text().replace(
            "[daemon]\n", "[daemon]\nqueue_limit = 1000000\n").replace(
            "[bridge]\n", "[bridge]\nip_rate = 1e6\nip_burst = 1000000\nsender_rate = 1e6\n"
                          "sender_burst = 1000000\n"))
    try:
        with FakeLLM() as fake:
            env.update(OPENAI_BASE_URL=fake.openai_url, OPENAI_API_KEY="bench")
            fake.push(*[{"text": "pong"}] * (n_chats + 5))
            log = scratch / "serve.log"
            with log.open("wb") as err:
                proc = subprocess.Popen([sys.executable, "-m", "agentd", "serve", "--home",
                                         str(home), "--port", "0"], env=env, stderr=err,
                                        stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while not (m := re.search(r"listening on (http://\S+:\d+)", log.read_text())):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("bench: the bridge did not start:\n" + log.read_text())
                time.sleep(0.02)
            url = m.group(1)
            asyncio.run(chats(url, 5))  # warm-up: SDK import, caches
            times = sorted(asyncio.run(chats(url, n_chats)))
            p50 = statistics.median(times)
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(f"chat round trip (non-streaming, full turn, zero-latency model): "
                  f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {n_chats}")
            fake.auto = True  # answer every queued webhook turn from here on
            seconds, codes = asyncio.run(hooks(url, n_hooks, concurrency))
            accepted = codes.get(202, 0)
            print(f"signed webhooks accepted: {accepted / seconds:,.0f}/s ({accepted} × 202 "
                  f"of {n_hooks} in {seconds:.2f} s, {concurrency} connections; "
                  f"codes {dict(sorted(codes.items()))})")
            print(f"agentd serve RSS after: {rss_mib(proc.pid):.0f} MiB")
            proc.terminate()
            proc.wait(60)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
