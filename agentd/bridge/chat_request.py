"""The request body `POST /v1/chat/completions` accepts: one JSON Schema, published in
`/openapi.json` and checked by the handler (`check`), so the schema is exactly what the
endpoint accepts (schemathesis's positive and negative checks hold it to that).

Every OpenAI message shape is history the client may send back (roles system, developer,
user, assistant, tool, function; content a string, null or a list of parts; assistant
`tool_calls`); only user messages must carry text, since the last one is the agent's input.
Parameters: `model`, `stream`, `stream_options`, `n` (1), `user`, `temperature` (0-2),
`max_tokens`/`max_completion_tokens` (1+), `stop` (a string or 1-4 strings). Client
`tools` are refused unless `tool_choice` is "none": agentd runs its own tools.
Other fields are allowed and ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Any

from agentd.bridge.http import ApiError
from agentd.bridge.jsonshape import problem

# A character that is not blank for Python's str.strip() nor for JSON Schema's (ECMA) \s:
# "has text" means the same to the generator of test data and to the handler.
SOME_TEXT = r"[^\s\x1c-\x1f\x85\ufeff]"
MAX_MESSAGES = 10_000
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
                           {"type": "array", "minItems": 1, "maxItems": 4,
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
