"""What a `POST /v1/chat/completions` body asks for, checked: the turn's input, the history
that identifies the conversation, the client's sampling parameters, and its tools.

- Messages: every shape the OpenAI API allows is accepted (roles system, developer, user,
  assistant, tool, function; content a string, null or an array of parts; assistant
  `tool_calls`). Only the last user message is input, and it must hold text (text parts
  only); everything before it is history, used only to recognise the conversation
  (agentd/bridge/conversations.py).
- Sampling: `temperature` (0 to 2), `max_tokens` or `max_completion_tokens` (a positive
  integer; the smaller when both are given; it caps each model call of the turn and never
  raises the home's own cap) and `stop` (a string or up to 4) become the turn's
  agentd.llm.types.Sampling. Other sampling fields (top_p, seed, penalties, …) are
  accepted and not used.
- Tools: agentd runs its own tools; a client's `tools` (or legacy `functions`) are refused
  with a 400, unless `tool_choice` (`function_call`) is "none", which says the model must
  not call them anyway.
A value of the wrong shape is a 400 with a one-line message, never a traceback.
"""

from __future__ import annotations

from typing import Any

from agentd.bridge.conversations import content_text, visible
from agentd.bridge.http import ApiError
from agentd.llm.types import Sampling

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_MESSAGES = 10_000
MAX_STOPS = 4


def parse_messages(messages: Any) -> tuple[str, list[str]]:
    """(the last user message's text, the fingerprints of the visible history before
    it); ApiError 400 when the list is not one the OpenAI API would take."""
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise ApiError(400, "messages must be a non-empty list", "invalid_messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, "each message must be an object with a role: "
                           + ", ".join(ROLES), "invalid_messages")
        content = m.get("content")
        if not (content is None or isinstance(content, str) or (isinstance(content, list)
                and all(isinstance(p, dict) and isinstance(p.get("type"), str)
                        for p in content))):
            raise ApiError(400, "a message's content must be a string, null or a list of "
                           "parts with a type", "invalid_messages")
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    if last < 0:
        raise ApiError(400, "no user message: the last user message is the agent's input",
                       "invalid_messages")
    content = messages[last].get("content")
    if isinstance(content, list) and any(p["type"] != "text" for p in content):
        raise ApiError(400, "only text content is supported in the last user message",
                       "unsupported_content")
    text = content_text(content)
    if not text.strip():
        raise ApiError(400, "the last user message has no text", "invalid_messages")
    return text, visible(messages[:last])


def parse_sampling(req: dict[str, Any]) -> Sampling | None:
    """The client's temperature / max_tokens / stop; None when it set none of them."""
    temperature = req.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(
            temperature, int | float) or not 0 <= temperature <= 2):
        raise ApiError(400, "temperature must be a number from 0 to 2", "invalid_sampling")
    caps = []
    for name in ("max_tokens", "max_completion_tokens"):
        value = req.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ApiError(400, f"{name} must be a positive integer", "invalid_sampling")
            caps.append(value)
    stop = req.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(
            isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of up to "
                       f"{MAX_STOPS} of them", "invalid_sampling")
    if temperature is None and not caps and not stops:
        return None
    return Sampling(None if temperature is None else float(temperature),
                    min(caps) if caps else None, tuple(stops))


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
