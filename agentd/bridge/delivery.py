"""Sending a chat reply (Telegram, Slack) so that its fate is known.

A reply is sent after its turn (and its commit), by the bridge, to an API that can be
down, slow, rate-limiting or refusing. What went wrong decides what happens:

- transient (no connection, a timeout, HTTP 429 with the platform's `retry_after`, 5xx,
  Slack's `ratelimited`/`internal_error`…): tried again after a wait that grows (DELAYS,
  about a minute in all, never less than what the platform asked for);
- permanent (Slack `ok: false` with `not_in_channel`, `channel_not_found`, `invalid_auth`…;
  Telegram 400/403…): failed at once, since asking again gets the same answer.

A timeout may hide a message that arrived, so a retry can repeat it: at least once, never
silently lost. A long reply goes in pieces, each tried on its own: a piece that went
through is not sent again.

Each try that fails is a log line naming the platform, the chat, the run and the
platform's own words (Slack's `error`, Telegram's `description`), redacted like every
other line. The run record (`GET /runs/<id>`, `agentd status`) carries the delivery's
state, `retrying` then `delivered` or `failed`, with its attempts and last error; the
final state is also a note in the day log, which rides along with the home's next commit
(a second commit per reply would double the history for no gain).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agentd.bridge.secrets import scrub
from agentd.daylog import append_note
from agentd.oneline import one_line, quoted

if TYPE_CHECKING:
    from agentd.bridge.core import Bridge

DELAYS = (2.0, 6.0, 15.0, 35.0)  # the waits before tries 2..5: about a minute in all
MAX_WAIT = 60.0  # a platform asking to wait longer than this is not waited for
SLACK_TRANSIENT = frozenset({"ratelimited", "rate_limited", "internal_error", "fatal_error",
                             "service_unavailable", "request_timeout"})
ERROR_CHARS = 300
STOPPED = "agentd stopped before the reply was sent"


class Transient(Exception):
    """Worth another try; `retry_after`: what the platform asked us to wait, if it did."""

    def __init__(self, why: str, retry_after: float | None = None):
        super().__init__(why)
        self.retry_after = retry_after


class Permanent(Exception):
    """Asking again would get the same answer (no access, no such chat, a bad token)."""


@dataclass(frozen=True)
class Target:
    """Where a reply goes, as logs and the run record name it."""

    platform: str  # "telegram", "slack"
    chat: str  # the Telegram chat id, the Slack channel
    run: str  # the bridge's run id


def _body(resp: Any) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _seconds(value: Any) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def check_telegram(resp: Any) -> None:
    """Raise for a Bot API answer that is not `ok`; the error keeps its `description`."""
    data = _body(resp)
    if resp.status_code == 200 and data.get("ok") is True:
        return
    desc = data.get("description")
    why = f"HTTP {resp.status_code}" + (f": {desc}" if isinstance(desc, str) and desc else "")
    if resp.status_code == 429:
        params = data.get("parameters")
        wait = _seconds(params.get("retry_after")) if isinstance(params, dict) else None
        raise Transient(why, wait if wait is not None else _seconds(
            resp.headers.get("retry-after")))
    if resp.status_code >= 500:
        raise Transient(why)
    raise Permanent(why if resp.status_code != 200 else f"{why} without ok: true")


def check_slack(resp: Any) -> None:
    """Raise for a Web API answer that is not `ok`: Slack says what is wrong in `error`,
    under HTTP 200."""
    if resp.status_code == 429:
        raise Transient("HTTP 429: ratelimited", _seconds(resp.headers.get("retry-after")))
    if resp.status_code >= 500:
        raise Transient(f"HTTP {resp.status_code}")
    data = _body(resp)
    if resp.status_code == 200 and data.get("ok") is True:
        return
    error = data.get("error")
    if resp.status_code != 200 or not isinstance(error, str):
        raise Permanent(f"HTTP {resp.status_code}" + (" without ok: true"
                                                      if resp.status_code == 200 else ""))
    if error in SLACK_TRANSIENT:
        raise Transient(error, _seconds(resp.headers.get("retry-after")))
    raise Permanent(error)


def _clean(bridge: Bridge, text: str) -> str:
    """An error fit for the log and the run record: one line, secrets and paths out (the
    bot tokens too, which are in the Telegram URL)."""
    for token in (bridge.secrets.telegram_token, bridge.secrets.slack_token):
        if token:
            text = text.replace(token, "<token>")
    return one_line(scrub(text, bridge.redactor), ERROR_CHARS)


def _failure(bridge: Bridge, e: Exception) -> tuple[bool, str, float | None]:
    """What a try raised, as (permanent?, the error, the wait the platform asked for). A
    network error of any kind (no connection, a timeout, a dropped answer) is transient;
    anything else (a bad URL in the settings…) would fail the same way again."""
    import httpx2  # loaded by the bridge already

    if isinstance(e, Transient):
        return False, _clean(bridge, str(e)), e.retry_after
    if isinstance(e, Permanent):
        return True, _clean(bridge, str(e)), None
    why = _clean(bridge, f"{type(e).__name__}: {e}".rstrip(": "))
    return not isinstance(e, httpx2.TransportError), why, None


class _Record:
    """The delivery's state in the run record, and its log lines."""

    def __init__(self, bridge: Bridge, t: Target):
        self.bridge, self.t = bridge, t
        self.where = f"reply to {t.platform} {'chat ' * (t.platform == 'telegram')}{t.chat}"
        self.attempts = 0

    def set(self, state: str, error: str | None = None) -> None:
        row: dict[str, Any] = {"state": state, "platform": self.t.platform,
                               "chat": self.t.chat, "attempts": self.attempts,
                               "ts": round(time.time(), 3)}
        if error:
            row["error"] = error
        self.bridge.runs.update(self.t.run, delivery=row)

    def log(self, level: str, msg: str) -> None:
        self.bridge.log(self.t.platform, f"{self.where} (run {self.t.run}): {msg}", level=level,
                        run=self.t.run, chat=self.t.chat)

    async def final(self, state: str, error: str | None = None) -> None:
        self.set(state, error)
        if state != "failed":  # a delivered reply leaves the home clean (after its commit)
            return
        note = f"{self.where} (run {self.t.run}): {state}" + (
            f" after {self.attempts} attempts" if self.attempts > 1 else "") + (
            f": {quoted(error, ERROR_CHARS)}" if error else "")
        try:
            await asyncio.to_thread(append_note, self.bridge.home, datetime.now().astimezone(),
                                    note)
        except (OSError, ValueError) as e:
            self.log("warning", f"day log not written: {type(e).__name__}")


async def _pause(bridge: Bridge, seconds: float) -> bool:
    """Wait `seconds`; False at once when the bridge starts stopping (its `stopping`
    event), so a stop never waits out a retry."""
    if bridge.stopping.is_set():
        return False
    try:
        await asyncio.wait_for(bridge.stopping.wait(), seconds)
    except TimeoutError:
        return True
    return False


async def send(bridge: Bridge, t: Target, pieces: Sequence[Callable[[], Awaitable[None]]],
               delays: Sequence[float] | None = None) -> None:
    """Send the pieces of one reply in order, each tried up to len(delays) + 1 times (see
    the module doc); a piece already sent is not sent again. `attempts` in the record is
    the most tries any piece took. A stop ends the wait between tries: failed. Never
    raises but CancelledError (the record says failed then too)."""
    delays = bridge.delivery_delays if delays is None else delays
    rec = _Record(bridge, t)
    try:
        for piece in pieces:
            tries = 0
            while True:
                tries += 1
                rec.attempts = max(rec.attempts, tries)
                try:
                    await piece()
                    break
                except Exception as e:  # any failure is classified, never lost
                    permanent, why, asked = _failure(bridge, e)
                if permanent:
                    rec.log("error", f"failed: {why} (permanent: not retried)")
                    return await rec.final("failed", why)
                wait = max(delays[tries - 1] if tries <= len(delays) else 0.0,
                           asked or 0.0)
                if tries > len(delays) or wait > MAX_WAIT:
                    stop = f"asked to wait {wait:.0f}s" if wait > MAX_WAIT else "giving up"
                    rec.log("error", f"failed after {tries} attempt{'s' * (tries > 1)}: "
                                     f"{why} ({stop})")
                    return await rec.final("failed", why)
                rec.log("warning", f"attempt {tries} of {len(delays) + 1} failed: {why}; "
                                   f"retrying in {wait:.0f}s")
                rec.set("retrying", why)
                if not await _pause(bridge, wait):
                    rec.log("error", f"failed after {tries} attempt{'s' * (tries > 1)}: "
                                     f"{why} (agentd is stopping)")
                    return await rec.final("failed", f"{STOPPED} (last error: {why})")
    except asyncio.CancelledError:
        rec.set("failed", STOPPED)
        raise
    rec.log("info", "delivered" + (f" after {rec.attempts} attempts" if rec.attempts > 1
                                   else ""))
    await rec.final("delivered")
