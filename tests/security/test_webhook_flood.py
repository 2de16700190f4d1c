"""security.md §9 item 19: a flood of 1,000 mixed requests, valid and hostile, against a
real `agentd serve` process. It stays up, its memory stays flat, every request gets an
answer (the valid ones 202, or 429/503 with Retry-After), and every accepted event runs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import pytest
from bridgekit import TOKEN, bridge_env, bridge_home, signed
from daemonkit import configure, wait_for
from fakellm import FakeLLM

EVENT = json.dumps({"action": "opened", "n": 1}).encode()
AUTH = {"authorization": f"Bearer {TOKEN}"}
VALID = "valid"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def request(i: int, rnd: int) -> tuple[str, str, str, bytes, dict[str, str]]:
    """(what, method, path, body, headers) of the i-th request of a flood."""
    msg = f"msg_{rnd}_{i}"
    kind = i % 10
    if kind == 0:
        return VALID, "POST", f"/hooks/h{i % 40 // 10}", EVENT, signed(EVENT, msg)
    if kind == 1:
        return "bad signature", "POST", "/hooks/h0", EVENT, {
            **signed(EVENT, msg), "webhook-signature": "v1,AAAA"}
    if kind == 2:
        return "malformed", "POST", "/hooks/h0", b"{oops", signed(b"{oops", msg)
    if kind == 3:
        return "content type", "POST", "/hooks/h0", EVENT, {
            **signed(EVENT, msg), "content-type": "text/plain"}
    if kind == 4:
        big = b'{"a": "' + b"x" * (1 << 20) + b'"}'
        return "too large", "POST", "/hooks/h0", big, signed(big, msg)
    if kind == 5:
        return "unknown route", "GET", f"/wp-admin/{i}", b"", {}
    if kind == 6:
        return "no token", "POST", "/v1/chat/completions", b"{}", {
            "content-type": "application/json"}
    if kind == 7:
        deep = b"[" * 5000 + b"]" * 5000
        return "deep", "POST", "/hooks/h0", deep, signed(deep, msg)
    if kind == 8:
        return "replay", "POST", "/hooks/h0", EVENT, signed(EVENT, f"msg_{rnd}_0")
    return "runs without token", "GET", "/runs/abc", b"", {}


EXPECTED = {VALID: {202, 429, 503}, "bad signature": {401}, "malformed": {400},
            "content type": {415}, "too large": {413}, "unknown route": {404},
            "no token": {401}, "deep": {400}, "replay": {200, 202, 429, 503},
            "runs without token": {401}}


async def flood(url: str, rnd: int, n: int = 1000) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    sem = asyncio.Semaphore(16)
    async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
        async def one(i: int) -> None:
            what, method, path, body, headers = request(i, rnd)
            async with sem:
                try:
                    out.append((what, await client.request(method, path, content=body,
                                                           headers=headers)))
                except httpx2.TransportError as e:
                    out.append((what, e))
        await one(0)  # the delivery the replays repeat
        await asyncio.gather(*(one(i) for i in range(1, n)))
    return out


def check(results: list[tuple[str, Any]]) -> Counter[tuple[str, int]]:
    seen: Counter[tuple[str, int]] = Counter()
    for what, r in results:
        assert not isinstance(r, Exception), (what, r)  # every request is answered
        assert r.status_code in EXPECTED[what], (what, r.status_code, r.text)
        if r.status_code in (429, 503):
            assert int(r.headers["retry-after"]) >= 1
        assert "Traceback" not in r.text and TOKEN not in r.text and "/tmp/" not in r.text
        seen[what, r.status_code] += 1
    return seen


def test_19_a_flood_of_mixed_requests(home: Path, fake: FakeLLM,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bridge_env(monkeypatch)
    bridge_home(home, ip_rate=5000, ip_burst=5000, sender_rate=2, sender_burst=20)
    configure(home, daemon={"queue_limit": 10})
    fake.push(*[{"text": "ok"}] * 400)
    log = home.parent / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agentd", "serve", "--home", str(home),
                                 "--port", "0"], stderr=err, stdout=subprocess.DEVNULL,
                                env=dict(os.environ))
    try:
        port = wait_for(lambda: re.search(r"listening on http://127.0.0.1:(\d+)",
                                          log.read_text()), 20, "serve").group(1)
        url = f"http://127.0.0.1:{port}"

        def settled(results: list[tuple[str, Any]]) -> Counter[tuple[str, int]]:
            seen = check(results)
            accepted = [r.json()["id"] for what, r in results
                        if what == VALID and r.status_code == 202]
            assert len(accepted) == seen[VALID, 202] >= 10, seen
            assert seen[VALID, 429] + seen[VALID, 503] > 0, seen

            def all_done() -> bool:
                return all(httpx2.get(f"{url}/runs/{rid}", headers=AUTH).json()["status"]
                           == "done" for rid in accepted)

            wait_for(all_done, 60, "every accepted event to run")
            return seen

        settled(asyncio.run(flood(url, 1)))  # warms up: imports, the SDK, caches
        settled(asyncio.run(flood(url, 2)))
        before = rss_mib(proc.pid)
        settled(asyncio.run(flood(url, 3)))
        grew = rss_mib(proc.pid) - before
        assert grew < 4, f"RSS grew {grew:.1f} MiB over a flood of 1,000 requests"
        assert proc.poll() is None
        assert httpx2.get(f"{url}/healthz").json() == {"ok": True}
        assert "internal error" not in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
