"""Who may talk to the bridge: a Bearer token, Standard Webhooks signatures, Telegram's
secret token and Slack's v0 signatures.

Every comparison is constant-time (`hmac.compare_digest`, on SHA-256 digests when the
lengths may differ, so not even the length leaks). Signatures are checked over the raw
body, before it is parsed. Checks return None when the request is authentic, else a short
reason for the log; the client only ever learns "401".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from agentd.bridge.http import ascii_int

TOLERANCE = 300  # seconds a signed timestamp may be off (Standard Webhooks, Slack)
MAX_SIGNATURES = 16  # a header listing more is refused rather than checked one by one


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality of two strings of any lengths."""
    da = hashlib.sha256(a.encode() if isinstance(a, str) else a).digest()
    db = hashlib.sha256(b.encode() if isinstance(b, str) else b).digest()
    return hmac.compare_digest(da, db)


def bearer_ok(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and bool(given) and same(given.strip(), token)


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` (the Standard Webhooks form: the key is the decoded bytes), else the
    raw string's UTF-8 bytes. The base64 may lack its `=` padding: senders' dashboards hand
    out such secrets and both reference libraries (standardwebhooks, svix) take them.
    ValueError on anything else after the prefix (other characters, an impossible length)."""
    if not secret.startswith("whsec_"):
        return secret.encode()
    text = secret[6:].rstrip("=")
    if len(text) % 4 == 1:  # 4n+1 characters is never base64, padded or not
        raise ValueError("not base64")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(keys: list[bytes], msg_id: str, body: bytes,
                   now: float | None = None) -> dict[str, str]:
    """Headers for a request we send (callbacks), one signature per key (rotation)."""
    ts = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(sign(k, msg_id, ts, body) for k in keys)}


def _fresh(stamp: str, now: float) -> int | None:
    """The signed timestamp when it is ASCII digits within TOLERANCE of `now`, else None."""
    value = ascii_int(stamp)
    if value is None or abs(now - value) > TOLERANCE:
        return None
    return value


HEADER_SETS = ("webhook", "svix")  # Standard Webhooks' names, and Svix-hosted senders'


def webhook_headers(headers: Mapping[str, str]) -> tuple[str, str, str] | str:
    """(id, timestamp, signature) from one whole header set, `webhook-*` or `svix-*`; else
    the reason. A request mixing the sets (`webhook-id` with `svix-signature`) or carrying
    both with different values is refused, not patched together: no sender makes one, and
    which header wins would be a choice an attacker could steer."""
    found: list[tuple[str, str, str]] = []
    for prefix in HEADER_SETS:
        triple = (headers.get(f"{prefix}-id", ""), headers.get(f"{prefix}-timestamp", ""),
                  headers.get(f"{prefix}-signature", ""))
        if any(triple):
            found.append(triple)
    if not found:
        return "missing webhook-id, webhook-timestamp or webhook-signature (or svix-*)"
    if not all(all(t) for t in found):
        return "an incomplete or mixed webhook-*/svix-* header set"
    if len(found) > 1 and found[0] != found[1]:
        return "webhook-* and svix-* headers that differ"
    return found[0]


def verify_webhook(keys: list[bytes], headers: Mapping[str, str], body: bytes,
                   now: float | None = None) -> str | None:
    """Standard Webhooks v1: any of the header's signatures made with any of `keys`."""
    found = webhook_headers(headers)
    if isinstance(found, str):
        return found
    msg_id, stamp, given = found
    if len(msg_id) > 256:
        return "webhook-id too long"
    ts = _fresh(stamp, time.time() if now is None else now)
    if ts is None:
        return "timestamp not ASCII digits within the 5-minute window"
    sigs = [s for s in given.split() if s.startswith("v1,")]
    if not sigs or len(given.split()) > MAX_SIGNATURES:
        return "no v1 signature"
    ok = False
    for key in keys:
        expected = sign(key, msg_id, ts, body)
        for sig in sigs:  # no early exit: the time does not depend on which one matched
            ok |= same(sig, expected)
    return None if ok else "bad signature"


def telegram_ok(header: str | None, secret: str) -> bool:
    return bool(header) and same(header or "", secret)


def slack_sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


def verify_slack(secret: str, headers: Mapping[str, str], body: bytes,
                 now: float | None = None) -> str | None:
    """Slack's v0 signing secret over `v0:timestamp:body`, within 5 minutes."""
    stamp = headers.get("x-slack-request-timestamp", "")
    given = headers.get("x-slack-signature", "")
    if not (stamp and given):
        return "missing X-Slack-Request-Timestamp or X-Slack-Signature"
    if _fresh(stamp, time.time() if now is None else now) is None:
        return "timestamp not ASCII digits within the 5-minute window"
    return None if same(given, slack_sign(secret, stamp, body)) else "bad signature"
