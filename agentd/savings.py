"""How much work stayed on local models, and what it would have cost on the frontier model.

A model is local when its provider's endpoint is on this machine or the local network
(loopback, a private address, a `.local` name): `ollama:` and any `[providers.X]` whose
`base_url` points there. The frontier model it stands in for is the first non-local model
of `escalate_to`, else `model`; its price comes from the same table as every cost
(agentd.toml's `[prices]` over the built-in one). Without a priced frontier model there is
nothing to compare with, and the saving is unknown, never zero.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from agentd.config import Settings
from agentd.llm.types import Usage
from agentd.usage import Row, cost, price_for


def is_local(spec: str, settings: Settings) -> bool:
    """Does `spec` (PROVIDER:MODEL) run on this machine or the local network?"""
    ep = settings.endpoint(spec.partition(":")[0])
    if ep is None or not ep.base_url:
        return False
    host = urlsplit(ep.base_url).hostname or ""
    if host == "localhost" or host.endswith((".local", ".localhost")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def frontier(settings: Settings) -> str | None:
    """The model local work is compared with: the first non-local escalation target,
    else the home's `model` when it is not local."""
    for spec in [*settings.escalate_to, settings.model or ""]:
        if spec and not is_local(spec, settings):
            return spec
    return None


def saved(usage: Usage, spent: float, settings: Settings) -> float | None:
    """What `usage` would have cost on the frontier model, minus what it did cost (None:
    no priced frontier model)."""
    spec = frontier(settings)
    would = cost(usage, price_for(spec, settings.prices) if spec else None)
    if would is None:
        return None
    return round(max(0.0, would - spent), 6)


@dataclass
class LocalShare:
    """`agentd usage`'s line on local work."""

    frontier: str | None
    runs: int  # runs whose every call was local
    all_runs: int
    tokens: int  # of local calls, prompt and output
    saved: float | None

    def to_json(self) -> dict[str, object]:
        return {"frontier": self.frontier, "local_runs": self.runs, "runs": self.all_runs,
                "local_tokens": self.tokens, "saved_usd": self.saved}

    def line(self) -> str:
        money = "unknown" if self.saved is None else f"${self.saved:,.4f}"
        against = f" at {self.frontier} prices" if self.frontier else " (no frontier model)"
        return (f"stayed local: {self.runs} of {self.all_runs} runs, {self.tokens:,} "
                f"tokens; saved {money}{against}")


def local_share(rows: list[Row], settings: Settings) -> LocalShare:
    """Add up the local calls of `rows` and what they saved."""
    local = [r for r in rows if is_local(r.model, settings)]
    runs: dict[str, bool] = {}
    for r in rows:
        runs[r.run] = runs.get(r.run, True) and is_local(r.model, settings)
    usage = Usage()
    for r in local:
        usage += Usage(r.input, r.output, r.cache_read, r.cache_write)
    spent = sum(r.cost or 0.0 for r in local)  # an unpriced local model costs no API money
    return LocalShare(frontier(settings), sum(runs.values()), len(runs),
                      usage.input + usage.output + usage.cache_read + usage.cache_write,
                      saved(usage, spent, settings) if local else 0.0)
