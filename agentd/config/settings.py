"""agentd.toml + environment → one typed Settings object.

Parsing is strict: an unknown key or a wrong type is a one-line error naming the key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from agentd.config.bridge import BridgeSettings, HookSettings, parse_bridge
from agentd.config.calls import CallSettings, parse_calls
from agentd.config.costs import (
    BudgetSettings,
    CompactionSettings,
    ThrottleSettings,
    check_costs,
    model_spec,
    parse_budget,
)
from agentd.config.tables import CONFIG_NAME, UnknownSetting, fill, typed
from agentd.config.values import Duration, Hours, check_timezone
from agentd.errors import AgentdError
from agentd.homefs import Root
from agentd.tools import SandboxSettings


@dataclass
class Endpoint:
    """A provider: the built-in `anthropic`, `openai`, `ollama`, or a named OpenAI-compatible
    server (llama.cpp, vLLM, LM Studio) used as `<name>:<model>`."""

    protocol: str = "openai"
    base_url: str | None = None
    key_env: str | None = None
    context_window: int | None = None
    max_retries: int = 2
    # the server's deviations from the API (agentd/llm/compat.py): a profile, then switches
    profile: str | None = None
    send_tool_choice: bool | None = None
    stream_with_tools: bool | None = None
    null_content_as_empty: bool | None = None
    text_tool_calls: bool | None = None


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


@dataclass
class HeartbeatSettings:
    """`[heartbeat]`: the periodic wake-up that reads memory/HEARTBEAT.md (see the daemon)."""

    enabled: bool = True
    every: Duration = Duration("30m")
    active_hours: Hours = Hours("")  # .window: parsed once, when the file is read
    timezone: str = ""
    model: str = ""
    gate_timeout: Duration = Duration("30s")


@dataclass
class DaemonSettings:
    """`[daemon]`: the queue, cron catch-up, `agentd stop`, the inbox and file watching."""

    queue_limit: int = 100
    catch_up: Duration = Duration("6h")
    stop_timeout: Duration = Duration("5m")
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
class SkillsSettings:
    """`[skills]`: the prompt's skills index (agentd/skillindex.py)."""

    index_chars: int = 6000  # past it, the skills most relevant to the task, and a count


@dataclass
class Settings:
    model: str | None = None
    max_steps: int = 30
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    providers: dict[str, Endpoint] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    budget_fallback: str | None = None
    models: dict[str, str] = field(default_factory=dict)  # trigger kind -> PROVIDER:MODEL
    escalate_to: list[str] = field(default_factory=list)  # who takes over a failed turn
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    throttling: ThrottleSettings = field(default_factory=ThrottleSettings)
    compaction: CompactionSettings = field(default_factory=CompactionSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    bridge: BridgeSettings = field(default_factory=BridgeSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    git: GitSettings = field(default_factory=GitSettings)
    skills: SkillsSettings = field(default_factory=SkillsSettings)
    calls: CallSettings = field(default_factory=CallSettings)

    def endpoint(self, name: str) -> Endpoint | None:
        return self.providers.get(name)


# The tables that are plain settings dataclasses, filled key by key.
_SECTIONS = ("sandbox", "heartbeat", "daemon", "quota", "git", "throttling", "compaction",
             "skills")


def _homes_of(key: str) -> str:
    """Where a misplaced key belongs, for the error: the top of the file, or its tables.
    TOML puts a key in the last table above it, so `model = …` appended after a [bridge]
    block arrives as bridge.model; saying so is the fix."""
    top = [f.name for f in fields(Settings) if not is_dataclass(getattr(Settings(), f.name))
           and f.name not in ("providers", "prices")]
    if key in top:
        return f"`{key}` belongs at the top of {CONFIG_NAME}, before any [table]"
    tables: dict[str, Any] = {name: getattr(Settings(), name)
                              for name in (*_SECTIONS, "budget", "bridge")}
    tables |= {"bridge.telegram": tables["bridge"].telegram,
               "bridge.slack": tables["bridge"].slack, "providers.NAME": Endpoint(),
               "bridge.hooks.NAME": HookSettings()}
    homes = [f"[{name}]" for name, obj in tables.items()
             if key in {f.name for f in fields(obj)}]
    return f"`{key}` belongs in {' or '.join(homes)}" if homes else ""


def parse_settings(data: dict[str, Any]) -> Settings:
    """Build Settings from a parsed agentd.toml (a dict); raise AgentdError on bad input.
    An unknown key is named with where it belongs, when some table has it."""
    try:
        return _parse(data)
    except UnknownSetting as e:
        home = _homes_of(e.key)
        if not home:
            raise
        name = f"{e.where}.{e.key}" if e.where else e.key
        raise AgentdError(f"unknown setting {name}: {home}") from None


def _parse(data: dict[str, Any]) -> Settings:
    s = Settings(providers={k: Endpoint(**vars(v)) for k, v in BUILTIN_ENDPOINTS.items()})
    for key, value in data.items():
        if key == "model":
            s.model = typed("model", value, str) or None
        elif key == "max_steps":
            s.max_steps = typed("max_steps", value, int)
        elif key in _SECTIONS:
            fill(getattr(s, key), typed(key, value, dict), key)
        elif key == "providers":
            for name, table in typed("providers", value, dict).items():
                ep = s.providers.get(name) or Endpoint()
                s.providers[name] = fill(ep, typed(f"providers.{name}", table, dict),
                                         f"providers.{name}")
        elif key == "prices":
            for model, table in typed("prices", value, dict).items():
                t = typed(f"prices.{model}", table, dict)
                if "input" not in t or "output" not in t:
                    raise AgentdError(f"prices.{model} needs input and output (USD per MTok)")
                s.prices[model] = fill(Price(0.0, 0.0), t, f"prices.{model}")
        elif key == "fallbacks":
            models = typed("fallbacks", value, list)
            s.fallbacks = [model_spec(f"fallbacks[{i}]", m) for i, m in enumerate(models)]
        elif key == "budget_fallback":
            s.budget_fallback = model_spec("budget_fallback", value) if value else None
        elif key == "models":
            s.models = parse_models(typed("models", value, dict))
        elif key == "escalate_to":
            models = typed("escalate_to", value, list)
            s.escalate_to = [model_spec(f"escalate_to[{i}]", m) for i, m in enumerate(models)]
        elif key == "budget":
            parse_budget(s.budget, value)
        elif key == "bridge":
            parse_bridge(s.bridge, value)
        elif key == "calls":
            parse_calls(s.calls, value)
        else:
            raise UnknownSetting("", key, [])
    check_costs(s.budget, s.compaction)
    _check_daemon(s)
    if s.skills.index_chars < 1500:
        raise AgentdError("skills.index_chars must be at least 1500 (one skill's line)")
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
        if ep.profile is not None:
            _check_profile(name, ep.profile)
    return s


def _check_profile(name: str, profile: str) -> None:
    """A provider's `profile` names one of agentd/llm/compat.py's. Imported only when a
    provider sets one: compat (with the neutral types) is ~25 ms that a turn of a home
    without profiles, and every `agentd` command that loads settings, would pay."""
    from agentd.llm.compat import AUTO, PROFILES

    if profile not in (*PROFILES, AUTO):
        raise AgentdError(f"providers.{name}.profile must be one of "
                          f"{', '.join(PROFILES)} or {AUTO}, not {profile!r}")


MAX_CONFIG = 256 * 1024  # agentd.toml's cap (read_config: the daemon's and the fleet's)

TRIGGER_KINDS = ("cli", "chat", "heartbeat", "cron", "inbox", "webhook")


def parse_models(table: dict[str, Any]) -> dict[str, str]:
    """`[models]`: a model per trigger kind (`heartbeat = "ollama:qwen3:8b"`)."""
    for kind in table:
        if kind not in TRIGGER_KINDS:
            raise AgentdError(f"models.{kind}: not a trigger kind (one of "
                              f"{', '.join(TRIGGER_KINDS)})")
    return {k: model_spec(f"models.{k}", v) for k, v in table.items()}


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
    needs a value: a typo is reported by `agentd run` too, and a hot reload can refuse it.
    (Their durations and active hours were parsed as they were read; see tables.fill.)"""
    hb, d = s.heartbeat, s.daemon
    check_timezone(hb.timezone, "heartbeat.timezone")
    if hb.model and ":" not in hb.model:
        raise AgentdError(f"heartbeat.model {hb.model!r} is not PROVIDER:MODEL")
    if d.queue_limit < 1:
        raise AgentdError("daemon.queue_limit must be at least 1")
    if d.inbox_max_bytes < 1:
        raise AgentdError("daemon.inbox_max_bytes must be at least 1")
    if d.watch not in ("auto", "poll"):
        raise AgentdError(f"daemon.watch must be \"auto\" or \"poll\", not {d.watch!r}")


def load_settings(home: Path) -> Settings:
    """Read `<home>/agentd.toml` (missing file → all defaults) through the confined layer
    (agentd.homefs), never with a plain open: a fleet home's owner commits the file and a
    webhook agent may plant one, so a symlink (to a tracked file saying `mode = "off"`, or
    to /etc/shadow) is refused rather than followed, a FIFO or device is refused before it
    is opened (it would hang the host), and the read is capped at MAX_CONFIG."""
    path = home / CONFIG_NAME
    try:
        root = Root(home)
    except FileNotFoundError:  # no home yet: the defaults, as for a home without the file
        return parse_settings({})
    except OSError as e:
        raise AgentdError(f"cannot read {path}: {e}") from None
    with root:
        return parse_settings(read_config(root, path))


def read_config(root: Root, shown: Path | str = CONFIG_NAME) -> dict[str, Any]:
    """The TOML table of agentd.toml in an open homefs Root (missing → empty: all
    defaults): the one bytes->table path and cap, for load_settings and for a fleet
    checkout (agentd.fleet.schedule.settings_of); parse_settings makes it Settings. A
    file that cannot be read is one AgentdError line naming it as `shown`."""
    try:
        data = root.read_bytes(CONFIG_NAME, limit=MAX_CONFIG + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:  # Refused says what to do: make it a regular file
        raise AgentdError(f"cannot read {shown}: {e}") from None
    if len(data) > MAX_CONFIG:
        raise AgentdError(f"{shown} is over {MAX_CONFIG // 1024} KiB; settings are short")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AgentdError(f"cannot read {shown}: not UTF-8 ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise AgentdError(f"{shown} is not valid TOML ({e}); fix it or move it aside") from None
