"""One turn in a home, whatever triggered it: `agentd run`, a chat line, the heartbeat, a
cron job, an inbox file, a bridge request. Each builds a `TurnRequest` (what to run) and
calls `run_turn`, which, in this order:

1. picks the model and waits for the home's turn lock (agentd/turnlock.py; at once when the
   caller already holds it, as the daemon's queue worker does);
2. closes out a turn that was killed outright (its work committed as the agent's:
   agentd/inflight.py), then commits what the person changed by hand since the last turn,
   apart ("Manual edits"), and marks this turn as in flight;
3. resumes the request's session when its transcript exists, else starts it (decided here
   only), and builds the system prompt;
4. runs the loop (agentd/loop.py), writing every message to the transcript and every model
   call to the usage ledger through one writer each (`_Books`);
5. delivers the answer where the request says (a new file in outbox/: agentd/outbox.py);
6. writes the day-log entry and makes the turn's one git commit: the agent's files, the
   answer and the entry together (the entry alone when nothing else changed), so the
   home is clean after every turn;
7. returns a `TurnReport` (what happened).

Steps 5 and 6 happen even when the loop is interrupted. An untrusted turn also runs within
its disk quota (agentd/quota.py)."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agentd import history, inflight
from agentd.chain import build_provider, choose_model
from agentd.config import Settings
from agentd.daylog import append_entry, append_held
from agentd.escalate import chain_for, run_escalating
from agentd.home import Home
from agentd.llm.types import Message, Provider, Sampling, ToolCall, Usage
from agentd.loop import Events, LoopResult
from agentd.outbox import Delivery, deliver
from agentd.prompt import build_system_prompt
from agentd.quota import TurnQuota, check_home
from agentd.redact import Redactor, from_settings
from agentd.savings import frontier, is_local, saved
from agentd.session import SessionLog, load_messages, new_id
from agentd.tools import SandboxSettings, ToolContext
from agentd.tools.dispatch import ToolRunner, run_tool
from agentd.tools.owner import sandbox_owner
from agentd.turnlock import OnWait, turn_lock
from agentd.usage import Ledger


@dataclass
class TurnRequest:
    """What to run: every trigger builds one and hands it to `run_turn`. The bridge keeps it
    on disk (`to_json`) for a turn it accepted but had not run before a restart."""

    task: str
    workdir: Path
    trigger: str = "cli"  # cli, chat:<id>, heartbeat, cron, inbox, webhook:<name>, …
    model: str | None = None  # PROVIDER:MODEL, or None: the home's chain (agentd.toml)
    session: str | None = None  # this session's transcript, continued if it exists (else
    # started); None: a new transcript named after the run
    profile: str = "trusted"  # what the tools may change (agentd/tools: ToolContext.profile)
    delivery: Delivery | None = None  # where the answer goes, beyond the report
    title: str | None = None  # the commit's subject ("Cron: daily"); None: the task's 1st line
    sampling: Sampling | None = None  # a chat client's temperature / max_tokens / stop
    # run-only knobs, never persisted:
    max_steps: int | None = None
    record: Path | None = None  # write the model's replies there, for replay:FILE
    scratch: Path | None = None  # untrusted: a writable folder; None: a fresh one per turn

    def to_json(self) -> dict[str, Any]:
        d = self.delivery
        return {"task": self.task, "workdir": str(self.workdir), "trigger": self.trigger,
                "model": self.model, "session": self.session, "profile": self.profile,
                "delivery": d.to_json() if d else None, "title": self.title,
                "sampling": self.sampling.to_json() if self.sampling else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TurnRequest:
        """The request `to_json` wrote; TypeError, KeyError or ValueError when it is not."""
        if not isinstance(data, dict) or not isinstance(data.get("task"), str):
            raise ValueError("not a turn request")
        d = data["delivery"]
        return cls(data["task"], Path(data["workdir"]), data["trigger"], data["model"],
                   data["session"], data["profile"],
                   Delivery.from_json(d) if d is not None else None, data.get("title"),
                   Sampling.from_json(s) if isinstance(s := data.get("sampling"), dict)
                   else None)


@dataclass
class TurnReport:
    """What happened: the loop's result plus the books (cost, models, commit, delivery)."""

    run_id: str
    model: str
    result: LoopResult
    seconds: float
    cost: float | None
    models: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    session: Path | None = None
    commit: str | None = None
    blocked: dict[str, list[str]] = field(default_factory=dict)  # path -> secret names
    held: dict[str, str] = field(default_factory=dict)  # path -> why not committed
    delivered: str | None = None  # the answer's file in the home (TurnRequest.delivery)
    notes: list[str] = field(default_factory=list)  # for the caller's log (delivery)
    escalations: list[str] = field(default_factory=list)  # "a:m → b:m (max_steps)"
    warnings: list[str] = field(default_factory=list)  # for the caller: stderr or its log

    @property
    def ok(self) -> bool:
        return self.result.status == "ok"


class Steps(Protocol):
    """How a caller makes each model call and each tool call of a turn a durable step
    (agentd/fleet/durable.py). The default, none, calls them directly: the single-machine
    path is unchanged. `run_id` replaces the random one, so a turn run again after a crash
    books, names its transcript and marks its commit (`Agentd-Run`) as the first run did."""

    run_id: str

    def provider(self, provider: Provider) -> Provider: ...
    def tools(self, run: ToolRunner) -> ToolRunner: ...


class _Books(Events):
    """Writes every message to the transcript and every model call to the ledger, then
    forwards to the caller's events. Tool calls leave the turn redacted: a key the model
    types into a command must not reach the terminal, `run --json`, the daemon log or a
    bridge client (the tool itself still gets the call as the model made it). After each
    tool call of an untrusted turn it holds the turn to its disk quota, telling the model
    in that call's result what was removed."""

    def __init__(self, outer: Events, log: SessionLog, report: TurnReport, ledger: Ledger,
                 redactor: Redactor, quota: TurnQuota | None = None):
        self.outer, self.log, self.report, self.redactor = outer, log, report, redactor
        self.ledger = ledger
        self.quota = quota

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
            self.ledger.record(model, msg.usage or Usage())
        self.outer.message(msg)


def sandbox_for(settings: Settings, req: TurnRequest) -> SandboxSettings:
    """A turn on strangers' text (untrusted, readonly) never gets the network, whatever
    `[sandbox] network` says: untrusted input plus egress is how data gets exfiltrated."""
    if req.profile == "trusted" or settings.sandbox.network == "none":
        return settings.sandbox
    return replace(settings.sandbox, network="none")


def _outcome(r: LoopResult) -> str:
    detail = r.error if r.status != "ok" else r.text.strip().split("\n")[0]  # not at U+2028
    return f"{r.status}, {r.steps} step{'s' * (r.steps != 1)}" + (f": {detail}" if detail
                                                                   else "")


def stayed_local(report: TurnReport, settings: Settings) -> str:
    """The day log's note on a turn done wholly on local models, with what it saved."""
    if not report.models or not all(is_local(m, settings) for m in report.models):
        return ""
    usd = saved(report.result.usage, report.cost or 0.0, settings)
    return "; local" + (f", saved ${usd:,.4f} at {frontier(settings)} prices"
                        if usd is not None else "")


def commit_manual_edits(home: Path, scan: history.Scan | None) -> str | None:
    """Commit what the user changed by hand since the last turn, so history attributes it."""
    changes = history.pending(home, scan)  # the day log too: every turn commits its own
    return history.commit(home, changes.files, "Manual edits", {"Agentd-Trigger": "manual"})


def trailers(req: TurnRequest, report: TurnReport) -> dict[str, str]:
    """The turn commit's trailers, which make history machine-readable (`agentd history`,
    `agentd undo` find a turn by them)."""
    return {"Agentd-Run": report.run_id, "Agentd-Model": ", ".join(report.models) or
            report.model, "Agentd-Trigger": req.trigger} | (
        {"Agentd-Status": "interrupted"} if report.result.status == "interrupted" else {})


def deliver_answer(home: Path, req: TurnRequest, report: TurnReport) -> None:
    """Write the answer where the request says, before the commit that is to hold it. A
    failure to write is a note in the report, never a lost commit."""
    if req.delivery is None:
        return
    try:
        report.delivered, note = deliver(home, req.delivery, report.result)
    except OSError as e:
        note = f"the answer was not delivered to {req.delivery.outbox}: {e}"
    if note:
        report.notes.append(note)


def finish_turn(home: Path, req: TurnRequest, report: TurnReport,
                redactor: Redactor | None, settings: Settings) -> None:
    """Append the day log entry, then commit the turn's files (not the held-back ones, which
    the entry and the commit body name)."""
    scan = redactor.find if redactor else None
    clean = redactor.redact if redactor else str
    changes = history.pending(home, scan)
    # Every change made during the turn is the turn's work, memory/daily/ included (today's
    # log too, when something wrote it before the entry below): only the entry itself is
    # "the day log", so a turn cannot hide work from `undo` as a day-log-only commit.
    files = list(changes.files)
    report.blocked, report.held = changes.blocked, dict(changes.held)
    source = None if req.profile == "trusted" else req.trigger
    models = ", ".join(report.models) or report.model
    now = datetime.now().astimezone()
    outcome = _outcome(report.result) + "".join(f"; escalated {e}" for e in report.escalations)
    outcome += stayed_local(report, settings)
    log = append_entry(home, now, req.trigger, models, clean(req.task),
                       clean(outcome), files, list(changes.blocked),
                       source=source, held=changes.held)
    entry = str(log.relative_to(home))  # no second `git status`: we just wrote it
    daily = {entry}
    files = [f for f in files if f != entry]
    touched = entry in changes.files  # written before the entry: not by the runtime alone
    subject, marks = clean(req.title or req.task), trailers(req, report)
    notes = "\n".join(clean(n) for n in changes.notes())  # what was held back, named
    if not files and not touched:  # only the entry: committed alone, so the home is clean
        report.commit = history.commit(home, sorted(daily), subject,
                                       marks | history.DAY_LOG_ONLY, notes)
        return
    late: dict[str, str] = {}
    report.commit = history.commit(home, files + sorted(daily), subject, marks, notes,
                                   held=late)
    if late:  # git refused these at commit time: the day log says so, in a commit of its own
        report.held |= late
        append_held(home, now, late, source)
        history.commit(home, sorted(daily), subject, marks | history.DAY_LOG_ONLY)


async def run_turn(home: Path, settings: Settings, req: TurnRequest, events: Events,
                   base: Path | None = None, on_wait: OnWait | None = None,
                   on_start: Callable[[], None] | None = None,
                   steps: Steps | None = None) -> TurnReport:
    """Run one turn (see the module doc). Config problems raise AgentdError before anything
    is spent. Then the turn waits for the home's turn lock (`on_wait` is told once, with who
    holds it, if it has to; `on_start` once it holds it), and an untrusted turn is refused
    (AgentdError) when the home is over its disk cap. Everything after that ends up in the
    report, the transcript, the outbox, the day log and one git commit. `steps` wraps every
    model and tool call (Steps)."""
    spec = choose_model(req.model, settings, req.trigger)
    run_id = steps.run_id if steps else new_id()
    layout = Home(home)
    sid = req.session or re.sub(r"[^A-Za-z0-9_.-]", "-", run_id)  # a fleet run's ID has ':'
    path = layout.session(sid)
    log = SessionLog(path, {"id": sid, "trigger": req.trigger,
                            "model": spec, "workdir": str(req.workdir)},
                     redactor=from_settings(settings))
    ledger = Ledger(layout.ledger, run_id, req.trigger, settings.prices)
    providers: list[tuple[str, Provider]] = []  # the model, then who takes over (escalate.py)
    for i, s in enumerate(chain_for(spec, settings.escalate_to)):
        p = build_provider(s, settings, base or req.workdir, layout.cooldowns, ledger=ledger,
                           log=log, fallbacks=None if i == 0 else [])
        if req.record:
            from agentd.llm.replay import RecordingProvider

            p = RecordingProvider(p, req.record)
        providers.append((s, steps.provider(p) if steps else p))
    try:
        async with turn_lock(home, req.trigger, on_wait=on_wait):
            if on_start is not None:
                on_start()
            home_used = 0
            if req.profile == "untrusted":
                home_used = await asyncio.to_thread(check_home, home, settings.quota)
            report = TurnReport(run_id, spec, LoopResult("ok"), 0.0, 0.0, session=path)
            await _run_locked(home, settings, req, events, providers, report, home_used,
                              log, ledger, steps.tools(run_tool) if steps else None)
            return report
    finally:
        for _, p in providers:
            await p.aclose()


async def _run_locked(home: Path, settings: Settings, req: TurnRequest, events: Events,
                      providers: list[tuple[str, Provider]], report: TurnReport, home_used: int,
                      log: SessionLog, ledger: Ledger, runner: ToolRunner | None) -> None:
    """The turn itself, under the lock: the loop, then the delivery, the day log and the
    commit, which happen even when the loop is interrupted."""
    path = report.session
    assert path is not None
    resuming = path.exists()  # the one place a session is resumed or started
    messages = load_messages(path) if resuming else []
    if resuming:
        log.continues()
    redactor = log.redactor
    await asyncio.to_thread(inflight.close_out, home, redactor.find)  # a killed turn's work
    await asyncio.to_thread(commit_manual_edits, home, redactor.find)
    await asyncio.to_thread(inflight.begin, home, run_id=report.run_id, trigger=req.trigger,
                            task=req.title or req.task, profile=req.profile, session=path)
    started = time.monotonic()
    system = build_system_prompt(home, req.workdir, warnings=report.warnings, task=req.task,
                                 index_chars=settings.skills.index_chars)
    messages.append(Message("user", req.task))
    log.append(messages[-1])
    sandbox = sandbox_for(settings, req)
    ctx = ToolContext(home=home, workdir=req.workdir, sandbox=sandbox, profile=req.profile,
                      scratch=req.scratch, redactor=redactor, owner=sandbox_owner(sandbox),
                      runner=runner)
    if req.profile == "untrusted":
        ctx.quota = await asyncio.to_thread(TurnQuota, ctx, settings.quota, home_used)
    books = _Books(events, log, report, ledger, redactor, ctx.quota)
    try:
        report.result = await run_escalating(providers, system, messages, ctx,
                                             req.max_steps or settings.max_steps, books,
                                             report.escalations, req.sampling)
    except asyncio.CancelledError:
        report.result = LoopResult("interrupted", error="interrupted by the user")
        raise
    finally:
        report.seconds = round(time.monotonic() - started, 3)
        report.cost = ledger.total(report.model)  # every call, compaction's included
        r = report.result
        log.end(run=report.run_id, status=r.status, error=r.error, steps=r.steps,
                seconds=report.seconds, cost=report.cost)
        if ctx.quota is not None:  # the excess goes before the commit, never into it
            await asyncio.to_thread(ctx.quota.enforce)
        await asyncio.to_thread(deliver_answer, home, req, report)
        await asyncio.to_thread(finish_turn, home, req, report, redactor, settings)
        inflight.end(home)
        if req.scratch is None and ctx.scratch is not None:  # made for this turn only
            shutil.rmtree(ctx.scratch, ignore_errors=True)
