"""Slack in the fleet: `POST /homes/NAME/slack/events`, home NAME's Slack app's Events API
request URL.

As with `agentd serve` (agentd/bridge/adapters.py, read it for the why): the home's
`[bridge.slack]` (enabled, users, owners, from its agentd.toml at its recorded head) says
who may talk; a mention or a direct message is acknowledged at once and answered with
chat.postMessage (in its thread) once its turn ends; each channel or thread is its own
conversation; an owner's message runs trusted, anyone else's untrusted. What differs, as
for Telegram (bridge_telegram.py): the signing secret, the bot token and the API's base
URL are the operator's (AGENTD_FLEET_HOOK_SECRETS, `[NAME.slack]`); the event_id makes the
workflow ID; the bridge that took the event sends the reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path  # a request's workdir: ignored, a turn runs in a fresh clone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from agentd.bridge.adapters import OBJECT_BODY, SLACK_MAX, chat_task, split
from agentd.bridge.auth import verify_slack
from agentd.bridge.http import ApiError, parse_json, require_json, unauthorized
from agentd.fleet import callbacks, db
from agentd.turn import TurnRequest

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
        home = await fleet.home(name)
        require_json(request.headers.get("content-type"))
        settings = (await fleet.settings_of(home)).bridge
        s = settings.slack
        if not s.enabled:
            raise ApiError(404, "not found", "not_found")
        data = parse_json(body, settings.max_json_depth)
        if data.get("type") == "url_verification":
            challenge = data.get("challenge")
            if not isinstance(challenge, str) or len(challenge) > 512:
                raise ApiError(400, "challenge must be a string", "invalid_event")
            return JSONResponse({"challenge": challenge})
        event, eid = data.get("event"), data.get("event_id")
        if data.get("type") != "event_callback" or not isinstance(event, dict) or not (
                isinstance(eid, str) and 0 < len(eid) <= 128):
            return JSONResponse({"ok": True, "ignored": "not an event callback"})
        user, text, channel = event.get("user"), event.get("text"), event.get("channel")
        kind = event.get("type")
        if (event.get("bot_id") or event.get("subtype") or not isinstance(user, str)
                or not isinstance(text, str) or not isinstance(channel, str)
                or not (kind == "app_mention" or (kind == "message"
                                                  and event.get("channel_type") == "im"))):
            return JSONResponse({"ok": True, "ignored": "not a message to the agent"})
        if user not in s.users:
            return JSONResponse({"ok": True, "ignored": "user not allowed"})
        # (a hook's digest begins with its name, never with \0: the two never meet)
        digest = hashlib.sha256(f"\0slack\0{eid}".encode()).hexdigest()[:32]
        wid = f"run:{home.name}:{digest}"  # a redelivery is the same workflow: queued once
        if await asyncio.to_thread(fleet.dbos.list_workflows, workflow_ids=[wid],
                                   load_input=False, load_output=False):
            return JSONResponse({"ok": True, "run": wid, "duplicate": True})
        fleet.check_sender(f"slack:{home.name}:{user}")
        text = re.sub(r"^\s*<@[A-Z0-9]+>\s*", "", text) or text
        thread = event.get("thread_ts") or (event.get("ts") if kind == "app_mention" else None)
        thread = thread if isinstance(thread, str) else None
        key = f"slack-{channel}" + (f"-{thread}".replace(".", "_") if thread else "")
        key = re.sub(r"[^A-Za-z0-9_-]", "_", key)[:64]
        trusted = user in s.owners
        turn = TurnRequest(chat_task(text, trusted, f"Slack user {user}"), Path("."),
                           f"chat:{key}", session=f"chat-{key}",
                           profile="trusted" if trusted else "untrusted")
        await fleet.enqueue(home.name, turn, wid)
        fleet.log("slack", f"{home.name}: {key}: queued {wid}")
        fleet.spawn(_reply(fleet, app, home.name, wid, channel, thread),
                    f"{home.name}: slack {key}: run {wid}, its reply")
        return JSONResponse({"ok": True, "run": wid, "duplicate": False})

    return api


async def _reply(fleet: Fleet, app: SlackBot, home: str, wid: str, channel: str,
                 thread: str | None) -> str:
    """Wait for the turn, then chat.postMessage its answer, one piece per 3900
    characters, in the thread if there is one; Slack's `ok: false` is a failure."""
    result = await fleet.follow(wid, None)
    text = callbacks.payload(home, "slack", wid, result)["data"]["result"]
    url = f"{app.api_base}/chat.postMessage"
    headers = {"authorization": f"Bearer {app.bot_token}"}
    pieces = split(text, SLACK_MAX)
    for i, part in enumerate(pieces):
        payload: dict[str, Any] = {"channel": channel, "text": part}
        if thread:
            payload["thread_ts"] = thread

        async def send(payload: dict[str, Any] = payload) -> int:
            resp = await fleet.post(url, json=payload, headers=headers)
            try:
                ok = resp.status_code != 200 or resp.json().get("ok") is True
            except ValueError:
                ok = False
            return int(resp.status_code) if ok else 400  # 200 with ok false: refused
        outcome = await callbacks.tried(send)
        if outcome != "HTTP 200":
            return f"piece {i + 1} of {len(pieces)}: {outcome}"
    return f"sent ({len(pieces)} message{'s' if len(pieces) > 1 else ''})"
