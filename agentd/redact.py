"""Redaction: secrets never reach the model, the transcripts or the terminal verbatim.

The sandbox keeps keys out of the command's environment, but a key can still show up in
tool output: a `.env` file the agent reads, a config a user pasted into the workdir, a
token in a log. So every tool result and every transcript row goes through a Redactor,
which replaces

- the exact values of the secrets agentd itself loaded (each provider's `key_env`, every
  variable the bridge reads a secret from: its token, the webhook, Telegram and Slack
  secrets, each hook's `secret_env`) with `[REDACTED:<VARIABLE>]`, read from the
  environment of every process, so a CLI turn in the shell that also runs the bridge
  hides them before the bridge ever loaded them, and
- common key shapes (OpenAI, Anthropic, GitHub, Slack, Telegram bot tokens, AWS access
  keys, PEM private keys) with `[REDACTED:<kind>]`, because a leaked key is as bad when it
  isn't ours.

Values shorter than 8 characters are ignored: redacting "local" or "1234" everywhere
would mangle ordinary text and protect nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentd.config import Settings

MIN_SECRET_LEN = 8
# every variable agentd/bridge/secrets.py reads (tests/test_redact.py checks the list)
EXTRA_SECRET_VARS = ("AGENTD_BRIDGE_TOKEN", "AGENTD_WEBHOOK_SECRET",
                     "AGENTD_TELEGRAM_BOT_TOKEN", "AGENTD_TELEGRAM_SECRET",
                     "AGENTD_SLACK_BOT_TOKEN", "AGENTD_SLACK_SIGNING_SECRET")
WELL_KNOWN_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY",
                   *EXTRA_SECRET_VARS)

_NOT_KEY_CHAR = r"(?<![A-Za-z0-9_-])"  # a key starts a token: "task-..." is not "sk-..."
PATTERNS: tuple[tuple[str, str], ...] = (
    ("private-key", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
                    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)"),
    ("anthropic-key", _NOT_KEY_CHAR + r"sk-ant-[A-Za-z0-9_-]{20,}"),
    # random bodies of 20+ characters, so one digit is as good as certain
    ("openai-key", _NOT_KEY_CHAR + r"sk-(?!ant-)(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}"),
    ("github-token", _NOT_KEY_CHAR + r"gh[pousr]_[A-Za-z0-9]{36,}"),
    ("github-token", _NOT_KEY_CHAR + r"github_pat_[A-Za-z0-9_]{22,}"),
    ("slack-token", _NOT_KEY_CHAR + r"xox[abprs]-[A-Za-z0-9-]{10,}"),
    # the bot's numeric id, a colon, 35 characters of base64url (BotFather's shape); after
    # a letter too, as in the Bot API's URLs (/bot<token>/sendMessage)
    ("telegram-bot-token", r"(?<![0-9:])\d{6,12}:[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
    ("aws-access-key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
)


class Redactor:
    """Finds and replaces secrets in text. `secrets` maps a name (the environment variable)
    to its value; the key-shape patterns are always on."""

    def __init__(self, secrets: dict[str, str]):
        values = sorted(
            ((v, k) for k, v in secrets.items() if isinstance(v, str) and len(v) >= MIN_SECRET_LEN),
            key=lambda vk: -len(vk[0]),  # longest first: a key containing another wins
        )
        self.names: list[str] = [name for _, name in values] + [n for n, _ in PATTERNS]
        parts = [re.escape(v) for v, _ in values] + [p for _, p in PATTERNS]
        self._re = re.compile("|".join(f"({p})" for p in parts), re.DOTALL)

    def _name(self, m: re.Match[str]) -> str:
        return self.names[(m.lastindex or 1) - 1]

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by `[REDACTED:NAME]`."""
        if not text:
            return text
        return self._re.sub(lambda m: f"[REDACTED:{self._name(m)}]", text)

    def find(self, text: str) -> list[str]:
        """The names of the secrets in `text`, each once, in order of first appearance."""
        seen: dict[str, None] = {}
        for m in self._re.finditer(text or ""):
            seen.setdefault(self._name(m), None)
        return list(seen)

    def redact_data(self, data: Any) -> Any:
        """A copy of JSON-like data with every string redacted (keys included)."""
        if isinstance(data, str):
            return self.redact(data)
        if isinstance(data, dict):
            return {self.redact(k) if isinstance(k, str) else k: self.redact_data(v)
                    for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.redact_data(v) for v in data]
        return data


def register(name: str, value: str) -> None:
    """A secret agentd loaded from a file rather than the environment (the bridge's token
    and webhook secrets): from now on every Redactor of this process replaces it too."""
    _registered[name] = value


def _from_env(names: Iterable[str]) -> Redactor:
    secrets = {**_registered, **{n: os.environ[n] for n in names if n and os.environ.get(n)}}
    key = tuple(sorted(secrets.items()))
    cached = _cache.get(key)
    if cached is None:
        cached = _cache[key] = Redactor(secrets)
    return cached


_cache: dict[tuple[tuple[str, str], ...], Redactor] = {}
_registered: dict[str, str] = {}


def from_settings(settings: Settings) -> Redactor:
    """The Redactor for a turn: every configured provider's key variable, the bridge,
    webhook, Telegram and Slack secrets, each hook's `secret_env`, the well-known key
    variables, and the key-shape patterns."""
    names = [ep.key_env for ep in settings.providers.values() if ep.key_env]
    names += [h.secret_env for h in settings.bridge.hooks.values() if h.secret_env]
    return _from_env([*names, *WELL_KNOWN_VARS])


def default() -> Redactor:
    """Used when a caller passed no Redactor: redaction is on by default, never silently
    off. Covers the well-known variables; `from_settings` adds custom providers' keys."""
    return _from_env(WELL_KNOWN_VARS)
