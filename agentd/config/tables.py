"""Copying a TOML table onto a settings dataclass, strictly: an unknown key or a wrong type
is a one-line error naming the key, so a typo never silently falls back to a default.

Shared by the section modules (bridge.py, costs.py) and settings.py, which import it; it
imports only values.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from agentd.config.values import Duration, Hours
from agentd.errors import AgentdError

CONFIG_NAME = "agentd.toml"

# A field's annotation (a string: the modules use `from __future__ import annotations`) →
# the TOML type it takes, and how the checked value becomes the field's value.
_KINDS: dict[str, tuple[type | tuple[type, ...], Callable[[Any, str], Any] | None]] = {
    "str": (str, None), "int": (int, None), "float": (float, None), "bool": (bool, None),
    "bool | None": (bool, None),
    "str | None": (str, None), "int | None": (int, None), "float | None": (float, None),
    "list[str]": (list, None), "int | str": ((int, str), None),
    "int | str | None": ((int, str), None), "Duration": (str, Duration),
    "Hours": (str, Hours),
}


class UnknownSetting(AgentdError):
    """A key no table has. settings.py, which knows every table, adds where it belongs."""

    def __init__(self, where: str, key: str, known: list[str]):
        self.where, self.key = where, key
        name = f"{where}.{key}" if where else repr(key)
        listed = f" (known: {', '.join(known)})" if known else ""
        super().__init__(f"unknown setting {name} in {CONFIG_NAME}{listed}")


def typed(where: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """`value` if it is of `kind` (an int is a float too; a bool is never a number), else an
    AgentdError naming `where`."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise AgentdError(f"{where} must be a {_kind_name(kind)}, not {value!r}")
    if not isinstance(value, kind):
        raise AgentdError(f"{where} must be a {_kind_name(kind)}, not {value!r}")
    return value


def typed_list(where: str, value: Any, kind: type) -> list[Any]:
    """A TOML array whose every item is of `kind`; a bad item is named by its index."""
    items = typed(where, value, list)
    return [typed(f"{where}[{i}]", v, kind) for i, v in enumerate(items)]


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "number", float: "number", str: "string", bool: "true/false", dict: "table",
             list: "list"}
    if kind == (int, str):
        return "number or name"
    return names.get(kind, "value") if isinstance(kind, type) else "value"


def fill(obj: Any, table: dict[str, Any], where: str) -> Any:
    """Copy a TOML table onto a dataclass instance, checking names and types; a `Duration`
    field is parsed here, once, and a bad one is named (`heartbeat.every: 'soon' is not a
    duration`)."""
    hints = {f.name: f for f in fields(obj)}
    for key, value in table.items():
        if key not in hints:
            raise UnknownSetting(where, key, list(hints))
        kind, convert = _KINDS[str(hints[key].type)]
        value = typed(f"{where}.{key}", value, kind)
        setattr(obj, key, convert(value, f"{where}.{key}") if convert else value)
    return obj
