"""How far an "OpenAI-compatible" server really is: one profile per server, made of named
switches, each for a deviation observed on a real server.

A profile is picked per provider in agentd.toml (`[providers.NAME] profile = "…"`), else
by name: the `ollama` provider, then the base URL's port (each server's default port).
`profile = "auto"` also asks the server once (GET /models: each server names itself in
`owned_by`), for servers on a port that does not tell them apart (8000 is both
llama-cpp-python's and vLLM's).
Each switch can be set on its own beside the profile and wins over it. The adapter
(llm/openai.py) shapes its requests by these switches and, when a server rejects a
request for its shape, names the switch that may fix it (`advice`).

The switches:
- `send_tool_choice`: send `tool_choice: "auto"` with tools. llama-cpp-python's
  `chatml-function-calling` format ignores `tools` without it: the model never sees them.
- `stream_with_tools = false`: don't stream a request that carries tools (the server
  fails inside an open stream); the final answer's text still reaches the terminal, in one
  piece. llama-cpp-python.
- `null_content_as_empty`: send `content: ""` instead of `null` on an assistant message
  with tool calls (llama-cpp-python answers null with HTTP 500, LM Studio with "'content'
  field must be a string or an array of objects").
- `text_tool_calls`: the server has no native tool calling: the tools are described in
  the system prompt, calls are read from the reply's text (Hermes/Qwen `<tool_call>`, a
  bare `{"name", "arguments"}` object) and results go back as user messages. For a model
  or server without tool support (Ollama's "does not support tools", vLLM without
  `--enable-auto-tool-choice`, a plain chat format).

Beside the switches, a profile may set a smaller default output cap (`max_tokens`) than
`[calls] max_tokens`: llama-cpp-python keeps generating for a request its client
abandoned (a timeout, a Ctrl-C), holding the server for the whole cap, so its profile
caps output at 1024 tokens. A cap set for the model or provider in `[calls.models]` wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from agentd.llm.types import Message, ToolSpec


@dataclass(frozen=True)
class Compat:
    """The switches of one provider (module docstring); the defaults are the OpenAI API's."""

    send_tool_choice: bool = False
    stream_with_tools: bool = True
    null_content_as_empty: bool = False
    text_tool_calls: bool = False
    max_tokens: int | None = None  # the profile's default output cap (module docstring)


SWITCHES = tuple(f.name for f in fields(Compat) if f.type == "bool")  # set one by one


def profile_cap(configured: int, compat: Compat, own: bool) -> int:
    """The output cap of a call: the configured one, lowered to the profile's default
    unless it was set for this model or provider (`own`)."""
    return configured if own or compat.max_tokens is None else min(configured,
                                                                    compat.max_tokens)

# profile -> the server it is for, and its switches
PROFILES: dict[str, tuple[str, Compat]] = {
    "openai": ("the OpenAI API and servers that follow it exactly", Compat()),
    "llama-cpp-python": ("llama-cpp-python's `python -m llama_cpp.server` "
                         "(--chat_format chatml-function-calling)",
                         Compat(send_tool_choice=True, stream_with_tools=False,
                                null_content_as_empty=True, max_tokens=1024)),
    "llama-server": ("llama.cpp's `llama-server --jinja`",
                     Compat(null_content_as_empty=True)),
    "ollama": ("Ollama's /v1 endpoint", Compat()),
    "vllm": ("vLLM's `vllm serve --enable-auto-tool-choice --tool-call-parser …`", Compat()),
    "lmstudio": ("LM Studio's local server", Compat(null_content_as_empty=True)),
}

# each server's default port, for a provider declared without a profile
PORTS = {11434: "ollama", 1234: "lmstudio", 8080: "llama-server"}

AUTO = "auto"  # the profile that asks the server who it is
# what each server puts in `owned_by` of GET /models
OWNERS = {"me": "llama-cpp-python", "llamacpp": "llama-server", "vllm": "vllm",
          "library": "ollama", "organization_owner": "lmstudio"}


def profile_of_owners(owners: list[str]) -> str | None:
    """The profile of the server whose model list names these owners, if one is known."""
    return next((OWNERS[o] for o in owners if o in OWNERS), None)


def guess_profile(label: str, base_url: str | None) -> str:
    """The profile a provider gets when agentd.toml names none: by its name, else by its
    base URL's port or host name, else "openai"."""
    if label in PROFILES:
        return label
    if not base_url:
        return "openai"
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:  # a malformed URL: the request will say so
        return "openai"
    if port in PORTS:
        return PORTS[port]
    host = (parts.hostname or "").lower()
    return next((p for p in ("ollama", "lmstudio", "vllm") if p in host), "openai")


def resolve(profile: str | None, label: str, base_url: str | None,
            overrides: dict[str, bool]) -> Compat:
    """The switches of a provider: its profile's (named, else guessed), then `overrides`
    (switches set one by one in agentd.toml). An unknown profile raises ValueError."""
    name = profile if profile and profile != AUTO else guess_profile(label, base_url)
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    return replace(PROFILES[name][1], **overrides)


def shape_problem(detail: str, status: int | None, sent: dict[str, bool]
                  ) -> tuple[str, str, bool] | None:
    """(what was rejected, the switch, its value that may fix it) when a server's error
    `detail` (HTTP `status`, or None inside a stream) points at the shape of a request that
    `sent` describes (tools, stream, tool_choice, null_content: what it carried)."""
    d = detail.lower()
    if "does not support tools" in d or "enable-auto-tool-choice" in d:  # Ollama, vLLM
        return "tools", "text_tool_calls", True
    if sent.get("tool_choice") and "tool_choice" in d:
        return "tool_choice", "send_tool_choice", False
    if sent.get("null_content") and any(w in d for w in ("null", "none", "content")):
        return "an assistant message with content null", "null_content_as_empty", True
    if sent.get("tools") and sent.get("stream") and ("stream" in d if status else any(
            w in d for w in ("tool", "function", "streaming", "stream was empty"))):
        return "streaming with tools", "stream_with_tools", False
    return None


def advice(label: str, switch: str, value: bool) -> str:
    """The hint that names a switch: where to set it."""
    return (f"set {switch} = {str(value).lower()} in [providers.{label}] of agentd.toml "
            "(or a matching profile = …)")


# -- tools as text, for servers without native tool calling ------------------------------


def tools_prompt(tools: list[ToolSpec]) -> str:
    """The Hermes-style tool description appended to the system prompt."""
    specs = "\n".join(json.dumps({"type": "function", "function": {
        "name": t.name, "description": t.description, "parameters": t.parameters}})
        for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query. "
            "The functions are:\n<tools>\n" + specs + "\n</tools>\n\nTo call a function, "
            "reply with one JSON object per call inside <tool_call></tool_call> tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
            "</tool_call>\nEach result comes back inside <tool_response></tool_response> "
            "tags. When you have the final answer, reply with plain text and no tags.")


def as_text_history(messages: list[Message]) -> list[Message]:
    """The history with tool calls written as `<tool_call>` text and results as user
    messages in `<tool_response>` tags: what a server without tool roles accepts."""
    out: list[Message] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = "\n".join("<tool_call>\n" + json.dumps(
                {"name": c.name, "arguments": c.arguments}) + "\n</tool_call>"
                for c in m.tool_calls)
            out.append(Message("assistant", f"{m.text}\n{calls}".strip()))
        elif m.role == "tool":
            text = m.text if not m.is_error or m.text.lower().startswith("error") \
                else f"error: {m.text}"
            body = f"<tool_response>\n{text}\n</tool_response>"
            if out and out[-1].role == "user" and out[-1].text.startswith("<tool_response>"):
                out[-1] = Message("user", f"{out[-1].text}\n{body}")
            else:
                out.append(Message("user", body))
        else:
            out.append(m)
    return out


def overrides_of(values: dict[str, Any]) -> dict[str, bool]:
    """The switches among `values` that are set (not None)."""
    return {k: bool(v) for k, v in values.items() if k in SWITCHES and v is not None}
