"""`[calls]` of agentd.toml: the bounds on one model call.

A model call is bounded three ways, so that no single call can run (or bill) without end,
which a small local model that never stops talking otherwise does:
- an output cap, `max_tokens`, sent with every request (as `max_tokens`, or as
  `max_completion_tokens` to OpenAI's own API); `[calls.models]` sets it per model
  ("local:gemma3" = 1024) or per provider ("local" = 2048), the model's entry first;
- `idle_timeout`: no bytes from the server for this long (before the answer starts or in
  the middle of it) ends the call;
- `call_timeout`: the whole call, however steadily the server keeps sending, ends here.
Hitting a timeout is a transient ProviderError, so a fallback chain moves on.

Imports only the table and value parsers beneath settings.py, which wires it in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentd.config.tables import fill, typed
from agentd.config.values import Duration
from agentd.errors import AgentdError

DEFAULT_MAX_TOKENS = 8192  # a long answer or a big file written in one call; a runaway stops


@dataclass
class CallSettings:
    """`[calls]`: the output cap (`max_tokens`, overridden per model or provider by
    `models`) and the two time limits of one model call."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    idle_timeout: Duration = Duration("2m")
    call_timeout: Duration = Duration("10m")
    models: dict[str, int] = field(default_factory=dict)

    def cap_for(self, spec: str) -> int:
        """The output cap of `provider:model`: its own entry, its provider's, the default."""
        label = spec.partition(":")[0]
        return self.models.get(spec) or self.models.get(label) or self.max_tokens

    def own_cap(self, spec: str) -> bool:
        """Whether `[calls.models]` sets the cap of `provider:model` (its entry or its
        provider's): a compat profile's default cap then does not lower it."""
        return spec in self.models or spec.partition(":")[0] in self.models


def parse_calls(c: CallSettings, value: Any) -> None:
    """Fill `c` from `[calls]` and its `[calls.models]` table; every cap at least 1."""
    table = dict(typed("calls", value, dict))
    for name, cap in typed("calls.models", table.pop("models", {}), dict).items():
        c.models[name] = typed(f"calls.models.{name}", cap, int)
    fill(c, table, "calls")
    for where, cap in [("calls.max_tokens", c.max_tokens),
                       *((f"calls.models.{k}", v) for k, v in c.models.items())]:
        if cap < 1:
            raise AgentdError(f"{where} must be at least 1 (output tokens per model call)")
