"""Reading the tool calls small models write, tolerantly.

Small local models get tool-call JSON almost right: a raw newline inside a string, a
trailing comma, the object wrapped in a ``` code fence. Refusing those costs a whole step
(and often the turn), so they are repaired here before anything gives up. What still
cannot be read goes back to the model as a tool error that quotes what it sent (capped),
and the raw text stays on the ToolCall, so the transcript keeps the evidence.

Servers without native tool calling leave the model to write its calls as text; the
formats small models actually use are read by `text_tool_calls`: Hermes/Qwen
`<tool_call>{"name": …, "arguments": …}</tool_call>` and a bare `{"name": …,
"arguments": …}` object (alone, in a list, or in a code fence).
"""

from __future__ import annotations

import json
import re
from typing import Any

QUOTE_CAP = 300  # characters of a malformed call quoted back to the model
KEEP_CAP = 20_000  # characters of raw arguments kept in the transcript

_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?\s*```$", re.S)
_STRING_OR_TRAILING_COMMA = re.compile(r'"(?:[^"\\]++|\\.)*+"|,(\s*[}\]])')
_NAME = re.compile(r'"name"\s*:\s*"([\w.-]{1,64})"')
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)


def _unfence(text: str) -> str:
    """The inside of a ``` code fence that is the whole text, else the text."""
    m = _FENCE.match(text.strip())
    return m.group(1).strip() if m else text.strip()


def _drop_trailing_commas(text: str) -> str:
    """`{"a": 1,}` → `{"a": 1}`: a comma before a closing bracket, outside strings (a
    string is matched whole first, so a ",}" inside one stays)."""
    return _STRING_OR_TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(0), text)


def loads(text: str) -> Any:
    """JSON with the common small-model faults repaired: a code fence around it, raw
    control characters (newlines, tabs) inside strings, trailing commas. Raises
    json.JSONDecodeError (with the position in the text as repaired) or RecursionError."""
    body = _unfence(text)
    try:
        return json.loads(body, strict=False)  # strict=False: raw control chars in strings
    except json.JSONDecodeError:
        repaired = _drop_trailing_commas(body)
        if repaired == body:
            raise
        return json.loads(repaired, strict=False)


def quote(raw: str, cap: int = QUOTE_CAP) -> str:
    """`raw` as a JSON string literal of at most `cap` characters, saying how long it was."""
    if len(raw) <= cap:
        return json.dumps(raw)
    return f"{json.dumps(raw[:cap])}… ({len(raw)} characters)"


def parse_arguments(raw: str) -> tuple[dict[str, Any], str | None, str | None]:
    """(arguments, error, raw) for a tool call's JSON text. Never raises on what a model
    sent: a malformed call goes back to the model as data (ToolCall.error, which quotes
    the text) instead of ending the turn. `raw` is the text as sent (capped) when it
    needed a repair or could not be read, so the transcript keeps it; else None."""
    if not raw.strip():
        return {}, None, None  # a call without arguments may stream no JSON, or ""
    kept = raw[:KEEP_CAP]
    try:
        value = json.loads(raw)
        kept = None
    except json.JSONDecodeError:
        try:
            value = loads(raw)
        except json.JSONDecodeError as e:
            why = f"{e.msg.removesuffix(' at')} at char {e.pos}"  # "control character at"
            return {}, f"invalid JSON arguments ({why}): {quote(raw)}", kept
        except RecursionError:
            return {}, f"invalid JSON arguments (nested too deeply): {quote(raw)}", kept
    except RecursionError:
        return {}, f"invalid JSON arguments (nested too deeply): {quote(raw)}", kept
    if not isinstance(value, dict):
        return {}, (f"invalid JSON arguments: expected an object, got "
                    f"{type(value).__name__}: {quote(raw)}"), raw[:KEEP_CAP]
    return value, None, kept


TextCall = tuple[str, dict[str, Any], str | None, str | None]  # name, arguments, error, raw


def _call(obj: Any) -> TextCall | None:
    """A {"name": …, "arguments" | "parameters": …} object as a call, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models send the arguments as a JSON string
        return (obj["name"], *parse_arguments(args))
    if not isinstance(args, dict):
        text = json.dumps(args)
        return obj["name"], {}, f"arguments must be a JSON object: {quote(text)}", text
    return obj["name"], args, None, None


def _object(text: str) -> Any:
    try:
        return loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def text_tool_calls(text: str, names: set[str] | frozenset[str]) -> tuple[str, list[TextCall]]:
    """(the text left over, the calls) for a reply that writes its tool calls as text.

    `<tool_call>…</tool_call>` blocks are calls wherever they are (the closing tag may be
    missing at the very end); one that cannot be read becomes a call with an error quoting
    it, so the model hears why. Otherwise the whole reply (or its code fence) must be a
    call object or a list of them naming a tool in `names`: prose that merely contains
    some JSON stays prose.
    """
    blocks = list(_HERMES.finditer(text))
    if blocks:
        calls: list[TextCall] = []
        for m in blocks:
            call = _call(_object(m.group(1)))
            if call is None:  # the name, if it can be seen, routes the error to the model
                raw = m.group(1)[:KEEP_CAP]
                named = _NAME.search(raw)
                call = (named.group(1) if named else "", {}, f"unreadable <tool_call>: "
                        f'{quote(raw)}; write <tool_call>{{"name": …, "arguments": {{…}}}}'
                        "</tool_call>", raw)
            calls.append(call)
        return _HERMES.sub("", text).strip(), calls
    value = _object(text) if text.strip()[:1] in ("{", "[", "`") else None
    items = value if isinstance(value, list) else [value]
    found = [_call(v) for v in items]
    if items and all(c is not None and c[0] in names for c in found):
        return "", [c for c in found if c is not None]
    return text, []
