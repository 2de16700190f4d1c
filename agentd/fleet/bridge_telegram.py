"""Telegram in the fleet: `POST /homes/NAME/telegram`, home NAME's bot's webhook.

As with `agentd serve` (agentd/bridge/adapters.py, read it for the why): the home's
`[bridge.telegram]` (enabled, chats, owners, from its agentd.toml at its recorded head)
says who may talk; an update is acknowledged at once and answered through the Bot API's
sendMessage once its turn ends; each chat is its own conversation (`chat:tg-ID`); an
owner's message runs trusted, anyone else's untrusted, wrapped as untrusted data. What
differs: the bot's token, its setWebhook secret_token and the Bot API's base URL are the
operator's (AGENTD_FLEET_HOOK_SECRETS, `[NAME.telegram]`), since the token travels to that
URL; the update_id makes the workflow ID, so a redelivery queues nothing; the reply is
sent by the bridge that took the update (one stopped meanwhile sends none) and tried like
a hook's callback, not through the single-home outbox.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path  # a request's workdir: ignored, a turn runs in a fresh clone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from agentd.bridge.adapters import OBJECT_BODY, TELEGRAM_MAX, chat_task, split, telegram_id
from agentd.bridge.auth import telegram_ok
from agentd.bridge.http import ApiError, parse_json, require_json, unauthorized
from agentd.fleet import callbacks, db
from agentd.turn import TurnRequest

if TYPE_CHECKING:
    from agentd.fleet.bridge import Fleet
    from agentd.fleet.homeconf import TelegramBot


def router(fleet: Fleet) -> APIRouter:
    api = APIRouter()

    @api.post("/homes/{name}/telegram", openapi_extra=OBJECT_BODY,
              summary="Home NAME's Telegram bot's webhook (Bot API secret_token header)")
    async def telegram(name: str, request: Request) -> JSONResponse:
        bot = fleet.secrets.telegram.get(name) if db.NAME.match(name) else None
        if bot is None:
            raise ApiError(404, "not found", "not_found")
        body = await request.body()
        if not telegram_ok(request.headers.get("x-telegram-bot-api-secret-token"),
                           bot.secret):
            raise unauthorized()
        home = await fleet.home(name)
        require_json(request.headers.get("content-type"))
        settings = (await fleet.settings_of(home)).bridge
        t = settings.telegram
        if not t.enabled:
            raise ApiError(404, "not found", "not_found")
        update = parse_json(body, settings.max_json_depth)
        uid = telegram_id(update.get("update_id"))
        if uid is None:
            raise ApiError(400, "update_id must be an integer", "invalid_update")
        msg = update.get("message")
        if not isinstance(msg, dict) or not isinstance(msg.get("text"), str):
            return JSONResponse({"ok": True, "ignored": "not a text message"})
        chat = msg.get("chat") if isinstance(msg.get("chat"), dict) else {}
        sender = msg.get("from") if isinstance(msg.get("from"), dict) else {}
        chat_id, user_id = telegram_id(chat.get("id")), telegram_id(sender.get("id"))
        if chat_id is None or chat_id not in t.chats:
            return JSONResponse({"ok": True, "ignored": "chat not allowed"})
        # (a hook's digest begins with its name, never with \0: the two never meet)
        digest = hashlib.sha256(f"\0telegram\0{uid}".encode()).hexdigest()[:32]
        wid = f"run:{home.name}:{digest}"  # a redelivery is the same workflow: queued once
        if await asyncio.to_thread(fleet.dbos.list_workflows, workflow_ids=[wid],
                                   load_input=False, load_output=False):
            return JSONResponse({"ok": True, "run": wid, "duplicate": True})
        fleet.check_sender(f"tg:{home.name}:{user_id}")
        trusted = user_id is not None and user_id in t.owners
        who = f"Telegram user {sender.get('username') or user_id}"
        turn = TurnRequest(chat_task(msg["text"], trusted, who), Path("."),
                           f"chat:tg-{chat_id}", session=f"chat-tg-{chat_id}",
                           profile="trusted" if trusted else "untrusted")
        await fleet.enqueue(home.name, turn, wid)
        fleet.log("telegram", f"{home.name}: chat {chat_id}: queued {wid}")
        reply_to = msg.get("message_id") if telegram_id(msg.get("message_id")) else None
        fleet.spawn(_reply(fleet, bot, home.name, wid, chat_id, reply_to),
                    f"{home.name}: telegram chat {chat_id}: run {wid}, its reply")
        return JSONResponse({"ok": True, "run": wid, "duplicate": False})

    return api


async def _reply(fleet: Fleet, bot: TelegramBot, home: str, wid: str, chat_id: int,
                 reply_to: int | None) -> str:
    """Wait for the turn, then sendMessage its answer, one piece per 4096 characters, the
    first a reply to the message; each piece tried on network errors, 429 and 5xx."""
    result = await fleet.follow(wid, None)
    text = callbacks.payload(home, "telegram", wid, result)["data"]["result"]
    url = f"{bot.api_base}/bot{bot.bot_token}/sendMessage"
    pieces = split(text, TELEGRAM_MAX)
    for i, part in enumerate(pieces):
        payload: dict[str, Any] = {"chat_id": chat_id, "text": part}
        if i == 0 and reply_to is not None:
            payload["reply_parameters"] = {"message_id": reply_to,
                                           "allow_sending_without_reply": True}

        async def send(payload: dict[str, Any] = payload) -> int:
            return int((await fleet.post(url, json=payload)).status_code)
        outcome = await callbacks.tried(send)
        if outcome != "HTTP 200":
            return f"piece {i + 1} of {len(pieces)}: {outcome}"
    return f"sent ({len(pieces)} message{'s' if len(pieces) > 1 else ''})"
