"""A hook's `callback_url` in the fleet: when the turn a delivery queued ends, its result
is POSTed there, signed with the hook's key(s) like the delivery was, in the body the
single-home bridge sends (agentd/bridge/hooks.py deliver_callback: `agentd.run.finished`,
the same tries on network errors, 429 and 5xx).

The fleet bridge that accepted the delivery sends it: it follows the turn's "out" stream
from a task of its own. Not durable: a bridge stopped before the turn ends sends nothing
for it (the result stays at GET /runs/ID); the workers, which would be the durable place,
know nothing of callbacks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from agentd.bridge.auth import signed_headers
from agentd.bridge.hooks import CALLBACK_TRIES

Follow = Callable[[str], Awaitable[dict[str, Any]]]
Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]  # url, body, headers -> status


def payload(home: str, hook: str, wid: str, result: dict[str, Any]) -> dict[str, Any]:
    """The single-home bridge's callback body, with the fleet's `home` and `commit`."""
    ok = result.get("status") == "ok"
    text = str(result.get("text") or "").strip()
    if not ok:
        note = (f"(agentd: the turn ended early: "
                f"{str(result.get('error') or result.get('status'))[:500]})")
        text = f"{text}\n\n{note}" if text else note
    data: dict[str, Any] = {"id": wid, "home": home, "hook": hook,
                            "status": "done" if ok else "failed",
                            "finished": round(time.time(), 3), "steps": result.get("steps"),
                            "cost": result.get("cost"), "commit": result.get("commit"),
                            "result": text}
    if result.get("error"):
        data["error"] = str(result["error"])[:500]
    return {"type": "agentd.run.finished",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": data}


async def deliver(follow: Follow, post: Post, keys: list[bytes], url: str, home: str,
                  hook: str, wid: str) -> str:
    """Wait for the turn `wid`, then send its result to `url`; what happened, for the log."""
    result = await follow(wid)
    body = json.dumps(payload(home, hook, wid, result), ensure_ascii=False).encode()
    headers = {"content-type": "application/json"}

    async def send() -> int:
        signed = signed_headers(keys, f"msg_{wid.replace(':', '_')}", body)
        return await post(url, body, {**headers, **signed})
    return await tried(send)


async def tried(send: Callable[[], Awaitable[int]]) -> str:
    """`send` (its HTTP status) tried at CALLBACK_TRIES on network errors, 429 and 5xx:
    what happened last ("HTTP 200", "failed (ConnectError)")."""
    outcome = "failed"
    for wait in CALLBACK_TRIES:
        await asyncio.sleep(wait)
        try:
            status = await send()
        except Exception as e:  # network trouble of any kind: try again
            outcome = f"failed ({type(e).__name__})"
            continue
        outcome = f"HTTP {status}"
        if status < 300 or (status < 500 and status != 429):
            break
    return outcome


async def pieces(parts: list[str], send: Callable[[int, str], Awaitable[int]]) -> str:
    """A chat reply sent piece by piece (`send(i, part)`: its HTTP status), each `tried`,
    stopping at the first that fails: what happened, for the log."""
    for i, part in enumerate(parts):
        outcome = await tried(partial(send, i, part))
        if outcome != "HTTP 200":
            return f"piece {i + 1} of {len(parts)}: {outcome}"
    return f"sent ({len(parts)} message{'s' if len(parts) > 1 else ''})"
