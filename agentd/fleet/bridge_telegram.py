"""Telegram in the fleet: `POST /homes/NAME/telegram`, home NAME's bot's webhook.

As with `agentd serve` (agentd/bridge/adapters.py, read it for the why; its
`telegram_update` reads the update for both): the home's `[bridge.telegram]` (enabled,
chats, owners, from its agentd.toml at its recorded head) says who may talk; an update is
acknowledged at once and answered through the Bot API's sendMessage once its turn ends;
each chat is its own conversation (`chat:tg-ID`); an owner's message runs trusted, anyone
else's untrusted, wrapped as untrusted data. What differs: the bot's token, its setWebhook
secret_token and the Bot API's base URL are the operator's (AGENTD_FLEET_HOOK_SECRETS,
`[NAME.telegram]`), since the token travels to that URL; the update_id makes the workflow
ID, so a redelivery queues nothing; the reply is sent by the bridge that took the update
(one stopped meanwhile sends none) and tried like a hook's callback, not through the
single-home outbox.
"""

from __future__ import annotations

from pathlib import Path  # a request's workdir: ignored, a turn runs in a fresh clone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from agentd.bridge.adapters import OBJECT_BODY, TELEGRAM_MAX, chat_turn, split, telegram_update
from agentd.bridge.auth import telegram_ok
from agentd.bridge.http import ApiError, unauthorized
from agentd.fleet import callbacks, db

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
        home, b, update = await fleet.chat_request(name, request, body, "telegram")
        msg = telegram_update(update)
        if isinstance(msg, dict):
            return JSONResponse(msg)
        if msg.chat_id is None or msg.chat_id not in b.telegram.chats:
            return JSONResponse({"ok": True, "ignored": "chat not allowed"})
        trusted = msg.user_id is not None and msg.user_id in b.telegram.owners
        # (a hook's key begins with its name, never with \0: the two never meet)
        wid, fresh = await fleet.accept(home.name, f"\0telegram\0{msg.update_id}",
                                        f"tg:{home.name}:{msg.user_id}",
                                        chat_turn(msg, trusted, Path(".")))
        if fresh:
            fleet.log("telegram", f"{home.name}: chat {msg.chat_id}: queued {wid}")
            fleet.spawn(_reply(fleet, bot, home.name, wid, msg.chat_id, msg.reply_to),
                        f"{home.name}: telegram chat {msg.chat_id}: run {wid}, its reply")
        return JSONResponse({"ok": True, "run": wid, "duplicate": not fresh})

    return api


async def _reply(fleet: Fleet, bot: TelegramBot, home: str, wid: str, chat_id: int,
                 reply_to: int | None) -> str:
    """Wait for the turn, then sendMessage its answer, one piece per 4096 characters, the
    first a reply to the message; each piece tried on network errors, 429 and 5xx."""
    result = await fleet.follow(wid, None)
    text = callbacks.payload(home, "telegram", wid, result)["data"]["result"]
    url = f"{bot.api_base}/bot{bot.bot_token}/sendMessage"

    async def send(i: int, part: str) -> int:
        payload: dict[str, Any] = {"chat_id": chat_id, "text": part}
        if i == 0 and reply_to is not None:
            payload["reply_parameters"] = {"message_id": reply_to,
                                           "allow_sending_without_reply": True}
        return int((await fleet.post(url, json=payload)).status_code)
    return await callbacks.pieces(split(text, TELEGRAM_MAX), send)
