"""From a `provider:model` string to a Provider, and which model to use when none is named."""

from __future__ import annotations

import os
from pathlib import Path

from agentd.config import Settings
from agentd.errors import AgentdError
from agentd.llm.types import Provider

DEFAULT_MODELS = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-5.4-mini"}


def choose_model(cli_model: str | None, settings: Settings) -> str:
    """--model > $AGENTD_MODEL > agentd.toml > the first provider whose key is set."""
    for candidate in (cli_model, os.environ.get("AGENTD_MODEL"), settings.model):
        if candidate:
            return candidate
    for name in ("anthropic", "openai"):
        ep = settings.endpoint(name)
        if ep and ep.key_env and os.environ.get(ep.key_env):
            return f"{name}:{DEFAULT_MODELS[name]}"
    raise AgentdError("no model configured: pass --model PROVIDER:MODEL, set $AGENTD_MODEL, "
                      "or set model = \"...\" in agentd.toml (or export ANTHROPIC_API_KEY / "
                      "OPENAI_API_KEY)")


def make_provider(spec: str, settings: Settings, base: Path) -> Provider:
    """Build the provider for `spec` (`anthropic:claude-…`, `ollama:qwen3:8b`, `replay:f.jsonl`).

    `base` is the folder a relative replay path is resolved against.
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
    if ep.protocol == "anthropic":
        from agentd.llm.anthropic import AnthropicProvider

        return AnthropicProvider(model, api_key=key, base_url=ep.base_url,
                                 max_retries=ep.max_retries, key_env=ep.key_env or "")
    from agentd.llm.openai import OpenAIProvider

    return OpenAIProvider(model, api_key=key or "none", base_url=ep.base_url,
                          max_retries=ep.max_retries, label=label, key_env=ep.key_env or "")
