"""`[bridge]` of agentd.toml: the chat bridge (agentd/bridge/), with its optional
`[bridge.hooks.<name>]`, `[bridge.telegram]` and `[bridge.slack]` tables.

Apart from settings.py only to keep each module short (like costs.py). Secrets are
never settings: agentd.toml names the files holding them (or the environment has them), so
the file can be committed and shown to the agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agentd.config.tables import fill, typed, typed_list
from agentd.config.values import Duration
from agentd.errors import AgentdError

HOOK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class HookSettings:
    """`[bridge.hooks.<name>]`: optional; any name works with the shared secret."""

    secret_file: str = ""  # this hook's own secret(s); else the shared webhook secret
    secret_env: str = ""  # or the environment variable holding them
    callback_url: str = ""  # receives the result, signed like the request
    prompt: str = ""  # the task; {event} is replaced by the wrapped event, {name} by the hook


@dataclass
class TelegramSettings:
    """`[bridge.telegram]`: POST /telegram, replies through the Bot API's sendMessage."""

    enabled: bool = False
    bot_token_file: str = ""  # else $AGENTD_TELEGRAM_BOT_TOKEN
    secret_file: str = ""  # setWebhook's secret_token; else $AGENTD_TELEGRAM_SECRET
    api_base: str = "https://api.telegram.org"
    chats: list[int] = field(default_factory=list)  # chat ids that may talk to the agent
    owners: list[int] = field(default_factory=list)  # user ids whose messages run trusted


@dataclass
class SlackSettings:
    """`[bridge.slack]`: POST /slack/events, replies through chat.postMessage."""

    enabled: bool = False
    signing_secret_file: str = ""  # else $AGENTD_SLACK_SIGNING_SECRET
    bot_token_file: str = ""  # else $AGENTD_SLACK_BOT_TOKEN
    api_base: str = "https://slack.com/api"
    users: list[str] = field(default_factory=list)  # user ids that may talk to the agent
    owners: list[str] = field(default_factory=list)  # user ids whose messages run trusted


@dataclass
class BridgeSettings:
    """`[bridge]`: HTTP endpoints for chats and events (off by default)."""

    enabled: bool = False  # run it inside the daemon; `agentd serve` runs it alone
    host: str = "127.0.0.1"
    port: int = 8787
    token_file: str = ""  # the Bearer token of /v1 and /runs; else $AGENTD_BRIDGE_TOKEN
    secret_file: str = ""  # the shared webhook secret; else $AGENTD_WEBHOOK_SECRET
    max_body: int = 1_048_576
    max_json_depth: int = 32
    ip_rate: float = 20.0  # requests per second per client address, before auth
    ip_burst: int = 200
    sender_rate: float = 2.0  # turns per second per sender (conversation, hook, chat user)
    sender_burst: int = 30
    retry_after: int = 30  # seconds, when the queue is full
    show_tools: bool = False  # stream tool steps as text in chat completions
    max_event_chars: int = 50_000  # of a webhook's JSON handed to the model
    dedupe_ttl: Duration = Duration("48h")  # how long delivery ids are remembered
    trusted_proxies: list[str] = field(default_factory=list)  # trust X-Forwarded-For from
    header_timeout: Duration = Duration("10s")  # to send a request head whole, else closed
    max_connections_per_ip: int = 50  # open at once from one address (an IPv6 /64)
    max_connections: int = 1000  # open at once in all; the longest-idle make room
    hooks: dict[str, HookSettings] = field(default_factory=dict)
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)


def parse_bridge(b: BridgeSettings, value: Any) -> None:
    """Fill `b` from the `[bridge]` table; raise AgentdError naming a bad key."""
    table = dict(typed("bridge", value, dict))
    for name, hook in typed("bridge.hooks", table.pop("hooks", {}), dict).items():
        if not HOOK_NAME.fullmatch(name):
            raise AgentdError(f"bridge.hooks.{name}: a hook name is 1-64 letters, digits, _ "
                              "or -")
        h = fill(HookSettings(), typed(f"bridge.hooks.{name}", hook, dict),
                  f"bridge.hooks.{name}")
        if h.callback_url and not h.callback_url.startswith(("http://", "https://")):
            raise AgentdError(f"bridge.hooks.{name}.callback_url must be an http(s) URL")
        b.hooks[name] = h
    for key, kind in (("telegram", int), ("slack", str)):
        sub = dict(typed(f"bridge.{key}", table.pop(key, {}), dict))
        target = getattr(b, key)
        for lst in ("chats", "owners") if key == "telegram" else ("users", "owners"):
            if lst in sub:
                setattr(target, lst, typed_list(f"bridge.{key}.{lst}", sub.pop(lst), kind))
        fill(target, sub, f"bridge.{key}")
        if not target.api_base.startswith(("http://", "https://")):
            raise AgentdError(f"bridge.{key}.api_base must be an http(s) URL")
        target.api_base = target.api_base.rstrip("/")
    if "trusted_proxies" in table:
        b.trusted_proxies = typed_list("bridge.trusted_proxies", table.pop("trusted_proxies"),
                                       str)
    fill(b, table, "bridge")
    if not b.host.strip():
        raise AgentdError("bridge.host must not be empty (127.0.0.1 by default)")
    if not 0 <= b.port <= 65535:
        raise AgentdError("bridge.port must be between 0 and 65535")
    if b.max_body < 1024:
        raise AgentdError("bridge.max_body must be at least 1024 bytes")
    if not 2 <= b.max_json_depth <= 512:
        raise AgentdError("bridge.max_json_depth must be between 2 and 512")
    if b.ip_rate <= 0 or b.sender_rate <= 0 or b.ip_burst < 1 or b.sender_burst < 1:
        raise AgentdError("bridge rates must be positive and bursts at least 1")
    if b.retry_after < 1 or b.max_event_chars < 100:
        raise AgentdError("bridge.retry_after must be at least 1, max_event_chars at least 100")
    if not 1 <= b.header_timeout.seconds <= 600:
        raise AgentdError("bridge.header_timeout must be between 1s and 10m")
    if b.max_connections_per_ip < 1 or b.max_connections < 16:
        raise AgentdError("bridge.max_connections_per_ip must be at least 1, "
                          "max_connections at least 16")
    if b.dedupe_ttl.seconds < 86400:
        raise AgentdError("bridge.dedupe_ttl must be at least 24h: senders retry for a day")
