"""agentd.toml → one typed `Settings`, checked when the file is read.

The package's modules import one way, each only from those below it:

- values.py    durations (`Duration`, `parse_duration`), daily windows, time zones;
- tables.py    copying a TOML table onto a settings dataclass, strictly;
- calls.py     `[calls]`: the output cap and the time limits of one model call;
- bridge.py    `[bridge]`;  costs.py  fallbacks, `[budget]`, `[throttling]`, `[compaction]`;
- settings.py  `Settings`, the other sections, and `load_settings`;
- template.py  the commented agentd.toml that `agentd init` writes (no imports).

Callers import the names below from `agentd.config`.
"""

from agentd.config.bridge import HOOK_NAME, BridgeSettings, HookSettings
from agentd.config.calls import CallSettings
from agentd.config.costs import BudgetSettings, CompactionSettings, ThrottleSettings
from agentd.config.settings import (
    BUILTIN_ENDPOINTS,
    DaemonSettings,
    Endpoint,
    GitSettings,
    HeartbeatSettings,
    Price,
    QuotaSettings,
    Settings,
    SkillsSettings,
    load_settings,
    parse_settings,
)
from agentd.config.tables import CONFIG_NAME
from agentd.config.template import DEFAULT_CONFIG
from agentd.config.values import Duration, check_timezone, parse_duration, parse_hours

__all__ = [
    "BUILTIN_ENDPOINTS", "CONFIG_NAME", "DEFAULT_CONFIG", "HOOK_NAME", "BridgeSettings",
    "BudgetSettings", "CallSettings", "CompactionSettings", "DaemonSettings", "Duration",
    "Endpoint",
    "GitSettings", "HeartbeatSettings", "HookSettings", "Price", "QuotaSettings", "Settings",
    "SkillsSettings", "ThrottleSettings", "check_timezone", "load_settings", "parse_duration",
    "parse_hours", "parse_settings",
]
