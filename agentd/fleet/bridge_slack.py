"""Slack in the fleet: `POST /homes/NAME/slack/events`, home NAME's Slack app's Events API
request URL.

As with `agentd serve` (agentd/bridge/adapters.py, read it for the why; its `slack_event`
reads the event for both): the home's `[bridge.slack]` (enabled, users, owners, from its
agentd.toml at its recorded head) says who may talk; a mention or a direct message is
acknowledged at once and answered with chat.postMessage (in its thread) once its turn
ends; each channel or thread is its own conversation; an owner's message runs trusted,
anyone else's untrusted. What differs, as for Telegram (bridge_telegram.py): the signing
secret, the bot token and the API's base URL are the operator's
(AGENTD_FLEET_HOOK_SECRETS, `[NAME.slack]`); the event_id makes the workflow ID; the
bridge that took the event sends the reply.
"""

from __future__ import annotations

from pathlib import Path  # a request's workdir: ignored, a turn runs in a fresh clone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from agentd.bridge.adapters import OBJECT_BODY, SLACK_MAX, chat_turn, slack_event, split
from agentd.bridge.auth import verify_slack
from agentd.bridge.http import ApiError, unauthorized
from agentd.fleet import callbacks, db

if TYPE_CHECKING:
    from agentd.fleet.bridge import Fleet
    from agentd.fleet.homeconf import SlackBot


def router(fleet: Fleet) -> APIRouter:
    api = APIRouter()

    @api.post("/homes/{name}/slack/events", openapi_extra=OBJECT_BODY,
              summary="Home NAME's Slack app's Events API request URL (v0 signature)")
    async def slack(name: str, request: Request) -> JSONResponse:
        app = fleet.secrets.slack.get(name) if db.NAME.match(name) else None
        if app is None:
            raise ApiError(404, "not found", "not_found")
        body = await request.body()
        if verify_slack(app.signing_secret, request.headers, body):
            raise unauthorized()
        home, b, data = await fleet.chat_request(name, request, body, "slack")
        msg = slack_event(data)
        if isinstance(msg, dict):
            return JSONResponse(msg)
        if msg.user not in b.slack.users:
            return JSONResponse({"ok": True, "ignored": "user not allowed"})
        # (a hook's key begins with its name, never with \0: the two never meet)
        wid, fresh = await fleet.accept(home.name, f"\0slack\0{msg.event_id}",
                                        f"slack:{home.name}:{msg.user}",
                                        chat_turn(msg, msg.user in b.slack.owners, Path(".")))
        if fresh:
            fleet.log("slack", f"{home.name}: {msg.key}: queued {wid}")
            fleet.spawn(_reply(fleet, app, home.name, wid, msg.channel, msg.thread),
                        f"{home.name}: slack {msg.key}: run {wid}, its reply")
        return JSONResponse({"ok": True, "run": wid, "duplicate": not fresh})

    return api


async def _reply(fleet: Fleet, app: SlackBot, home: str, wid: str, channel: str,
                 thread: str | None) -> str:
    """Wait for the turn, then chat.postMessage its answer, one piece per 3900
    characters, in the thread if there is one; Slack's `ok: false` is a failure."""
    result = await fleet.follow(wid, None)
    text = callbacks.payload(home, "slack", wid, result)["data"]["result"]
    url = f"{app.api_base}/chat.postMessage"
    headers = {"authorization": f"Bearer {app.bot_token}"}

    async def send(_: int, part: str) -> int:
        payload: dict[str, Any] = {"channel": channel, "text": part}
        if thread:
            payload["thread_ts"] = thread
        resp = await fleet.post(url, json=payload, headers=headers)
        try:
            ok = resp.status_code != 200 or resp.json().get("ok") is True
        except ValueError:
            ok = False
        return int(resp.status_code) if ok else 400  # 200 with ok false: refused
    return await callbacks.pieces(split(text, SLACK_MAX), send)
