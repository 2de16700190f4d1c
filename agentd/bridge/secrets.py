"""Where the bridge's secrets come from, and keeping them (and paths) out of what it sends.

Each secret is read from its environment variable, else from the file agentd.toml names
(never from agentd.toml itself, which is in git and readable by the agent). A file inside
the home is refused: the agent can read the home. Every loaded value is registered with
agentd/redact.py, so turns redact it too, and the bridge redacts every answer it sends.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentd import redact
from agentd.bridge.auth import decode_secret
from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config import Settings

MIN_LEN = 16
MAKE_ONE = "e.g. `openssl rand -hex 32`"
TELEGRAM_SECRET = r"[A-Za-z0-9_-]{16,256}"  # setWebhook's secret_token: what the Bot API takes
# Hidden from the sandbox (tmpfs over them), so a secret file there is out of the agent's
# sight; anywhere else on the read-only root it could be read with `cat`.
HIDDEN = ("/home", "/root", "/run", "/tmp", "/var/tmp")


@dataclass
class Secrets:
    token: str  # Bearer token for /v1 and /runs
    webhook: list[bytes] = field(default_factory=list)  # the shared webhook key(s)
    hooks: dict[str, list[bytes]] = field(default_factory=dict)  # per-hook keys
    telegram_token: str = ""
    telegram_secret: str = ""
    slack_signing: str = ""
    slack_token: str = ""
    values: dict[str, str] = field(default_factory=dict)  # name → raw value, for redaction
    warnings: list[str] = field(default_factory=list)


def _read(home: Path, var: str, file: str, what: str, warnings: list[str]) -> str:
    value = os.environ.get(var, "").strip() if var else ""
    if value or not file:
        return value
    path = Path(file).expanduser()
    if not path.is_absolute():
        raise AgentdError(f"{what}: give an absolute path (or ~/...), not {file!r}")
    path = path.resolve()
    if path.is_relative_to(home.resolve()):
        raise AgentdError(f"{what}: {file} is inside the home, where the agent can read it; "
                          "keep it elsewhere (e.g. ~/.config/agentd/)")
    try:
        st = path.stat()
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise AgentdError(f"{what}: cannot read {file} ({getattr(e, 'strerror', e)})") from None
    if st.st_mode & 0o077:
        warnings.append(f"{what}: {file} is readable by other users (chmod 600 it)")
    if not str(path).startswith(HIDDEN):
        warnings.append(f"{what}: {file} is outside /home, /root and /run, so sandboxed "
                        "commands can read it; move it under ~/.config/agentd/")
    return value


def webhook_keys(value: str, what: str, exit_code: int = 2) -> list[bytes]:
    """One or more secrets (whsec_… or raw) separated by whitespace (old and new while
    rotating). `exit_code` is the refusal's: 2 for the bridge's settings, 1 for
    `agentd fleet serve`'s environment (agentd.fleet.bridge)."""
    keys = []
    for part in value.split():
        try:
            key = decode_secret(part)
        except ValueError:
            raise AgentdError(f"{what}: a whsec_ secret must be base64 after the prefix",
                              exit_code) from None
        if len(key) < MIN_LEN:
            raise AgentdError(f"{what} is too short: use at least {MIN_LEN} bytes ({MAKE_ONE})",
                              exit_code)
        keys.append(key)
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load(home: Path, settings: Settings) -> Secrets:
    """Every secret the bridge needs; AgentdError (one line saying why) when the bridge must
    not start: no token, a weak one, or an enabled adapter missing its secrets."""
    b = settings.bridge
    warn: list[str] = []
    token = _read(home, "AGENTD_BRIDGE_TOKEN", b.token_file, "bridge token", warn)
    where = ("" if is_loopback(b.host) else
             f"refusing to listen on {b.host} (beyond this machine) without a token: ")
    if not token:
        raise AgentdError(f"bridge: {where}no token: set AGENTD_BRIDGE_TOKEN or [bridge] "
                          f"token_file ({MAKE_ONE}); it guards /v1 and /runs")
    if len(token) < MIN_LEN or any(c.isspace() for c in token):
        raise AgentdError(f"bridge: {where}the token must be {MIN_LEN}+ characters without "
                          f"spaces ({MAKE_ONE})")
    s = Secrets(token, values={"AGENTD_BRIDGE_TOKEN": token}, warnings=warn)
    shared = _read(home, "AGENTD_WEBHOOK_SECRET", b.secret_file, "webhook secret", warn)
    s.webhook = webhook_keys(shared, "the webhook secret")
    s.values["AGENTD_WEBHOOK_SECRET"] = shared
    for name, hook in b.hooks.items():
        own = _read(home, hook.secret_env, hook.secret_file, f"bridge.hooks.{name} secret", warn)
        if own:
            s.hooks[name] = webhook_keys(own, f"the secret of hook {name}")
            s.values[f"HOOK_{name.upper()}_SECRET"] = own
        elif hook.secret_env or hook.secret_file:
            raise AgentdError(f"bridge.hooks.{name}: its secret is configured but empty")
    if b.telegram.enabled:
        t = b.telegram
        s.telegram_token = _read(home, "AGENTD_TELEGRAM_BOT_TOKEN", t.bot_token_file,
                                 "telegram bot token", warn)
        s.telegram_secret = _read(home, "AGENTD_TELEGRAM_SECRET", t.secret_file,
                                  "telegram secret", warn)
        if not s.telegram_token or not re.fullmatch(TELEGRAM_SECRET, s.telegram_secret or "-"):
            raise AgentdError("bridge.telegram: needs the bot token (AGENTD_TELEGRAM_BOT_TOKEN) "
                              "and a secret of 16-256 letters, digits, _ or - "
                              "(AGENTD_TELEGRAM_SECRET, given to setWebhook as secret_token)")
        if not t.chats:
            warn.append("bridge.telegram: no chats allowed yet ([bridge.telegram] chats)")
        s.values.update(AGENTD_TELEGRAM_BOT_TOKEN=s.telegram_token,
                        AGENTD_TELEGRAM_SECRET=s.telegram_secret)
    if b.slack.enabled:
        sl = b.slack
        s.slack_signing = _read(home, "AGENTD_SLACK_SIGNING_SECRET", sl.signing_secret_file,
                                "slack signing secret", warn)
        s.slack_token = _read(home, "AGENTD_SLACK_BOT_TOKEN", sl.bot_token_file,
                              "slack bot token", warn)
        if not s.slack_signing or not s.slack_token:
            raise AgentdError("bridge.slack: needs the signing secret "
                              "(AGENTD_SLACK_SIGNING_SECRET) and the bot token "
                              "(AGENTD_SLACK_BOT_TOKEN)")
        if not sl.users:
            warn.append("bridge.slack: no users allowed yet ([bridge.slack] users)")
        s.values.update(AGENTD_SLACK_SIGNING_SECRET=s.slack_signing,
                        AGENTD_SLACK_BOT_TOKEN=s.slack_token)
    for name, value in s.values.items():
        if value:
            redact.register(name, value)
    return s


_PATH = re.compile(r"(?<![\w:/.~-])(?:~|/)(?:[\w.@+-]+/)*[\w.@+-]+/?")


def scrub(text: str, redactor: redact.Redactor) -> str:
    """An error message fit for a client: secrets redacted, file paths replaced (they say
    how this machine is laid out)."""
    return _PATH.sub("<path>", redactor.redact(text))


class StreamRedactor:
    """Redacts text that arrives in pieces, where a secret may be split across two.

    It holds back what could still become a secret: everything after the last whitespace
    (keys and tokens have none), a PEM block until its END line, and, when a configured
    secret contains whitespace, that many characters. `feed` returns what is safe to send
    now; `flush` the rest, at the end."""

    def __init__(self, redactor: redact.Redactor, secrets: list[str]):
        self.redactor = redactor
        self.hold = max((len(v) for v in secrets if any(c.isspace() for c in v)), default=0)
        self.pending = ""

    def feed(self, delta: str) -> str:
        self.pending += delta
        text = self.pending
        cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t")) + 1
        if self.hold:
            cut = min(cut, len(text) - self.hold)
        begin = text.rfind("-----BEGIN")
        if begin != -1 and "-----END" not in text[begin:]:
            cut = min(cut, begin)
        for m in self.redactor._re.finditer(text):
            if m.start() < cut < m.end():
                cut = m.start()
        if cut <= 0:
            return ""
        self.pending = text[cut:]
        return self.redactor.redact(text[:cut])

    def flush(self) -> str:
        out, self.pending = self.redactor.redact(self.pending), ""
        return out
