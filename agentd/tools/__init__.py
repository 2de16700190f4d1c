"""The agent's four tools: bash, read, write, edit.

New capabilities are skills (markdown + scripts), never new tools. A tool never raises:
every failure is a ToolResult with is_error=True and a message that tells the model what to
do next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ToolResult:
    content: str
    is_error: bool = False


@dataclass
class SandboxSettings:
    """How bash runs. `mode` is "bwrap" (default) or "off" (explicit opt-out, warned)."""

    mode: str = "bwrap"
    timeout: float = 120.0
    output_limit: int = 30_000
    tmp_size_mb: int = 256


@dataclass
class ToolContext:
    """Where tools may act: the home and the workdir are the only writable places.

    Both paths are resolved (absolute, symlinks followed) by the runtime, never by the model.
    """

    home: Path
    workdir: Path
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
