"""One turn in a home, whatever triggered it: pick the model, build the prompt, run the loop,
and keep the books (session transcript, usage ledger). The CLI, the daemon and the bridge
all come through here, and every turn runs under the home's turn lock (agentd/turnlock.py)
and, when untrusted, within its disk quota (agentd/quota.py)."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from agentd import history
from agentd.config import Settings
from agentd.daylog import DAILY, append_entry, append_held
from agentd.home import runtime_dir
from agentd.llm.router import build_provider, choose_model
from agentd.llm.types import Message, Provider, ToolCall, Usage
from agentd.loop import Events, TurnResult, run_loop
from agentd.prompt import build_system_prompt
from agentd.quota import TurnQuota, check_home
from agentd.redact import Redactor, from_settings
from agentd.session import SessionLog, load_messages, new_id
from agentd.tools import SandboxSettings, ToolContext
from agentd.tools.owner import sandbox_owner
from agentd.turnlock import OnWait, turn_lock
from agentd.usage import append_ledger, cost, price_for


@dataclass
class TurnRequest:
    task: str
    workdir: Path
    trigger: str = "cli"
    model: str | None = None
    max_steps: int | None = None
    record: Path | None = None
    session: str | None = None  # continue this session's transcript instead of a new one
    new_session: bool = False  # `session` is a fresh id: start its transcript (chat's 1st turn)
    profile: str = "trusted"  # what the tools may change (agentd/tools: ToolContext.profile)
    scratch: Path | None = None  # untrusted: a writable folder; None: a fresh one per turn


@dataclass
class TurnReport:
    run_id: str
    model: str
    result: TurnResult
    seconds: float
    cost: float | None
    models: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    session: Path | None = None
    commit: str | None = None
    blocked: dict[str, list[str]] = field(default_factory=dict)  # path -> secret names
    held: dict[str, str] = field(default_factory=dict)  # path -> why not committed

    @property
    def ok(self) -> bool:
        return self.result.status == "ok"


class _Books(Events):
    """Writes every message to the transcript and every model call to the ledger, then
    forwards to the caller's events. Tool calls leave the turn redacted: a key the model
    types into a command must not reach the terminal, `run --json`, the daemon log or a
    bridge client (the tool itself still gets the call as the model made it). After each
    tool call of an untrusted turn it holds the turn to its disk quota, telling the model
    in that call's result what was removed."""

    def __init__(self, outer: Events, log: SessionLog, report: TurnReport, home: Path,
                 settings: Settings, trigger: str, redactor: Redactor,
                 quota: TurnQuota | None = None):
        self.outer, self.log, self.report, self.redactor = outer, log, report, redactor
        self.ledger = runtime_dir(home) / "usage.jsonl"
        self.settings, self.trigger = settings, trigger
        self.quota = quota
        self._priced = True
        self.report.cost = 0.0

    def text(self, delta: str) -> None:
        self.outer.text(delta)

    def _shown(self, call: ToolCall) -> ToolCall:
        return replace(call, name=self.redactor.redact(call.name),
                       arguments=self.redactor.redact_data(call.arguments))

    def tool_call(self, call: ToolCall) -> None:
        self.outer.tool_call(self._shown(call))

    def tool_result(self, call: ToolCall, result: Message) -> None:
        note = self.quota.enforce() if self.quota is not None else None
        if note:  # the model reads this result next, and the transcript keeps it
            result.text = f"{result.text}\n\n{note}" if result.text else note
            result.is_error = True
        shown = self._shown(call)
        self.report.tool_calls.append({"name": shown.name, "arguments": shown.arguments,
                                       "is_error": result.is_error})
        self.outer.tool_result(shown, result)

    def message(self, msg: Message) -> None:
        self.log.append(msg)
        if msg.role == "assistant":
            model = msg.model or self.report.model
            if model not in self.report.models:
                self.report.models.append(model)
            usage = msg.usage or Usage()
            usd = cost(usage, price_for(model, self.settings.prices))
            append_ledger(self.ledger, self.report.run_id, model, self.trigger, usage, usd)
            if usd is None or self.report.cost is None:
                self.report.cost = None
            else:
                self.report.cost = round(self.report.cost + usd, 9)
        self.outer.message(msg)


def sandbox_for(settings: Settings, req: TurnRequest) -> SandboxSettings:
    """A turn on strangers' text (untrusted, readonly) never gets the network, whatever
    `[sandbox] network` says: untrusted input plus egress is how data gets exfiltrated."""
    if req.profile == "trusted" or settings.sandbox.network == "none":
        return settings.sandbox
    return replace(settings.sandbox, network="none")


def _outcome(r: TurnResult) -> str:
    detail = r.error if r.status != "ok" else r.text.strip().split("\n")[0]  # not at U+2028
    return f"{r.status}, {r.steps} step{'s' * (r.steps != 1)}" + (f": {detail}" if detail
                                                                   else "")


def commit_manual_edits(home: Path, scan: history.Scan | None) -> str | None:
    """Commit what the user changed by hand since the last turn, so history attributes it."""
    changes = history.pending(home, scan)
    manual = [f for f in changes.files if not f.startswith(DAILY + "/")]
    return history.commit(home, manual, "Manual edits", {"Agentd-Trigger": "manual"})


def finish_turn(home: Path, req: TurnRequest, report: TurnReport,
                redactor: Redactor | None) -> None:
    """Append the day log entry, then commit the turn's files (not the held-back ones, which
    the entry and the commit body name)."""
    scan = redactor.find if redactor else None
    clean = redactor.redact if redactor else str
    changes = history.pending(home, scan)
    files = [f for f in changes.files if not f.startswith(DAILY + "/")]
    report.blocked, report.held = changes.blocked, dict(changes.held)
    source = None if req.profile == "trusted" else req.trigger
    models = ", ".join(report.models) or report.model
    now = datetime.now().astimezone()
    log = append_entry(home, now, req.trigger, models, clean(req.task),
                       clean(_outcome(report.result)), files, list(changes.blocked),
                       source=source, held=changes.held)
    if not files:
        return  # nothing but the day log changed: it rides along with the next commit
    daily = {f for f in changes.files if f.startswith(DAILY + "/")}
    daily.add(str(log.relative_to(home)))  # no second `git status`: we just wrote it
    late: dict[str, str] = {}
    report.commit = history.commit(
        home, files + sorted(daily), clean(req.task),
        {"Agentd-Run": report.run_id, "Agentd-Model": models, "Agentd-Trigger": req.trigger},
        "\n".join(clean(n) for n in changes.notes()), held=late)
    if late:  # git refused these at commit time; this line rides along with the next commit
        report.held |= late
        append_held(home, now, late, source)


async def run_turn(home: Path, settings: Settings, req: TurnRequest, events: Events,
                   base: Path | None = None, on_wait: OnWait | None = None) -> TurnReport:
    """Run one turn. Config problems raise AgentdError before anything is spent. Then the
    turn waits for the home's turn lock (`on_wait` is told once, with who holds it, if it
    has to), and an untrusted turn is refused (AgentdError) when the home is over its disk
    cap. Everything after that ends up in the report, the transcript, the day log and one
    git commit."""
    spec = choose_model(req.model, settings)
    run_id = new_id()
    path = runtime_dir(home, "sessions") / f"{req.session or run_id}.jsonl"
    provider = build_provider(spec, settings, base or req.workdir, runtime_dir(home),
                              run_id=run_id, trigger=req.trigger, session=path)
    if req.record:
        from agentd.llm.replay import RecordingProvider

        provider = RecordingProvider(provider, req.record)
    try:
        async with turn_lock(home, req.trigger, on_wait=on_wait):
            home_used = 0
            if req.profile == "untrusted":
                home_used = await asyncio.to_thread(check_home, home, settings.quota)
            report = TurnReport(run_id, spec, TurnResult("ok"), 0.0, 0.0, session=path)
            await _run_locked(home, settings, req, events, provider, report, home_used)
            return report
    finally:
        close = getattr(provider, "aclose", None)
        if close:
            await close()


async def _run_locked(home: Path, settings: Settings, req: TurnRequest, events: Events,
                      provider: Provider, report: TurnReport, home_used: int) -> None:
    """The turn itself, under the lock: the loop, then the books and the commit, which
    happen even when the loop is interrupted."""
    path = report.session
    assert path is not None
    resuming = bool(req.session) and not req.new_session
    messages = load_messages(path) if resuming else []
    redactor = from_settings(settings)
    await asyncio.to_thread(commit_manual_edits, home, redactor.find)
    started = time.monotonic()
    log = SessionLog(path, None if resuming else {
        "id": req.session or report.run_id, "trigger": req.trigger, "model": report.model,
        "workdir": str(req.workdir)}, redactor=redactor)
    system = build_system_prompt(home, req.workdir)
    messages.append(Message("user", req.task))
    log.append(messages[-1])
    sandbox = sandbox_for(settings, req)
    ctx = ToolContext(home=home, workdir=req.workdir, sandbox=sandbox, profile=req.profile,
                      scratch=req.scratch, redactor=redactor, owner=sandbox_owner(sandbox))
    if req.profile == "untrusted":
        ctx.quota = await asyncio.to_thread(TurnQuota, ctx, settings.quota, home_used)
    books = _Books(events, log, report, home, settings, req.trigger, redactor, ctx.quota)
    try:
        report.result = await run_loop(provider, system, messages, ctx,
                                       req.max_steps or settings.max_steps, books)
    except asyncio.CancelledError:
        report.result = TurnResult("interrupted", error="interrupted by the user")
        raise
    finally:
        report.seconds = round(time.monotonic() - started, 3)
        r = report.result
        log.end(run=report.run_id, status=r.status, error=r.error, steps=r.steps,
                seconds=report.seconds, cost=report.cost)
        if ctx.quota is not None:  # the excess goes before the commit, never into it
            await asyncio.to_thread(ctx.quota.enforce)
        await asyncio.to_thread(finish_turn, home, req, report, redactor)
        if req.scratch is None and ctx.scratch is not None:  # made for this turn only
            shutil.rmtree(ctx.scratch, ignore_errors=True)
