"""Telegram and Slack: chats with the agent from a phone.

Both platforms want a 2xx within seconds and retry otherwise, so a message is
acknowledged at once and answered later through the platform's API (Telegram's
sendMessage, Slack's chat.postMessage; base URLs configurable, so tests run fake servers);
a reply that fails is retried or given up, and its state recorded: agentd/bridge/delivery.py.
A 503 (queue full) or 429 is left to the platform's retry, and the delivery id is not
kept for those, so the retry runs.

Who may talk: Telegram chats listed in `[bridge.telegram] chats`, Slack users listed in
`[bridge.slack] users`; anyone else is acknowledged and ignored (a refusal would only make
the platform retry). Trust: a message from a user listed in `owners` runs with the trusted
profile, like the CLI; every other allowed sender gets the untrusted one (the home
read-only but outbox/), its text wrapped as untrusted content.
Each chat (Telegram chat, Slack channel or thread) is its own conversation, `chat:tg-<id>`
or `chat:slack-<channel>[-<thread>]`, so budgets treat it as a person waiting.

What a delivery says is read in one place for this bridge and the fleet's
(agentd/fleet/bridge_telegram.py, bridge_slack.py): `telegram_update` and `slack_event`
check every field's type and give the message, or the acknowledgement (or Slack's
challenge) for a delivery with nothing to run; `chat_turn` makes its turn.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from agentd.bridge.auth import telegram_ok, verify_slack
from agentd.bridge.core import Bridge
from agentd.bridge.delivery import Target, check_slack, check_telegram, send
from agentd.bridge.hooks import wrap_untrusted
from agentd.bridge.http import ApiError, parse_json, require_json, unauthorized
from agentd.outbox import Delivery
from agentd.turn import TurnRequest

TELEGRAM_MAX = 4096
SLACK_MAX = 3900
OBJECT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "additionalProperties": True}}}}}


def split(text: str, size: int) -> list[str]:
    """Pieces of at most `size` characters, cut at a line break when there is one."""
    out = []
    while len(text) > size:
        cut = text.rfind("\n", size // 2, size)
        cut = cut if cut > 0 else size
        out.append(text[:cut])
        text = text[cut:].lstrip("\n")
    return [*out, text] if text else out or ["(no answer)"]


def telegram_id(value: object) -> int | None:
    """A Telegram id: a JSON integer, not a bool (`true == 1` would match chat 1)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class TelegramMessage:
    """A text message of a Telegram update, every field checked for its type."""

    update_id: int  # Telegram's delivery id: a redelivery has the same one
    chat_id: int | None
    user_id: int | None
    who: str  # "Telegram user NAME", for the untrusted wrapper
    text: str
    reply_to: int | None  # the message's id, for reply_parameters

    @property
    def key(self) -> str:
        """The conversation: one per chat."""
        return f"tg-{self.chat_id}"


@dataclass(frozen=True)
class SlackMessage:
    """A mention of the app or a direct message to it, from a Slack event callback."""

    event_id: str  # Slack's delivery id: a retry has the same one
    user: str
    who: str
    text: str  # the leading mention of the app taken off
    channel: str
    thread: str | None  # where the reply goes: the message's thread, or a mention's own
    key: str  # the conversation: `slack-<channel>[-<thread>]`, safe as a session name


Ack = dict[str, Any]  # the JSON a delivery with nothing to run is acknowledged with


def telegram_update(update: dict[str, Any]) -> TelegramMessage | Ack:
    """The text message in a Telegram update (parsed JSON), else the acknowledgement for
    an update that carries none. Raises 400 for an update without an integer update_id.
    The one reading for `agentd serve` and `agentd fleet serve`."""
    uid = telegram_id(update.get("update_id"))
    if uid is None:
        raise ApiError(400, "update_id must be an integer", "invalid_update")
    msg = update.get("message")
    if not isinstance(msg, dict) or not isinstance(msg.get("text"), str):
        return {"ok": True, "ignored": "not a text message"}
    chat = msg.get("chat") if isinstance(msg.get("chat"), dict) else {}
    sender = msg.get("from") if isinstance(msg.get("from"), dict) else {}
    user_id = telegram_id(sender.get("id"))
    return TelegramMessage(uid, telegram_id(chat.get("id")), user_id,
                           f"Telegram user {sender.get('username') or user_id}",
                           msg["text"], telegram_id(msg.get("message_id")))


def slack_event(data: dict[str, Any]) -> SlackMessage | Ack:
    """The message to the app in a Slack Events API request (parsed JSON), else the
    answer to give: the challenge of a url_verification, or an acknowledgement. Raises
    400 for a challenge that is not a short string. Bots' messages, edits and other
    subtypes, and channel messages that do not mention the app are acknowledged only."""
    if data.get("type") == "url_verification":
        challenge = data.get("challenge")
        if not isinstance(challenge, str) or len(challenge) > 512:
            raise ApiError(400, "challenge must be a string", "invalid_event")
        return {"challenge": challenge}
    event, eid = data.get("event"), data.get("event_id")
    if data.get("type") != "event_callback" or not isinstance(event, dict) or not (
            isinstance(eid, str) and 0 < len(eid) <= 128):
        return {"ok": True, "ignored": "not an event callback"}
    user, text, channel = event.get("user"), event.get("text"), event.get("channel")
    kind = event.get("type")
    if (event.get("bot_id") or event.get("subtype") or not isinstance(user, str)
            or not isinstance(text, str) or not isinstance(channel, str)
            or not (kind == "app_mention" or (kind == "message"
                                              and event.get("channel_type") == "im"))):
        return {"ok": True, "ignored": "not a message to the agent"}
    text = re.sub(r"^\s*<@[A-Z0-9]+>\s*", "", text) or text
    thread = event.get("thread_ts") or (event.get("ts") if kind == "app_mention" else None)
    thread = thread if isinstance(thread, str) else None
    key = f"slack-{channel}" + (f"-{thread}".replace(".", "_") if thread else "")
    key = re.sub(r"[^A-Za-z0-9_-]", "_", key)[:64]
    return SlackMessage(eid, user, f"Slack user {user}", text, channel, thread, key)


def chat_turn(msg: TelegramMessage | SlackMessage, trusted: bool, workdir: Path,
              delivery: Delivery | None = None) -> TurnRequest:
    """The turn for a chat message: its chat's own session; an owner's text as is and
    trusted, anyone else's wrapped as untrusted content and run untrusted."""
    task = msg.text if trusted else wrap_untrusted(
        f"A chat message from {msg.who}, who is not your owner,", msg.text)[1]
    return TurnRequest(task, workdir, f"chat:{msg.key}", session=f"chat-{msg.key}",
                       profile="trusted" if trusted else "untrusted", delivery=delivery)


def router(bridge: Bridge) -> APIRouter:
    api = APIRouter()

    @api.post("/telegram", openapi_extra=OBJECT_BODY, summary="Telegram Bot API webhook")
    async def telegram(request: Request) -> JSONResponse:
        t = bridge.settings().bridge.telegram
        if not t.enabled or not bridge.secrets.telegram_secret:
            raise ApiError(404, "not found", "not_found")
        body = await request.body()
        if not telegram_ok(request.headers.get("x-telegram-bot-api-secret-token"),
                           bridge.secrets.telegram_secret):
            bridge.warn("telegram", "tg:refused", "refused a request (bad secret token)")
            raise unauthorized()
        require_json(request.headers.get("content-type"))
        msg = telegram_update(parse_json(body, bridge.settings().bridge.max_json_depth))
        if isinstance(msg, dict):
            return JSONResponse(msg)
        if msg.chat_id is None or msg.chat_id not in t.chats:
            bridge.warn("telegram", f"tg-chat:{msg.chat_id}", f"ignored a message from chat "
                        f"{str(msg.chat_id)[:24]} (not in [bridge.telegram] chats)")
            return JSONResponse({"ok": True, "ignored": "chat not allowed"})
        trusted = msg.user_id is not None and msg.user_id in t.owners
        req = chat_turn(msg, trusted, bridge.home, Delivery(reply={
            "via": "telegram", "chat_id": msg.chat_id, "reply_to": msg.reply_to}))
        rid, fresh = bridge.accept("telegram", str(msg.chat_id), req, f"tg:{msg.update_id}",
                                   f"tg:{msg.user_id}")
        return JSONResponse({"ok": True, "run": rid, "duplicate": not fresh})

    @api.post("/slack/events", openapi_extra=OBJECT_BODY, summary="Slack Events API")
    async def slack(request: Request) -> JSONResponse:
        s = bridge.settings().bridge.slack
        if not s.enabled or not bridge.secrets.slack_signing:
            raise ApiError(404, "not found", "not_found")
        body = await request.body()
        why = verify_slack(bridge.secrets.slack_signing, request.headers, body)
        if why:
            bridge.warn("slack", "slack:refused", f"refused a request ({why})")
            raise unauthorized()
        require_json(request.headers.get("content-type"))
        msg = slack_event(parse_json(body, bridge.settings().bridge.max_json_depth))
        if isinstance(msg, dict):
            return JSONResponse(msg)
        if msg.user not in s.users:
            bridge.warn("slack", f"slack-user:{msg.user[:24]}", f"ignored a message from "
                        f"user {msg.user[:24]} (not in [bridge.slack] users)")
            return JSONResponse({"ok": True, "ignored": "user not allowed"})
        req = chat_turn(msg, msg.user in s.owners, bridge.home, Delivery(reply={
            "via": "slack", "channel": msg.channel, "thread_ts": msg.thread}))
        rid, fresh = bridge.accept("slack", msg.channel, req, f"slack:{msg.event_id}",
                                   f"slack:{msg.user}")
        return JSONResponse({"ok": True, "run": rid, "duplicate": not fresh})

    return api


async def deliver_telegram(bridge: Bridge, reply: dict[str, Any], text: str,
                           info: dict[str, Any]) -> None:
    """sendMessage, one piece per 4096 characters, the first a reply to the message;
    retried and recorded by agentd.bridge.delivery."""
    base = bridge.settings().bridge.telegram.api_base
    url = f"{base}/bot{bridge.secrets.telegram_token}/sendMessage"

    def piece(i: int, part: str) -> Callable[[], Awaitable[None]]:
        payload: dict[str, Any] = {"chat_id": reply["chat_id"], "text": part}
        if i == 0 and isinstance(reply.get("reply_to"), int):
            payload["reply_parameters"] = {"message_id": reply["reply_to"],
                                           "allow_sending_without_reply": True}

        async def post() -> None:
            check_telegram(await bridge.http.post(url, json=payload))
        return post

    await send(bridge, Target("telegram", str(reply["chat_id"]), info["id"]),
               [piece(i, part) for i, part in enumerate(split(text, TELEGRAM_MAX))])


async def deliver_slack(bridge: Bridge, reply: dict[str, Any], text: str,
                        info: dict[str, Any]) -> None:
    """chat.postMessage, one piece per 3900 characters, in the thread if there is one;
    retried and recorded by agentd.bridge.delivery."""
    url = f"{bridge.settings().bridge.slack.api_base}/chat.postMessage"
    headers = {"authorization": f"Bearer {bridge.secrets.slack_token}"}

    def piece(part: str) -> Callable[[], Awaitable[None]]:
        payload = {"channel": reply["channel"], "text": part}
        if reply.get("thread_ts"):
            payload["thread_ts"] = reply["thread_ts"]

        async def post() -> None:
            check_slack(await bridge.http.post(url, json=payload, headers=headers))
        return post

    await send(bridge, Target("slack", str(reply["channel"]), info["id"]),
               [piece(part) for part in split(text, SLACK_MAX)])
