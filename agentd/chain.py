"""The models a turn talks to: which model when none is named, a `provider:model` string
to a Provider, and the stack a turn calls through (fallbacks, budget, compaction, breaker).

This is the home's side of the model providers: it reads agentd.toml's settings and the
keys in the environment, and hands the adapters in agentd/llm/ plain arguments, so that
package knows nothing of a home, its config, its ledger or its transcripts.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentd.budget import Budget, BudgetedProvider, BudgetSwitch, is_interactive
from agentd.compact import Compactor
from agentd.config import Settings
from agentd.errors import AgentdError
from agentd.llm.base import Bounds
from agentd.llm.fallback import Breaker, FallbackProvider, Member
from agentd.llm.types import Provider
from agentd.session import SessionLog
from agentd.usage import Ledger

DEFAULT_MODELS = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-5.4-mini"}


def choose_model(cli_model: str | None, settings: Settings, trigger: str = "cli") -> str:
    """--model (or the job's own model) > $AGENTD_MODEL > `[models]` for the trigger's kind
    > `model` in agentd.toml > the first provider whose key is set."""
    kind = trigger.split(":", 1)[0]
    for candidate in (cli_model, os.environ.get("AGENTD_MODEL"), settings.models.get(kind),
                      settings.model):
        if candidate:
            return candidate
    for name in ("anthropic", "openai"):
        ep = settings.endpoint(name)
        if ep and ep.key_env and os.environ.get(ep.key_env):
            return f"{name}:{DEFAULT_MODELS[name]}"
    raise AgentdError("no model configured: pass --model PROVIDER:MODEL, set $AGENTD_MODEL, "
                      "or set model = \"...\" in agentd.toml (or export ANTHROPIC_API_KEY / "
                      "OPENAI_API_KEY)")


def make_provider(spec: str, settings: Settings, base: Path,
                  max_retries: int | None = None) -> Provider:
    """Build the provider for `spec` (`anthropic:claude-…`, `ollama:qwen3:8b`, `replay:f.jsonl`)
    from its endpoint in `settings` and its key in the environment.

    `base` is the folder a relative replay path is resolved against. `max_retries`
    overrides the endpoint's retries inside the SDK (build_provider retries itself).
    """
    label, sep, model = spec.partition(":")
    if not sep or not model or not label:
        raise AgentdError(f"model {spec!r} is not PROVIDER:MODEL (e.g. anthropic:"
                          f"{DEFAULT_MODELS['anthropic']}, openai:{DEFAULT_MODELS['openai']}, "
                          "ollama:qwen3:8b)")
    if label == "replay":
        from agentd.llm.replay import ReplayProvider

        return ReplayProvider((base / model).resolve())
    ep = settings.endpoint(label)
    if ep is None:
        known = ", ".join(["replay", *settings.providers])
        raise AgentdError(f"unknown provider {label!r} in {spec!r} (known: {known}); declare "
                          f"[providers.{label}] in agentd.toml for an OpenAI-compatible server")
    key = os.environ.get(ep.key_env) if ep.key_env else None
    if ep.key_env and not key:
        raise AgentdError(f"{label}: no API key: set ${ep.key_env}")
    retries = ep.max_retries if max_retries is None else max_retries
    c = settings.calls
    bounds = Bounds(c.cap_for(spec), c.idle_timeout.seconds, c.call_timeout.seconds,
                    c.own_cap(spec))
    if ep.protocol == "anthropic":
        from agentd.llm.anthropic import AnthropicProvider

        return AnthropicProvider(model, api_key=key, base_url=ep.base_url,
                                 max_retries=retries, key_env=ep.key_env or "",
                                 bounds=bounds)
    from agentd.llm.compat import AUTO, overrides_of, resolve
    from agentd.llm.openai import OpenAIProvider

    overrides = overrides_of(vars(ep))
    compat = resolve(ep.profile, label, ep.base_url, overrides)
    return OpenAIProvider(model, api_key=key or "none", base_url=ep.base_url,
                          max_retries=retries, label=label, key_env=ep.key_env or "",
                          compat=compat, probe=overrides if ep.profile == AUTO else None,
                          bounds=bounds)


def build_provider(spec: str, settings: Settings, base: Path, cooldowns: Path, *,
                   ledger: Ledger, log: SessionLog,
                   fallbacks: list[str] | None = None) -> Provider:
    """The provider a turn talks to: `spec` then its fallbacks (`fallbacks`, else the
    `fallbacks` of agentd.toml) as one chain that retries, cools throttled models down and
    moves on (llm/fallback.py); every call checked against the budget (budget.py), and
    compacted first when the conversation nears the model's window (compact.py). An
    interactive turn over a money cap continues on `budget_fallback`.

    `cooldowns` is the home's cool-down file. The turn's own books are passed in, so each
    has one writer: `ledger` (the run and trigger it books for), through which compaction's
    summary calls are booked beside the turn's (so its cost includes them), and `log`, the
    transcript compactions are recorded in.

    Config errors (unknown provider, missing key of `spec`) raise AgentdError here,
    before anything is spent; a fallback whose key is missing is skipped when its turn
    comes, with the reason in the error.
    """
    trigger = ledger.trigger
    backup = settings.budget_fallback if is_interactive(trigger) else None
    backup = backup if backup != spec else None
    budget = Budget(settings.budget, ledger.path, trigger, settings.prices, bool(backup))
    compactor = Compactor(settings, log, ledger)
    breaker = Breaker(cooldowns)
    t = settings.throttling
    cooldown = t.cooldown.seconds
    max_wait = t.max_retry_wait.seconds

    def member(s: str, required: bool) -> Member:
        label = s.partition(":")[0]
        ep = settings.endpoint(label)
        retries = ep.max_retries if ep else 0
        try:
            inner = make_provider(s, settings, base, max_retries=0)
        except AgentdError as e:
            if required or (ep is None and label != "replay"):
                raise
            return Member(s, None, retries, str(e))
        return Member(s, BudgetedProvider(inner, budget), retries)

    def chain(specs: list[str], required: bool = True) -> Provider:
        members = [member(s, required and i == 0) for i, s in enumerate(dict.fromkeys(specs))]
        return FallbackProvider(members, breaker, cooldown, max_wait, compactor.prepare)

    primary = chain([spec, *(settings.fallbacks if fallbacks is None else fallbacks)])
    second = chain([backup], required=False) if backup else None  # built now: typos fail now
    return BudgetSwitch(primary, second)
