"""The four tool schemas the model sees, and the one function that runs a call.

Schemas are deliberately small: they are sent with every model call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from agentd.llm.types import ToolCall, ToolSpec
from agentd.tools import ToolContext, ToolResult

_PATH = {"type": "string", "description": "File path, relative to the workdir or absolute"}

SPECS: list[ToolSpec] = [
    ToolSpec("bash", "Run a bash command in the workdir (sandboxed: no network, only the home "
             "and workdir writable). Returns stdout+stderr, trimmed when long.",
             {"type": "object", "properties": {
                 "command": {"type": "string"},
                 "timeout": {"type": "integer", "description": "Seconds (default 120)"}},
              "required": ["command"]}),
    ToolSpec("read", "Read a text file with line numbers. Long files: use offset and limit.",
             {"type": "object", "properties": {
                 "path": _PATH,
                 "offset": {"type": "integer", "description": "First line (1-based)"},
                 "limit": {"type": "integer", "description": "Number of lines"}},
              "required": ["path"]}),
    ToolSpec("write", "Create or overwrite a file; parent folders are created.",
             {"type": "object", "properties": {"path": _PATH, "content": {"type": "string"}},
              "required": ["path", "content"]}),
    ToolSpec("edit", "Replace old_text with new_text in a file; old_text must match exactly "
             "once.",
             {"type": "object", "properties": {
                 "path": _PATH, "old_text": {"type": "string"}, "new_text": {"type": "string"}},
              "required": ["path", "old_text", "new_text"]}),
]
_BY_NAME = {s.name: s for s in SPECS}
# What runs a call: run_tool, or a caller's wrapper around it (ToolContext.runner).
ToolRunner = Callable[[ToolContext, ToolCall], Awaitable[ToolResult]]
_PY_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "integer": int}


def check_arguments(spec: ToolSpec, args: dict[str, Any]) -> str | None:
    """Validate arguments against the (tiny) schema; return an error message or None."""
    props = spec.parameters["properties"]
    for name in spec.parameters["required"]:
        if name not in args:
            return f"{spec.name} needs argument '{name}'"
    for name, value in args.items():
        if name not in props:
            return f"{spec.name} has no argument '{name}' (it takes {', '.join(props)})"
        kind = _PY_TYPES[props[name]["type"]]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{spec.name} argument '{name}' must be a {props[name]['type']}"
    return None


async def run_tool(ctx: ToolContext, call: ToolCall) -> ToolResult:
    """Run one tool call. Never raises: every failure is an error result for the model.
    Secrets are redacted here, the one place every tool result passes, before the model,
    the transcript or the terminal sees them."""
    from agentd import redact

    result = await _run(ctx, call)
    result.content = (ctx.redactor or redact.default()).redact(result.content)
    return result


async def _run(ctx: ToolContext, call: ToolCall) -> ToolResult:
    spec = _BY_NAME.get(call.name)
    if spec is None:
        return ToolResult(f"error: unknown tool '{call.name}'; the tools are "
                          f"{', '.join(_BY_NAME)}", True)
    if call.error:
        return ToolResult(f"error: {call.name}: {call.error}; send the arguments as one "
                          "JSON object matching the tool's schema", True)
    problem = check_arguments(spec, call.arguments)
    if problem:
        return ToolResult(f"error: {problem}", True)
    a = call.arguments
    if call.name == "bash":
        from agentd.tools.bash import run_bash

        return await run_bash(ctx, a["command"], a.get("timeout"))
    from agentd.tools import files

    if call.name == "read":
        return await asyncio.to_thread(files.read_file, ctx, a["path"], a.get("offset"),
                                       a.get("limit"))
    if call.name == "write":
        return await asyncio.to_thread(files.write_file, ctx, a["path"], a["content"])
    return await asyncio.to_thread(files.edit_file, ctx, a["path"], a["old_text"],
                                   a["new_text"])
