"""How much of the worker a fleet home's commands may take: its `[sandbox]` limits, under
the fleet's ceilings.

On one machine a home's owner owns the host, so `memory_mb = 0` (no limit) or a
`processes` in the millions is theirs to choose. A fleet worker runs the turns of many
owners side by side: one home's fork bomb, its unbounded tmpfs (RAM) or an hour-long
command holding a turn slot starves every other home on the worker. So in the fleet a home
may tighten each limit but not loosen it past the fleet's: agentd's defaults
(agentd.tools.SandboxSettings), or the operator's fleet setting `sandbox_limits`, e.g.
`agentd fleet set sandbox_limits '{"memory_mb": 4096, "processes": 512}'`.

The setting is the fleet's defaults as well as its ceilings: a home that leaves a limit at
agentd's default gets the fleet's value (an operator who lowers `memory_mb` lowers it for
every home, not only for those that spelled it out); one that sets a limit looser than the
fleet's, or 0 (no limit), is refused in one line before any model call.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from agentd.errors import AgentdError
from agentd.tools import SandboxSettings

SETTING = "sandbox_limits"
HOW = f"agentd fleet set {SETTING} '{{\"memory_mb\": 4096}}'"
# Every limit of SandboxSettings; 0 means "no limit of that kind" for each of them (for
# tmp_size_mb too: a tmpfs of size 0 is unbounded).
LIMITS = ("timeout", "output_limit", "tmp_size_mb", "cpu_seconds", "memory_mb",
          "file_size_mb", "open_files", "processes")
_TYPES = {f.name: f.type for f in fields(SandboxSettings)}


def check_setting(value: Any) -> dict[str, int | float]:
    """The fleet setting `sandbox_limits` as `agentd fleet set` takes it: a JSON object
    from limit names to numbers > 0 (whole numbers but for `timeout`, in seconds)."""
    if not isinstance(value, dict):
        raise AgentdError(f"the fleet setting {SETTING} is a JSON object of limits, e.g. "
                          f"'{{\"memory_mb\": 4096}}' (limits: {', '.join(LIMITS)})")
    for name, limit in value.items():
        if name not in LIMITS:
            raise AgentdError(f"{SETTING}: no limit {name!r} (limits: {', '.join(LIMITS)})")
        whole = _TYPES[name] != "float"
        if (isinstance(limit, bool) or not isinstance(limit, int | float)
                or (whole and not isinstance(limit, int)) or not limit > 0):
            kind = "a whole number > 0" if whole else "a number > 0"
            raise AgentdError(f"{SETTING}: {name} is {kind}, not {limit!r}")
    return value


def ceilings(listed: Any) -> dict[str, int | float]:
    """Each limit's ceiling: the operator's `sandbox_limits`, else agentd's default."""
    default = SandboxSettings()
    return {name: getattr(default, name) for name in LIMITS} | check_setting(listed)


def bound(sandbox: SandboxSettings, listed: Any) -> None:
    """Hold `sandbox` (a home's) to the fleet's ceilings (see the module doc): a limit at
    agentd's default becomes the fleet's, in place; one looser than the fleet's, or 0, is
    refused in one line naming the setting."""
    default = SandboxSettings()
    for name, ceiling in ceilings(listed).items():
        value = getattr(sandbox, name)
        if value == getattr(default, name):
            setattr(sandbox, name, ceiling)
        elif value <= 0 or value > ceiling:
            asked = "0 (no limit)" if value <= 0 else f"{value:g}"
            raise AgentdError(f"sandbox.{name} = {asked}: a fleet home's limit is at most "
                              f"{ceiling:g}, the fleet's (the operator may raise it with "
                              f"{HOW})")
