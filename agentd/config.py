"""agentd.toml + environment → one typed Settings object.

Parsing is strict: an unknown key or a wrong type is a one-line error naming the key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agentd.config_bridge import BridgeSettings, parse_bridge
from agentd.config_costs import (
    BudgetSettings,
    CompactionSettings,
    ThrottleSettings,
    parse_costs,
)
from agentd.errors import AgentdError
from agentd.tools import SandboxSettings

CONFIG_NAME = "agentd.toml"


@dataclass
class Endpoint:
    """A provider: the built-in `anthropic`, `openai`, `ollama`, or a named OpenAI-compatible
    server (llama.cpp, vLLM, LM Studio) used as `<name>:<model>`."""

    protocol: str = "openai"
    base_url: str | None = None
    key_env: str | None = None
    context_window: int | None = None
    max_retries: int = 2


@dataclass
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0


BUILTIN_ENDPOINTS: dict[str, Endpoint] = {
    "anthropic": Endpoint("anthropic", None, "ANTHROPIC_API_KEY"),
    "openai": Endpoint("openai", None, "OPENAI_API_KEY"),
    "ollama": Endpoint("openai", "http://localhost:11434/v1", None),
}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, where: str = "duration") -> float:
    """Seconds in "90s", "15m", "2h", "1d" (or "1h30m", "0.5s"). One syntax everywhere:
    agentd.toml, cron files and HEARTBEAT.md. A bare number is refused: minutes or seconds
    would be a guess."""
    s = str(text).strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise AgentdError(f"{where}: {text!r} is not a duration (use 90s, 15m, 2h or 1d)")
    if total < 0.1:
        raise AgentdError(f"{where}: {text!r} is shorter than 0.1s")
    return total


def parse_hours(text: str, where: str = "active_hours") -> tuple[int, int] | None:
    """"08:00-22:00" → (480, 1320), minutes after midnight; the end may be before the start
    (a window across midnight). Empty → None: always active."""
    if not text.strip():
        return None
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        raise AgentdError(f"{where}: {text!r} is not HH:MM-HH:MM (e.g. \"08:00-22:00\")")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or (h1 == 24 and m1) or (h2 == 24 and m2):
        raise AgentdError(f"{where}: {text!r} has an impossible time")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise AgentdError(f"{where}: {text!r} is an empty window; leave it empty for always")
    return start, end


def check_timezone(name: str, where: str = "timezone") -> None:
    """An IANA zone name ("Europe/Berlin"); empty means this machine's zone."""
    if not name:
        return
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AgentdError(f"{where}: unknown time zone {name!r} (e.g. \"Europe/Berlin\", "
                          "\"UTC\")") from None


@dataclass
class HeartbeatSettings:
    """`[heartbeat]`: the periodic wake-up that reads memory/HEARTBEAT.md (see the daemon)."""

    enabled: bool = True
    every: str = "30m"
    active_hours: str = ""
    timezone: str = ""
    model: str = ""
    gate_timeout: str = "30s"


@dataclass
class DaemonSettings:
    """`[daemon]`: the queue, cron catch-up, `agentd stop`, the inbox and file watching."""

    queue_limit: int = 100
    catch_up: str = "6h"
    stop_timeout: str = "5m"
    inbox_max_bytes: int = 200_000
    watch: str = "auto"


@dataclass
class QuotaSettings:
    """`[quota]`: the disk limits of untrusted turns (agentd/quota.py); 0 means no limit."""

    untrusted_outbox_mb: int = 20  # per turn: what it creates or changes in outbox/, scratch
    untrusted_outbox_files: int = 100  # per turn, likewise
    home_mb: int = 1024  # a home over this (.git included) refuses untrusted turns


@dataclass
class GitSettings:
    """`[git]`: what one commit may take. Bigger files stay on disk, uncommitted and named
    in the commit and the day log: one turn must not bloat the home's history for good."""

    max_file_mb: int = 10
    max_commit_mb: int = 50


@dataclass
class Settings:
    model: str | None = None
    max_steps: int = 30
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    providers: dict[str, Endpoint] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    budget_fallback: str | None = None
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    throttling: ThrottleSettings = field(default_factory=ThrottleSettings)
    compaction: CompactionSettings = field(default_factory=CompactionSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    bridge: BridgeSettings = field(default_factory=BridgeSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    git: GitSettings = field(default_factory=GitSettings)

    def endpoint(self, name: str) -> Endpoint | None:
        return self.providers.get(name)


def _typed(where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise AgentdError(f"{where} must be a {_kind_name(kind)}, not {value!r}")
    if not isinstance(value, kind):
        raise AgentdError(f"{where} must be a {_kind_name(kind)}, not {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "number", float: "number", str: "string", bool: "true/false", dict: "table",
             list: "list"}
    if kind == (int, str):
        return "number or name"
    return names.get(kind, "value") if isinstance(kind, type) else "value"


_KINDS: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "float": float, "bool": bool, "str | None": str, "int | None": int,
    "float | None": float, "list[str]": list, "int | str": (int, str),
    "int | str | None": (int, str),
}


def _fill(obj: Any, table: dict[str, Any], where: str) -> Any:
    """Copy a TOML table onto a dataclass instance, checking names and types."""
    hints = {f.name: f for f in fields(obj)}
    for key, value in table.items():
        if key not in hints:
            known = ", ".join(hints)
            raise AgentdError(f"unknown setting {where}.{key} in {CONFIG_NAME} (known: {known})")
        kind = _KINDS[str(hints[key].type)]
        setattr(obj, key, _typed(f"{where}.{key}", value, kind))
    return obj


def parse_settings(data: dict[str, Any]) -> Settings:
    """Build Settings from a parsed agentd.toml (a dict); raise AgentdError on bad input."""
    s = Settings(providers={k: Endpoint(**vars(v)) for k, v in BUILTIN_ENDPOINTS.items()})
    for key, value in data.items():
        if key == "model":
            s.model = _typed("model", value, str) or None
        elif key == "max_steps":
            s.max_steps = _typed("max_steps", value, int)
        elif key == "sandbox":
            _fill(s.sandbox, _typed("sandbox", value, dict), "sandbox")
        elif key == "providers":
            for name, table in _typed("providers", value, dict).items():
                ep = s.providers.get(name) or Endpoint()
                s.providers[name] = _fill(ep, _typed(f"providers.{name}", table, dict),
                                          f"providers.{name}")
        elif key == "prices":
            for model, table in _typed("prices", value, dict).items():
                t = _typed(f"prices.{model}", table, dict)
                if "input" not in t or "output" not in t:
                    raise AgentdError(f"prices.{model} needs input and output (USD per MTok)")
                s.prices[model] = _fill(Price(0.0, 0.0), t, f"prices.{model}")
        elif key in ("fallbacks", "budget_fallback", "budget", "throttling", "compaction"):
            parse_costs(s, key, value)
        elif key == "heartbeat":
            _fill(s.heartbeat, _typed("heartbeat", value, dict), "heartbeat")
        elif key == "daemon":
            _fill(s.daemon, _typed("daemon", value, dict), "daemon")
        elif key == "bridge":
            parse_bridge(s, value)
        elif key == "quota":
            _fill(s.quota, _typed("quota", value, dict), "quota")
        elif key == "git":
            _fill(s.git, _typed("git", value, dict), "git")
        else:
            raise AgentdError(f"unknown setting {key!r} in {CONFIG_NAME}")
    _check_daemon(s)
    if s.sandbox.mode not in ("bwrap", "off"):
        raise AgentdError(f"sandbox.mode must be \"bwrap\" or \"off\", not {s.sandbox.mode!r}")
    _check_network(s)
    _check_owner(s)
    if s.sandbox.tmp_size_mb < 1:
        raise AgentdError("sandbox.tmp_size_mb must be at least 1")
    for key in ("cpu_seconds", "memory_mb", "file_size_mb", "open_files", "processes",
                "output_limit"):
        if getattr(s.sandbox, key) < 0:
            raise AgentdError(f"sandbox.{key} must not be negative")
    for key, value in vars(s.quota).items():
        if value < 0:
            raise AgentdError(f"quota.{key} must not be negative (0 means no limit)")
    if s.max_steps < 1:
        raise AgentdError("max_steps must be at least 1")
    if s.git.max_file_mb < 1 or s.git.max_commit_mb < 1:
        raise AgentdError("git.max_file_mb and git.max_commit_mb must be at least 1")
    for name, ep in s.providers.items():
        if ep.protocol not in ("openai", "anthropic"):
            raise AgentdError(f"providers.{name}.protocol must be \"openai\" or \"anthropic\"")
    return s


def _check_network(s: Settings) -> None:
    """[sandbox] network and allow_domains, each problem as one line."""
    from agentd.tools.netproxy import domain_problem

    net, domains = s.sandbox.network, s.sandbox.allow_domains
    if net not in ("none", "allowlist", "full"):
        raise AgentdError(f'sandbox.network must be "none", "allowlist" or "full", not {net!r}')
    for domain in domains:
        problem = domain_problem(domain)
        if problem:
            raise AgentdError(f"sandbox.allow_domains: {problem}")
    if net == "allowlist" and not domains:
        raise AgentdError('sandbox.network = "allowlist" needs sandbox.allow_domains, e.g. '
                          '["pypi.org", "*.github.com"]')


def _check_owner(s: Settings) -> None:
    """[sandbox] uid and gid name a real, non-root user and group (checked even when agentd
    is not root, so a typo shows before the day it matters)."""
    from agentd.tools.owner import resolve_owner

    try:
        resolve_owner(s.sandbox.uid, s.sandbox.gid)
    except ValueError as e:
        raise AgentdError(str(e)) from None


def _check_daemon(s: Settings) -> None:
    """Validate [heartbeat] and [daemon] when the file is read, not when the daemon first
    needs a value: a typo is reported by `agentd run` too, and a hot reload can refuse it."""
    hb, d = s.heartbeat, s.daemon
    parse_duration(hb.every, "heartbeat.every")
    parse_duration(hb.gate_timeout, "heartbeat.gate_timeout")
    parse_hours(hb.active_hours, "heartbeat.active_hours")
    check_timezone(hb.timezone, "heartbeat.timezone")
    if hb.model and ":" not in hb.model:
        raise AgentdError(f"heartbeat.model {hb.model!r} is not PROVIDER:MODEL")
    parse_duration(d.catch_up, "daemon.catch_up")
    parse_duration(d.stop_timeout, "daemon.stop_timeout")
    if d.queue_limit < 1:
        raise AgentdError("daemon.queue_limit must be at least 1")
    if d.inbox_max_bytes < 1:
        raise AgentdError("daemon.inbox_max_bytes must be at least 1")
    if d.watch not in ("auto", "poll"):
        raise AgentdError(f"daemon.watch must be \"auto\" or \"poll\", not {d.watch!r}")


def load_settings(home: Path) -> Settings:
    """Read `<home>/agentd.toml` (missing file → all defaults)."""
    path = home / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return parse_settings({})
    except (OSError, UnicodeDecodeError) as e:
        raise AgentdError(f"cannot read {path}: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AgentdError(f"{path} is not valid TOML ({e}); fix it or move it aside") from None
    return parse_settings(data)
