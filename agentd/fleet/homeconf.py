"""What `agentd fleet serve` reads of each home: its agentd.toml's `[bridge]` table (for
`[bridge.hooks.NAME]` prompt and callback_url, max_event_chars, max_json_depth), and the
hooks' own secrets, which are never in a home.

The settings. A home moved from `agentd serve` to the fleet keeps its agentd.toml, so its
hooks must behave the same. The file is read at the head the fleet recorded for the home
(a worker sets it after each turn's push and each refresh), else at the branch's head as
fetched now; once per head (cached), in the bridge's own mirror cache (workspace.py: a
bare mirror, a fresh clone checked out by git the confined way) and parsed by the
workers' own reader, schedule.settings_of, through homefs: the file is agent-written (a
symlink to a secret, a FIFO, a huge file are refused). A broken file gives the defaults,
as the tick's reader does, and says why once per head; the turn itself then fails on it.

The secrets. agentd.toml names a hook's secret file or variable in a single home; in the
fleet the agent must not choose which of the serving machine's files or variables
authenticates its hooks, so those two keys are ignored and the per-hook secrets are the
operator's: a TOML file named by AGENTD_FLEET_HOOK_SECRETS, a table per home and a key
per hook (`[alpha]` / `github = "whsec_..."`, several space-separated while rotating). A
hook without one uses AGENTD_FLEET_WEBHOOK_SECRET.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.bridge.secrets import TELEGRAM_SECRET
from agentd.config import HOOK_NAME
from agentd.config.bridge import SlackSettings, TelegramSettings
from agentd.errors import AgentdError
from agentd.fleet import db, schedule, workspace

KEEP = 256  # heads whose settings stay cached (one per home is the steady state)
SECRETS_ENV = "AGENTD_FLEET_HOOK_SECRETS"


class HomeSettings:
    """A home's Settings at its recorded head, cached per (home, head). Blocking (git):
    call it from a worker thread."""

    def __init__(self, cache: Path, warn: Callable[[str], None]):
        self.cache, self.warn = cache, warn
        for left in cache.glob("conf-*"):  # a bridge killed while reading one
            shutil.rmtree(left, ignore_errors=True)
        self._known: dict[tuple[str, str], Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, home: db.HomeRow) -> Any:
        with self._lock:
            lock = self._locks.setdefault(home.name, threading.Lock())
        with lock:  # one reader per home: a burst of its hooks checks out once
            head = home.head
            found = self._known.get((home.name, head)) if head is not None else None
            if found is not None:
                return found
            if head is None:  # no worker recorded it yet: the branch's head now
                head = workspace.sync_mirror(self.cache, home.name, home.git_url, home.branch)
            found = self._known.get((home.name, head))
            if found is not None:
                return found
            try:
                settings = self._read(home, head)
            except AgentdError:  # pushed by a worker after this mirror last fetched
                workspace.sync_mirror(self.cache, home.name, home.git_url, home.branch)
                settings = self._read(home, head)
            with self._lock:
                if len(self._known) >= KEEP:
                    self._known.pop(next(iter(self._known)))
                self._known[(home.name, head)] = settings
            return settings

    def _read(self, home: db.HomeRow, head: str) -> Any:
        from agentd.homefs import Root

        scratch = Path(tempfile.mkdtemp(prefix="conf-", dir=self.cache))
        try:
            clone = workspace.checkout(self.cache, home.name, head, scratch / "home",
                                       home.branch)
            with Root(clone) as root:
                settings, problem = schedule.settings_of(root)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if problem:
            self.warn(f"{home.name} at {head[:12]}: {problem}")
        return settings


def hook_settings_of(bridge: Any, hook: str) -> tuple[str, str]:
    """(prompt, callback_url) of `[bridge.hooks.HOOK]` in a home's `[bridge]`, empty when
    the home has none."""
    found = bridge.hooks.get(hook)
    return (found.prompt, found.callback_url) if found is not None else ("", "")


@dataclass
class TelegramBot:
    """A home's Telegram bot: its token, the secret_token given to setWebhook, and the
    Bot API's base URL (the operator's, never the home's: the token travels to it)."""

    bot_token: str
    secret: str
    api_base: str = TelegramSettings.api_base


@dataclass
class SlackBot:
    """A home's Slack app: its signing secret, its bot token, the Web API's base URL (the
    operator's, as for Telegram)."""

    signing_secret: str
    bot_token: str
    api_base: str = SlackSettings.api_base


@dataclass
class Secrets:
    hooks: dict[tuple[str, str], list[bytes]]  # (home, hook) -> its own keys
    telegram: dict[str, TelegramBot]  # home -> its bot
    slack: dict[str, SlackBot]  # home -> its app


def load_secrets(keys_of: Callable[[str, str], list[bytes]]) -> Secrets:
    """The per-hook keys, Telegram bots and Slack apps of the homes, from the file
    AGENTD_FLEET_HOOK_SECRETS names; `keys_of` decodes one key (bridge.hook_keys).
    AgentdError in one line when the file is unreadable or malformed: serving on half a
    secret file would refuse (or accept) the wrong deliveries."""
    name = os.environ.get(SECRETS_ENV, "").strip()
    out = Secrets({}, {}, {})
    if not name:
        return out
    path = Path(name).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise AgentdError(f"{SECRETS_ENV}: cannot read {name} "
                          f"({getattr(e, 'strerror', None) or e})", 1) from None
    for home, table in data.items():
        if not db.NAME.match(home) or not isinstance(table, dict):
            raise AgentdError(f"{SECRETS_ENV}: [{home}] is not a home's table of hooks", 1)
        for hook, value in table.items():
            if hook == "telegram" and isinstance(value, dict):
                out.telegram[home] = _telegram(home, value)
                continue
            if hook == "slack" and isinstance(value, dict):
                out.slack[home] = _slack(home, value)
                continue
            if not HOOK_NAME.fullmatch(hook) or not isinstance(value, str) or not value.strip():
                raise AgentdError(f"{SECRETS_ENV}: {home}.{hook} must be a hook name with a "
                                  "secret string", 1)
            out.hooks[(home, hook)] = keys_of(value, f"{SECRETS_ENV}: {home}.{hook}")
    return out


def _made(kind: type, where: str, table: dict[str, Any]) -> Any:
    """`kind` from a table of strings, api_base an http(s) URL; else one line saying why."""
    try:
        made = kind(**table)
    except TypeError:
        raise AgentdError(f"{where} takes {', '.join(kind.__dataclass_fields__)}", 1) from None
    if not all(isinstance(v, str) for v in vars(made).values()):
        raise AgentdError(f"{where}: its values are strings", 1)
    if not made.api_base.startswith(("https://", "http://")):
        raise AgentdError(f"{where}: api_base must be an http(s) URL", 1)
    made.api_base = made.api_base.rstrip("/")
    return made


def _slack(home: str, table: dict[str, Any]) -> SlackBot:
    where = f"{SECRETS_ENV}: [{home}.slack]"
    app: SlackBot = _made(SlackBot, where, table)
    if len(app.signing_secret) < 16 or not app.bot_token.startswith("xoxb-"):
        raise AgentdError(f"{where}: needs the signing secret and the bot token (xoxb-...)",
                          1)
    return app


def _telegram(home: str, table: dict[str, Any]) -> TelegramBot:
    where = f"{SECRETS_ENV}: [{home}.telegram]"
    bot: TelegramBot = _made(TelegramBot, where, table)
    if not re.fullmatch(r"[0-9]+:[A-Za-z0-9_-]{8,}", bot.bot_token) or not re.fullmatch(
            TELEGRAM_SECRET, bot.secret):
        raise AgentdError(f"{where}: needs the bot token (digits:letters) and a secret of "
                          "16-256 letters, digits, _ or -", 1)
    return bot
