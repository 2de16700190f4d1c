"""The agent's four tools: bash, read, write, edit.

New capabilities are skills (markdown + scripts), never new tools. A tool never raises:
every failure is a ToolResult with is_error=True and a message that tells the model what to
do next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentd.quota import TurnQuota
    from agentd.redact import Redactor
    from agentd.tools.dispatch import ToolRunner

PROFILES = ("trusted", "untrusted", "readonly")


@dataclass
class ToolResult:
    content: str
    is_error: bool = False


@dataclass
class SandboxSettings:
    """How bash runs. `mode` is "bwrap" (default) or "off" (explicit opt-out, warned);
    `network` is "none" (default), "allowlist" (HTTP(S) to `allow_domains` only, through
    agentd's proxy) or "full" (explicit opt-in, warned). The limits apply to
    every command; 0 means no limit of that kind (see agentd/tools/limits.py).
    `uid`/`gid`: who commands run as when agentd is root (a number or a name; gid defaults
    to the user's primary group); ignored otherwise (see agentd/tools/owner.py)."""

    mode: str = "bwrap"
    network: str = "none"
    allow_domains: list[str] = field(default_factory=list)
    timeout: float = 120.0
    output_limit: int = 30_000
    tmp_size_mb: int = 256
    cpu_seconds: int = 300
    memory_mb: int = 2048
    file_size_mb: int = 256
    open_files: int = 1024
    processes: int = 256
    uid: int | str = 65534
    gid: int | str | None = None


@dataclass
class ToolContext:
    """Where tools may act, decided by the runtime, never by the model.

    `home` and `workdir` are resolved (absolute, symlinks followed) by the runtime; the file
    tools open them (and scratch) from `/` following no symlink, so a folder on the way that
    the agent swapped for a link is refused rather than followed. The
    `profile` says what is writable, for bash and the file tools alike:
    "trusted" (CLI, the owner): the home and the workdir;
    "untrusted" (strangers' text: webhooks, inbox files): only `<home>/outbox/` and
    `scratch`, a fresh per-turn folder (created on first use when None); the rest read-only;
    "readonly": nothing but the sandbox's private /tmp.
    `redactor` scrubs secrets from every tool result; None means one built from the
    environment's well-known key variables (see agentd/redact.py).
    `owner` (uid, gid) owns what the file tools create, when agentd runs as root and the
    sandbox as an unprivileged uid (so bash can still change those files); None: agentd's own.
    `quota`: an untrusted turn's disk quota (agentd/quota.py), which `write` checks first.
    """

    home: Path
    workdir: Path
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    profile: str = "trusted"
    scratch: Path | None = None
    redactor: Redactor | None = None
    owner: tuple[int, int] | None = None
    quota: TurnQuota | None = None
    # The writable folders were handed to the sandbox's uid (agentd/tools/sandbox.hand_over)
    # at the turn's first command; the file tools create for `owner`, so once is enough.
    handed_over: bool = False
    told: set[str] = field(default_factory=set)  # notes already shown in this turn
    # How the loop runs each call: None is dispatch.run_tool; the fleet wraps it so that
    # each call is a durable step (agentd/fleet/durable.py, via run_turn's `steps`).
    runner: ToolRunner | None = None
