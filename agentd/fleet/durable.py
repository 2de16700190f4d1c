"""Each model call and each tool call of a fleet turn is a DBOS step (agentd.turn.Steps).

A model call step returns the reply (`Message.to_dict`), or the failure as data; replayed,
DBOS returns that checkpoint and no request is made, so a recovered turn is not billed
again for a completed call.

A tool call step runs the tool and returns its result plus what it did to the clone's
files: the tree before, the tree after and the binary patch between them
(agentd.fleet.workspace). After the step, outside it:
- the step ran here, now: the clone is the tree after already;
- it was replayed (the turn is being recovered, on this worker or another): the clone
  must be the tree before, and the patch is applied, which must give the tree after;
- anything else (the clone drifted from what the checkpoints say) fails the turn loudly
  (StepDrift), rather than commit a tree no run of the turn ever made.
So a recovered turn's clone holds every completed step's changes, and at most the step in
flight when the worker died runs again.

Why patches, not a WIP commit pushed per step: the home's remote is the owner's
repository, and the turn promises it exactly one commit, pushed fast-forward at the end.
WIP commits would need a ref per turn on that remote (pushed per step: a network round
trip to someone else's server per tool call, refs to clean up, history the owner sees)
and a squash at the end. A patch lives in the step's own checkpoint, in the same
PostgreSQL row DBOS writes anyway, so recording it costs no extra round trip, and replay
needs nothing but the base commit, which the mirror has. Most tool calls change nothing
(reads, greps, tests) and record an empty patch.

A patch is bounded as the turn's commit is: a changed file over the home's
`[git] max_file_mb`, or past `max_commit_mb` for one step, is left out of the snapshot
before git reads it (agentd.fleet.snapshot), so a 2 GB file never makes a 2 GB row. It
stays on this worker's disk for the rest of the turn (and out of the commit, as
agentd.gitscreen holds it back), but a turn recovered elsewhere does not have it: the
step's checkpoint names it (`held`) and the turn's result says so (`notes`).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from dbos import DBOS

from agentd.errors import AgentdError
from agentd.fleet import workspace
from agentd.fleet.snapshot import Caps
from agentd.gitscreen import NOTE_NAMES, display
from agentd.llm.types import Message, Provider, ProviderError, Sampling, TextSink, ToolSpec
from agentd.redact import Redactor
from agentd.redact import default as default_redactor
from agentd.render import call_line
from agentd.tools import ToolContext, ToolResult
from agentd.tools.dispatch import ToolRunner

STREAM = "out"  # the turn's DBOS stream: what `fleet run --wait` shows as the turn goes
# Tools that change no file (`read` only opens files): their steps take no snapshots, which
# spares two sandboxed git runs (tens of ms each, more on a busy machine) per call.
READ_ONLY = frozenset({"read"})


class StepDrift(AgentdError):
    """The clone is not the tree a replayed tool step started from: the turn stops."""


class ReplayedError(ProviderError):
    """A model call's failure as its checkpoint recorded it (the same line, the same
    kind), raised again on replay so the turn ends as it did the first time."""

    def __init__(self, text: str, kind: str):
        Exception.__init__(self, text)
        self.provider, self.status, self.hint = "", None, ""
        self.transient, self.retry_after = False, None
        self.kind = kind


class DurableProvider:
    """A Provider whose every `complete` is the DBOS step "model"."""

    def __init__(self, inner: Provider, redactor: Redactor | None = None):
        self.inner = inner
        self.name = inner.name
        self.redactor = redactor or default_redactor()  # what leaves the worker is redacted

    async def complete(self, system: str, messages: list[Message], tools: list[ToolSpec],
                       on_text: TextSink | None = None,
                       sampling: Sampling | None = None) -> Message:
        out: dict[str, Any] = await DBOS.run_step_async(
            {"name": "model"}, self._call, system, messages, tools, on_text, sampling)
        if "error" in out:
            raise ReplayedError(out["error"], out["kind"])
        return Message.from_dict(out["reply"])

    async def _call(self, system: str, messages: list[Message], tools: list[ToolSpec],
                    on_text: TextSink | None, sampling: Sampling | None) -> dict[str, Any]:
        """The step's body: the call through the whole stack (fallbacks, budget,
        compaction), its reply shown on the stream. A ProviderError is an outcome, not a
        crash: recorded, so a replay ends the turn the same way without calling again."""
        try:
            reply = await self.inner.complete(system, messages, tools, on_text, sampling)
        except ProviderError as e:
            return {"error": str(e), "kind": e.kind}
        if reply.text.strip():
            await DBOS.write_stream_async(STREAM, {"kind": "text",
                                                   "text": self.redactor.redact(reply.text)})
        return {"reply": reply.to_dict()}

    async def aclose(self) -> None:
        await self.inner.aclose()


class DurableSteps:
    """agentd.turn.Steps for a fleet turn in `clone`: model calls through DurableProvider,
    tool calls as the DBOS step "tool" with the clone's patch in the checkpoint."""

    def __init__(self, clone: Path, run_id: str):
        self.clone = clone
        self.run_id = run_id  # the workflow ID: the commit's Agentd-Run, the ledger's run
        self.replayed = 0  # tool steps replayed from checkpoints (their patches applied)
        self.redactor: Redactor | None = None  # the home's (set once its settings are read)
        self.caps: Caps | None = None  # the home's [git] limits (likewise), else agentd's
        self.held: dict[str, str] = {}  # files the caps keep out of the patches: why
        self.tree = ""  # the tree the last tool step left (recorded or replayed)

    def notes(self) -> list[str]:
        """One line per reason a changed file was left out of a step's checkpoint."""
        by_why: dict[str, list[str]] = {}
        for path, why in self.held.items():
            by_why.setdefault(why, []).append(display(path))
        return [f"Not in a step's checkpoint, so not rebuilt if the turn is recovered "
                f"elsewhere ({why}): {', '.join(paths[:NOTE_NAMES])}"
                + (f" (+{len(paths) - NOTE_NAMES} more)" if len(paths) > NOTE_NAMES else "")
                for why, paths in by_why.items()]

    def provider(self, provider: Provider) -> Provider:
        return DurableProvider(provider, self.redactor)

    def tools(self, run: ToolRunner) -> ToolRunner:
        async def durable(ctx: ToolContext, call: Any) -> ToolResult:
            live: list[bool] = []
            out: dict[str, Any] = await DBOS.run_step_async(
                {"name": "tool"}, self._tool, run, ctx, call, live)
            if not live:  # a checkpoint: rebuild what the step did to the files
                await asyncio.to_thread(self._replay, out)
            if out["after"]:  # each snapshot names every file held back now (a file
                self.tree, self.held = out["after"], out.get("held") or {}  # may fit later)
            return ToolResult(out["content"], bool(out["is_error"]))

        return durable

    async def _tool(self, run: ToolRunner, ctx: ToolContext, call: Any,
                    live: list[bool]) -> dict[str, Any]:
        """The step's body: the call shown on the stream (redacted, as the turn shows it
        everywhere), the tool run between two snapshots of the clone's tree."""
        live.append(True)
        line = (ctx.redactor or default_redactor()).redact(call_line(call))
        await DBOS.write_stream_async(STREAM, {"kind": "tool", "line": line})
        if call.name in READ_ONLY:  # nothing to snapshot, nothing to replay
            result = await run(ctx, call)
            return {"content": result.content, "is_error": result.is_error, "before": "",
                    "after": "", "patch": ""}
        # The tree before is the last step's after (one sandbox launch less per step):
        # what changed in between (a background process) is in this step's patch, and a
        # replay finds each step's tree before where the last one left the clone.
        before = self.tree or await asyncio.to_thread(workspace.tree_of, self.clone,
                                                      self.caps)
        result = await run(ctx, call)
        snap = await asyncio.to_thread(workspace.snapshot, self.clone, before, self.caps)
        return {"content": result.content, "is_error": result.is_error, "before": before,
                "after": snap.tree, "patch": base64.b64encode(snap.patch).decode("ascii"),
                "held": snap.held}

    def _replay(self, out: dict[str, Any]) -> None:
        """Bring the clone from the step's tree before to its tree after (see the module
        doc); StepDrift when it is at neither."""
        if not out["after"]:  # a READ_ONLY call
            return
        now = workspace.tree_of(self.clone, self.caps)
        if now == out["after"]:
            return
        if now != out["before"]:
            raise StepDrift(f"the turn's tree {now[:12]} is neither the one a recorded tool "
                            f"step started from ({out['before'][:12]}) nor the one it left "
                            f"({out['after'][:12]}); the turn stops rather than commit it")
        workspace.apply(self.clone, base64.b64decode(out["patch"]))
        now = workspace.tree_of(self.clone, self.caps)
        if now != out["after"]:
            raise StepDrift(f"a recorded tool step's patch gave the tree {now[:12]}, not "
                            f"{out['after'][:12]}; the turn stops rather than commit it")
        self.replayed += 1
