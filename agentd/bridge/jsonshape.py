"""Checking a JSON document against the request schema the bridge publishes.

The chat endpoint validates its body against the very schema `/openapi.json` declares,
so the two cannot drift apart: what the schema allows is accepted, and what it forbids
gets a 400 naming the place. This is the subset of JSON Schema that schema uses (no
library: the runtime has no JSON Schema dependency, and the subset is small). A keyword
outside the subset is a programming error (`ValueError`), never silently ignored, so the
published schema cannot promise a rule this code does not apply.

Types follow JSON, not Python: `true` is a boolean, not an integer; `1.0` is a number;
patterns are searched (not anchored) as JSON Schema says. `x-refusal` (an OpenAPI
extension) on a schema with `anyOf` is the message when no alternative fits.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

Schema = dict[str, Any]
# Keywords that only describe (docs, examples, generators' hints).
NOTES = {"title", "description", "examples", "default", "deprecated", "format", "x-refusal"}
CHECKED = {"type", "enum", "const", "properties", "required", "additionalProperties",
           "items", "minItems", "maxItems", "contains", "minLength", "maxLength", "pattern",
           "minimum", "maximum", "anyOf", "oneOf", "not"}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise ValueError(f"unknown JSON Schema type {kind!r}")


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) \
        else a == b


def problem(value: Any, schema: Schema, where: str = "body") -> str | None:
    """Why `value` does not fit `schema` ("messages[2].content: ..."), or None if it does.
    Iterative over the schema's own depth only: the document's depth is already capped."""
    unknown = set(schema) - CHECKED - NOTES
    if unknown or not isinstance(schema.get("additionalProperties", True), bool):
        raise ValueError(f"schema keyword(s) not supported: {sorted(unknown) or schema}")
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else kinds
        if not any(_type_ok(value, k) for k in names):
            return f"{where}: must be {' or '.join(names)}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{where}: must be {schema['const']!r}"
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        return f"{where}: must be one of {', '.join(map(repr, schema['enum']))}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{where}: too short"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{where}: longer than {schema['maxLength']} characters"
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            return f"{where}: must contain text" if schema["pattern"].startswith("[^") \
                else f"{where}: does not match {schema['pattern']}"
    if _type_ok(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{where}: must be at least {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{where}: must be at most {schema['maximum']}"
    if isinstance(value, list):
        why = _array(value, schema, where)
        if why:
            return why
    if isinstance(value, dict):
        why = _object(value, schema, where)
        if why:
            return why
    for key in ("anyOf", "oneOf"):
        if key in schema:
            fits = [problem(value, s, where) for s in schema[key]]
            matched = sum(f is None for f in fits)
            if matched == 0 and "x-refusal" in schema:
                return f"{where}: {schema['x-refusal']}"
            if matched == 0:
                return max((f for f in fits if f), key=_specific)
            if key == "oneOf" and matched > 1:
                return f"{where}: ambiguous (fits more than one form)"
    if "not" in schema and problem(value, schema["not"], where) is None:
        return f"{where}: not allowed here"
    return None


def _specific(reason: str) -> tuple[int, bool]:
    """Which failed alternative explains best: the one that got furthest into the value,
    then one that got past its `role` (a message's kind) to the field that is wrong."""
    path = reason.split(": ", 1)[0]
    return len(path), not path.endswith(".role")


def _array(value: list[Any], schema: Schema, where: str) -> str | None:
    if len(value) < schema.get("minItems", 0):
        return f"{where}: needs at least {schema['minItems']} item(s)"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        return f"{where}: at most {schema['maxItems']} item(s)"
    if "items" in schema:
        for i, item in enumerate(value):
            why = problem(item, schema["items"], f"{where}[{i}]")
            if why:
                return why
    if "contains" in schema and not any(problem(v, schema["contains"]) is None
                                        for v in value):
        return f"{where}: {schema['contains'].get('description', 'a required item is missing')}"
    return None


def _object(value: dict[str, Any], schema: Schema, where: str) -> str | None:
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            return f"{where}.{name}: required"
    for name, item in value.items():
        if name in props:
            why = problem(item, props[name], f"{where}.{name}")
            if why:
                return why
        elif schema.get("additionalProperties", True) is False:
            return f"{where}.{name[:40]}: not a known field"
    return None
