"""`POST /v1/chat/completions`'s body: the JSON Schema it accepts, and what it asks for.

The schema (`CHAT_REQUEST`) is published in `/openapi.json` and checked first by the
handler (`check`), so the schema is exactly what the endpoint accepts (schemathesis's
positive and negative checks hold it to that). Then:

- Messages: every OpenAI message shape is history the client may send back (roles system,
  developer, user, assistant, tool, function; content a string, null or a list of parts;
  assistant `tool_calls`); user messages must carry text. Only the last user message is
  input; everything before it is history, used only to recognise the conversation
  (agentd/bridge/conversations.py).
- Sampling: `temperature` (0 to 2), `max_tokens` or `max_completion_tokens` (a positive
  integer; the smaller when both are given; it caps each model call of the turn and never
  raises the home's own cap) and `stop` (a string or 1 to 4) become the turn's
  agentd.llm.types.Sampling. Other fields (top_p, seed, penalties, …) are allowed and
  ignored, as OpenAI-compatible servers do.
- Tools: agentd runs its own tools; a client's `tools` (or legacy `functions`) are refused
  with a 400, unless `tool_choice` (`function_call`) is "none", which says the model must
  not call them anyway.
A value of the wrong shape is a 400 with a one-line message, never a traceback.
"""

from __future__ import annotations

from typing import Any

from agentd.bridge.conversations import content_text, visible
from agentd.bridge.http import ApiError
from agentd.bridge.jsonshape import problem
from agentd.llm.types import Sampling

# A character that is not blank for Python's str.strip() nor for JSON Schema's (ECMA) \s:
# "has text" means the same to the generator of test data and to the handler.
SOME_TEXT = r"[^\s\x1c-\x1f\x85\ufeff]"
MAX_MESSAGES = 10_000
MAX_STOPS = 4
TOOLS_REFUSED = ("agentd runs its own tools (bash, files); client-side tools are not "
                 "supported: send no tools, or tool_choice \"none\"")

_TEXT_PART = {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"const": "text"}, "text": {"type": "string"}}}
_USER_CONTENT = {"anyOf": [
    {"type": "string", "pattern": SOME_TEXT},
    {"type": "array", "minItems": 1, "items": _TEXT_PART, "contains": {
        "type": "object", "required": ["text"], "properties": {
            "text": {"type": "string", "pattern": SOME_TEXT}},
        "description": "needs a text part with some text"}}],
    "x-refusal": "a user message needs text (a non-blank string, or text parts; only "
                 "text content is supported)"}
_ANY_PART = {"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string"}, "text": {"type": "string"}}}
_HISTORY_CONTENT = {"anyOf": [{"type": "string"}, {"type": "null"},
                              {"type": "array", "items": _ANY_PART}]}
_OPTIONAL = {  # fields any message may carry (OpenAI's shapes; history only)
    "name": {"type": "string"}, "refusal": {"type": ["string", "null"]},
    "tool_call_id": {"type": "string"}, "function_call": {"type": ["object", "null"]},
    "tool_calls": {"type": "array", "items": {"type": "object"}}}
_USER = {"type": "object", "required": ["role", "content"], "properties": {
    **_OPTIONAL, "role": {"const": "user"}, "content": _USER_CONTENT}}
_OTHER = {"type": "object", "required": ["role"], "properties": {
    **_OPTIONAL, "content": _HISTORY_CONTENT,
    "role": {"enum": ["system", "developer", "assistant", "tool", "function"]}}}

CHAT_REQUEST: dict[str, Any] = {
    "type": "object", "required": ["messages"],
    "properties": {
        "messages": {"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES,
                     "items": {"type": "object", "required": ["role"], "properties": {
                         "role": {"enum": ["system", "developer", "user", "assistant",
                                           "tool", "function"]}},
                               "anyOf": [_USER, _OTHER]},
                     "contains": {"type": "object", "required": ["role"],
                                  "properties": {"role": {"const": "user"}},
                                  "description": "no user message: the last user message "
                                                 "is the agent's input"},
                     "description": "The conversation as the client has it; only the last "
                                    "user message is new input."},
        "model": {"type": "string", "examples": ["agentd"],
                  "description": "\"agentd\" (the home's model) or an id GET /v1/models "
                                 "lists; another id gets 404."},
        "stream": {"type": "boolean"},
        "stream_options": {"type": ["object", "null"], "properties": {
            "include_usage": {"type": "boolean"}}},
        "n": {"type": "integer", "const": 1},
        "user": {"type": "string", "description": "Names the conversation (as "
                 "X-Agentd-Session does)."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "stop": {"anyOf": [{"type": "string", "minLength": 1},
                           {"type": "array", "minItems": 1, "maxItems": MAX_STOPS,
                            "items": {"type": "string", "minLength": 1}}]},
        "tools": {"type": "array", "items": {"type": "object"},
                  "description": TOOLS_REFUSED},
        "tool_choice": {"const": "none"},
    },
    # client tools only with tool_choice "none"
    "anyOf": [{"not": {"required": ["tools"]}}, {"required": ["tool_choice"]}],
    "x-refusal": TOOLS_REFUSED,
}


def check(body: Any) -> None:
    """ApiError 400 naming the first place where `body` leaves the published schema."""
    why = problem(body, CHAT_REQUEST)
    if why:
        raise ApiError(400, why[:300], "invalid_request")


def parse_messages(messages: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(the last user message's text, the fingerprints of the visible history before
    it), from messages `check` passed: CHAT_REQUEST holds them to a non-empty list of
    objects with a known role and content shape, with a user message among them, each
    user message made of text (a string or text parts) with some text in it."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return content_text(messages[last]["content"]), visible(messages[:last])


def parse_sampling(req: dict[str, Any]) -> Sampling | None:
    """The client's temperature / max_tokens / stop, from a body `check` passed (the schema
    is the one place they are validated: temperature a number from 0 to 2, the caps
    positive integers, 5.0 being one, stop a non-empty string or 1 to MAX_STOPS of them);
    None when it set none of them."""
    temperature = req.get("temperature")
    caps = [int(req[name]) for name in ("max_tokens", "max_completion_tokens")
            if req.get(name) is not None]
    stop = req.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if temperature is None and not caps and not stops:
        return None
    return Sampling(None if temperature is None else float(temperature),
                    min(caps) if caps else None, stops)


def check_tools(req: dict[str, Any]) -> None:
    """Client-side tools cannot run here (the agent has its own): refuse them, unless the
    client said not to call them (tool_choice "none")."""
    for field, choice in (("tools", "tool_choice"), ("functions", "function_call")):
        value = req.get(field)
        if value is not None and not isinstance(value, list):
            raise ApiError(400, f"{field} must be a list", "invalid_request")
        if value and req.get(choice) != "none":
            raise ApiError(400, "agentd runs its own tools (bash, files); client-side tools "
                           f"are not supported (send no {field}, or {choice} \"none\")",
                           "tools_unsupported")
