"""What the model and the tools agree on: a tool's schema (ToolSpec) and a call of it
(ToolCall).

Neutral ground, importing nothing of agentd: agentd/llm/ sends specs and parses calls,
agentd/tools/ declares specs and runs calls, and neither may import the other (tools know
nothing of models, models nothing of tools' implementations; tests/test_layers.py). Both
import these two types from here; agentd.llm.types re-exports them for the conversation
types that hold calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    """A tool call as the model asked for it.

    `arguments` is the parsed JSON object; when the model sent something that is not a JSON
    object, `arguments` is empty and `error` says what was wrong (the loop answers it with
    an error result instead of running the tool). `raw` keeps the text the model sent when
    it had to be repaired or could not be read (llm/toolparse.py), so the transcript holds
    the evidence.
    """

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """What the model is told about a tool: name, one-paragraph description, JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]
