"""Daemon benchmarks: prints numbers, asserts nothing. `python bench/daemon.py`.

- idle RSS of `agentd daemon` after BENCH_IDLE_SECONDS (default 60) with a heartbeat, a
  cron job and the watchers set up, and its CPU use over that idle time;
- the time from a file landing in inbox/ (renamed in, complete) to the model request
  arriving at a zero-latency fake LLM server on loopback: the first drop (which imports the
  provider SDK) and the median of the next BENCH_DROPS (default 5);
- RSS after those turns.
"""

from __future__ import annotations

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

CLK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def wait_until(check: callable, timeout: float) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise SystemExit("bench: timed out")
        time.sleep(0.001)
    return time.perf_counter()


def main() -> None:
    idle = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
    drops = int(os.environ.get("BENCH_DROPS", "5"))
    scratch = Path(tempfile.mkdtemp(prefix="agentd-bench-daemon-"))
    home = scratch / "home"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["HOME"] = str(scratch)
    subprocess.run([sys.executable, "-m", "agentd", "init", str(home)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    (home / "agentd.toml").write_text('model = "openai:bench"\n'
                                      + (home / "agentd.toml").read_text())
    (home / "cron/daily.md").write_text('---\nschedule: "0 9 * * *"\n---\nDaily review.\n')
    with (home / "memory/HEARTBEAT.md").open("a") as f:
        f.write("- Look at notes/.\n  every: 1d\n  when: `test -d notes`\n")
    with FakeLLM() as fake:
        fake.push(*[{"text": "ok"}] * (drops + 1))
        env.update(OPENAI_BASE_URL=fake.openai_url, OPENAI_API_KEY="bench")
        log = (scratch / "daemon.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "agentd", "daemon", "--home", str(home)],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
        wait_until(lambda: b"daemon: started" in (scratch / "daemon.log").read_bytes(), 30)
        time.sleep(1)  # let start-up work settle before measuring idle
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(idle)
        cpu1, t1 = cpu_seconds(proc.pid), time.perf_counter()
        idle_rss = rss_mib(proc.pid)
        latencies = []
        for i in range(drops + 1):
            before = len(fake.requests)
            tmp = home / "inbox" / f".drop{i}.tmp"
            tmp.write_text(f"Bench question {i}: say ok.\n")
            landed = time.perf_counter()
            os.rename(tmp, home / "inbox" / f"drop{i}.txt")
            arrived = wait_until(lambda b=before: len(fake.requests) > b, 30)
            latencies.append(arrived - landed)
            wait_until(lambda i=i: (home / "outbox" / f"drop{i}.md").exists(), 30)
        busy_rss = rss_mib(proc.pid)
        proc.terminate()
        proc.wait(30)
        log.close()
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"idle RSS after {idle:g} s:             {idle_rss:6.1f} MiB   (target <= 60 MiB)")
    print(f"idle CPU over {idle:g} s:              {100 * (cpu1 - cpu0) / (t1 - t0):6.2f} %     "
          "(target ~0 %)")
    print(f"inbox → model request, first drop:  {latencies[0] * 1000:6.0f} ms    (target < 1 s)")
    if drops:
        print(f"inbox → model request, median of {drops}: "
              f"{statistics.median(latencies[1:]) * 1000:5.0f} ms")
    print(f"RSS after {drops + 1} inbox turns:          {busy_rss:6.1f} MiB")


if __name__ == "__main__":
    main()
