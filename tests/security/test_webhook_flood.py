"""security.md §9 item 19: a flood of 1,000 mixed requests, valid and hostile, against a
real `agentd serve` process. It stays up, its memory stays flat, every request gets an
answer (the valid ones 202, or 429/503 with Retry-After), and every accepted event runs."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from bridgekit import TOKEN, ServeProcess, add_table, bridge_env, bridge_home, signed
from daemonkit import configure, wait_for
from fakellm import FakeLLM

EVENT = json.dumps({"action": "opened", "n": 1}).encode()
AUTH = {"authorization": f"Bearer {TOKEN}"}
VALID = "valid"
BIG = b'{"a": "' + b"x" * (1 << 20) + b'"}'  # over the 1 MiB cap: 413
DEEP = b"[" * 5000 + b"]" * 5000  # nested too deep to parse: 400


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
        return "too large", "POST", "/hooks/h0", BIG, signed(BIG, msg)
    if kind == 5:
        return "unknown route", "GET", f"/wp-admin/{i}", b"", {}
    if kind == 6:
        return "no token", "POST", "/v1/chat/completions", b"{}", {
            "content-type": "application/json"}
    if kind == 7:
        return "deep", "POST", "/hooks/h0", DEEP, signed(DEEP, msg)
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
    fake.push(*[{"text": "ok"}] * 600)
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

            pending = set(accepted)

            def all_done() -> bool:  # "done" is final: each run is asked until it is
                pending.difference_update([rid for rid in pending if client.get(
                    f"/runs/{rid}", headers=AUTH).json()["status"] == "done"])
                return not pending

            with httpx2.Client(base_url=url) as client:  # one client, not one per poll
                wait_for(all_done, 60, "every accepted event to run")
            return seen

        settled(asyncio.run(flood(url, 1)))  # warms up: imports, the SDK, caches
        settled(asyncio.run(flood(url, 2)))
        before = rss_mib(proc.pid)
        for rnd in range(3, 7):  # four floods: a leak adds up with each; the allocator's
            settled(asyncio.run(flood(url, rnd)))  # high-water steps (one of 8 MiB seen
        grew = rss_mib(proc.pid) - before  # once, with no leak) do not
        assert grew < 12, f"RSS grew {grew:.1f} MiB over four floods of 1,000 requests"
        assert proc.poll() is None
        assert httpx2.get(f"{url}/healthz").json() == {"ok": True}
        assert "internal error" not in log.read_text()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


# -- a hostile mix over raw sockets ---------------------------------------------------------

MIX_SEED = 20261130
MIX_SIZE = 2000
CLOSED = 0  # the server closed without an answer (a client that gave up half-way)
RESET = -1  # the server reset the connection (it stopped reading a request it refused)
HUNG = -2  # no answer and no close within a minute: never expected
ANY_4XX = set(range(400, 500))


@dataclass
class Probe:
    """One hostile (or valid) request: `data` is sent; then "read" reads the answer,
    "half" stops sending half-way through the body (shuts its side) and reads, "flood"
    keeps sending chunks past the body cap and reads, "status" reads the status line and
    hangs up (a streaming chat whose client goes away; its turn still runs)."""

    kind: str
    data: bytes
    expect: set[int]
    then: str = "read"


def raw_request(method: str, path: str, headers: dict[str, str] | list[tuple[bytes, bytes]],
                body: bytes = b"", length: int | None = None) -> bytes:
    """An HTTP/1.1 request as bytes, headers exactly as given, `Connection: close`."""
    pairs = [(k.encode(), v.encode()) for k, v in headers.items()] if isinstance(
        headers, dict) else headers
    head = b"".join(k + b": " + v + b"\r\n" for k, v in pairs)
    size = len(body) if length is None else length
    return (f"{method} {path} HTTP/1.1\r\nHost: agentd\r\nConnection: close\r\n".encode()
            + head + b"Content-Length: %d\r\n\r\n" % size + body)


def _signed_hook(rng: random.Random, body: bytes, **extra: str) -> bytes:
    headers = {**signed(body, f"mix_{rng.getrandbits(64):x}"), **extra}
    return raw_request("POST", f"/hooks/h{rng.randrange(2)}", headers, body)


ODD_HEADERS = [
    b"X-Folded: a\r\n  b\r\n", b"X-Nul: a\x00b\r\n", b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n", b"No colon here\r\n", b"X-Space : a\r\n",
    b"Transfer-Encoding: gzip\r\n", b"X-\xff: a\r\n", b": empty name\r\n",
]


def _odd(rng: random.Random) -> Probe:
    """A head h11 refuses, or takes (a folded line; Transfer-Encoding over Content-Length,
    then with a chunked body) and the endpoint answers: never a 5xx."""
    line = rng.choice(ODD_HEADERS)
    chunked = line.startswith(b"Transfer-Encoding: chunked")
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(EVENT), EVENT) if chunked else EVENT
    head = raw_request("POST", "/hooks/h0", signed(EVENT, f"mix_{rng.getrandbits(64):x}"),
                       body, length=len(EVENT))
    cut = head.index(b"\r\n") + 2
    return Probe("odd header", head[:cut] + line + head[cut:], ANY_4XX | {202, RESET})


def _latin1_header(rng: random.Random) -> Probe:
    value = bytes(rng.randrange(0xA0, 0x100) for _ in range(12))
    head = raw_request("POST", "/hooks/h1", [(b"content-type", b"application/json"),
                                             (b"webhook-id", value), (b"webhook-timestamp",
                                                                      b"\xb9\xb2\xb3"),
                                             (b"webhook-signature", b"v1," + value)], EVENT)
    return Probe("latin-1 / unicode digits", head, {401})


def probe(rng: random.Random) -> Probe:
    """The next request of the mix, drawn with `rng` (seeded: every run sends the same)."""
    kind = rng.choices(list(MAKERS), weights=[w for w, _ in MAKERS.values()])[0]
    return MAKERS[kind][1](rng)


def _surrogate(rng: random.Random) -> Probe:
    escape = rng.choice([b"\\ud800", b"\\udfff", b"\\uDBFF", b"\\ud83d"])
    body = b'{"deep": {"list": ["a", "' + escape + b'"]}}'
    return Probe("surrogate", _signed_hook(rng, body), {400})


def _chunked_flood(rng: random.Random) -> Probe:
    head = (b"POST /hooks/h2 HTTP/1.1\r\nHost: agentd\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    return Probe("chunked flood", head, {413, RESET}, then="flood")


def _half_body(rng: random.Random) -> Probe:
    body = b'{"a": "' + b"x" * 4000 + b'"}'
    data = raw_request("POST", "/hooks/h3", signed(body, "mix_half"), body[:rng.randrange(
        1, 2000)], length=len(body))
    return Probe("half-sent body", data, {CLOSED} | ANY_4XX, then="half")


def _valid_chat(rng: random.Random) -> Probe:
    body = json.dumps({"model": "agentd", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    return Probe("valid chat", raw_request("POST", "/v1/chat/completions", {
        **AUTH, "content-type": "application/json",
        "x-agentd-session": f"mix{rng.randrange(10**6)}"}, body.encode()), {200, 429},
        then="status")


def _huge_header(rng: random.Random) -> Probe:
    size = rng.choice([17_000, 40_000, 200_000])
    data = raw_request("GET", "/healthz", {"x-big": "a" * size})
    return Probe("huge header", data, {431, RESET})


def _many_headers(rng: random.Random) -> Probe:
    headers = [(f"x-h{i}".encode(), b"v" * 20) for i in range(rng.choice([50, 300]))]
    return Probe("many headers", raw_request("POST", "/hooks/h0", headers, EVENT),
                 {401, 400, RESET})


def _garbage(rng: random.Random) -> Probe:
    return Probe("garbage", rng.randbytes(rng.randrange(1, 300)) + b"\r\n\r\n",
                 ANY_4XX | {CLOSED, RESET})


MAKERS: dict[str, tuple[int, Callable[[random.Random], Probe]]] = {
    "valid hook": (10, lambda r: Probe("valid hook", _signed_hook(
        r, json.dumps({"n": r.randrange(10**6)}).encode()), {200, 202, 429})),
    "valid chat": (1, _valid_chat),
    "bad signature": (8, lambda r: Probe("bad signature", raw_request(
        "POST", "/hooks/h0", {**signed(EVENT, "mix_bad"), "webhook-signature": "v1,AAAA"},
        EVENT), {401})),
    "latin-1 / unicode digits": (6, _latin1_header),
    "surrogate": (8, _surrogate),
    "deep": (5, lambda r: Probe("deep", _signed_hook(r, b"[" * 3000 + b"]" * 3000), {400})),
    "malformed": (5, lambda r: Probe("malformed", _signed_hook(r, b'{"a": '), {400})),
    "content type": (5, lambda r: Probe("content type", _signed_hook(
        r, EVENT, **{"content-type": r.choice(["text/plain", "", "application/jsonx",
                                                 "multipart/form-data; boundary=x"])}),
        {415})),
    "huge header": (4, _huge_header),
    "many headers": (3, _many_headers),
    "odd header": (8, _odd),
    "half-sent body": (6, _half_body),
    "chunked flood": (3, _chunked_flood),
    "garbage": (4, _garbage),
    "unknown route": (4, lambda r: Probe("unknown route", raw_request(
        r.choice(["GET", "BREW", "PUT"]), f"/wp-admin/{r.randrange(99)}%ff%00", {}),
        {404, 405})),
    "no token": (4, lambda r: Probe("no token", raw_request(
        "GET", "/runs/abc", {"authorization": "Bearer " + "x" * r.randrange(200)}), {401})),
    "telegram secret": (3, lambda r: Probe("telegram secret", raw_request(
        "POST", "/telegram", {"x-telegram-bot-api-secret-token": "nope",
                              "content-type": "application/json"}, b'{"update_id": 1}'),
        {401})),
    "slack stamp": (3, lambda r: Probe("slack stamp", raw_request(
        "POST", "/slack/events", [(b"x-slack-request-timestamp", b"\xb9\xb2"),
                                  (b"x-slack-signature", b"v0=00"),
                                  (b"content-type", b"application/json")], b"{}"), {401})),
    "http/1.0": (2, lambda r: Probe("http/1.0", b"GET /healthz HTTP/1.0\r\n\r\n", {200})),
}


async def exchange(port: int, p: Probe) -> int:
    """Send one probe over a fresh connection; the answer's status (CLOSED, RESET)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(p.data)
        await writer.drain()
        if p.then == "half":
            writer.write_eof()
        elif p.then == "flood":
            chunk = b"%x\r\n%s\r\n" % (65536, b"[" * 65536)
            for _ in range(24):  # 1.5 MiB, over the 1 MiB cap
                writer.write(chunk)
                await writer.drain()
        read = reader.readline() if p.then == "status" else reader.read()
        data = await asyncio.wait_for(read, 60)
    except ConnectionResetError:
        return RESET
    except TimeoutError:
        return HUNG
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]) if data else CLOSED


async def hostile_mix(port: int, probes: list[Probe]) -> list[int]:
    sem = asyncio.Semaphore(24)

    async def one(p: Probe) -> int:
        async with sem:
            return await exchange(port, p)

    return await asyncio.gather(*(one(p) for p in probes))


def test_a_hostile_mix_of_2000_requests_gets_no_5xx(home: Path, fake: FakeLLM,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 requests drawn with a fixed seed: bad signatures, huge and odd headers, unicode
    digits, lone surrogates, deep JSON, wrong content types, half-sent bodies, chunked
    floods, garbage, and valid hooks and chats among them. Each gets its expected answer,
    none a 5xx; the server lives, logs no internal error, and still runs a turn after."""
    bridge_env(monkeypatch)
    bridge_home(home, ip_rate=5000, ip_burst=5000, sender_rate=0.2, sender_burst=10)
    configure(home, daemon={"queue_limit": 1000})
    add_table(home, "bridge.telegram", enabled=True, api_base="http://127.0.0.1:9", chats=[1])
    add_table(home, "bridge.slack", enabled=True, api_base="http://127.0.0.1:9", users=["U1"])
    fake.push(*[{"text": "ok"}] * MIX_SIZE)
    rng = random.Random(MIX_SEED)
    probes = [probe(rng) for _ in range(MIX_SIZE)]
    with ServeProcess(home) as serve:
        codes = asyncio.run(hostile_mix(serve.port, probes))
        seen = Counter((p.kind, c) for p, c in zip(probes, codes, strict=True))
        wrong = {k: n for k, n in seen.items() if k[1] not in next(
            p.expect for p in probes if p.kind == k[0])}
        assert not wrong, (wrong, seen)
        assert not [c for c in codes if c >= 500], seen
        assert seen["valid hook", 202] >= 10 and seen["valid chat", 200] >= 5, seen
        assert seen["valid hook", 429] > 0, seen
        assert serve.proc.poll() is None
        assert httpx2.get(f"{serve.url}/healthz").json() == {"ok": True}
        body = json.dumps({"after": "the mix"}).encode()
        r = httpx2.post(f"{serve.url}/hooks/after", content=body, headers=signed(body, "z"))
        assert r.status_code == 202
        wait_for(lambda: httpx2.get(f"{serve.url}/runs/{r.json()['id']}", headers=AUTH)
                 .json()["status"] == "done", 120, "a turn after the mix")
        log = serve.log
        for bad in ("internal error", "Traceback", "Exception", "Fatal error"):
            assert bad not in log, (bad, log[-3000:])
    print(f"\nhostile mix ({MIX_SIZE}, seed {MIX_SEED}): "
          + ", ".join(f"{k} {c}: {n}" for (k, c), n in sorted(seen.items())))
