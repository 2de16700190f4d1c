"""A fleet turn: the DBOS workflow `agentd.fleet.turn`, which runs agentd.turn.run_turn in a
fresh clone of the home, with every model call and tool call a step (agentd.fleet.durable).

In order:
1. step "begin": sync the worker's mirror of the home, record the base (the branch head);
2. outside steps, deterministic from the base: a fresh clone at the base, the home's
   runtime files restored into it (agentd.fleet.carry: transcript, heartbeat and cron
   state, the recent usage ledger, so budgets hold per home);
3. run_turn on the clone with the home's settings (its agentd.toml at the base); replayed
   after a crash, its completed steps come from their checkpoints and their patches
   rebuild the tree, so only the step in flight runs again;
4. the runtime files saved back, then step "publish": the turn's one commit pushed
   fast-forward (rebased onto the owner's pushes, or to a conflict branch), marked
   `Agentd-Run: <workflow ID>` so a publish cut short by a crash is never pushed twice;
   the home's head recorded;
5. the result, also the last event of the turn's stream "out".

Sync, not async: DBOS runs every async workflow of a process on one shared event loop,
where one turn's blocking work (transcript and ledger writes, prompt building, a slow
SDK) would stall every other turn of the worker. A sync workflow gets a thread of its
own from DBOS's pool, and runs the turn on an event loop of its own (asyncio.run), as
`agentd run` does: a turn cannot starve its neighbours, and a killed turn's loop is
never shared.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbos import DBOS, StepOptions
from dbos._error import DBOSMaxStepRetriesExceeded

from agentd.errors import AgentdError
from agentd.fleet import cachedir, carry, ceilings, db, endpoints, schedule, workspace
from agentd.fleet.durable import STREAM, DurableSteps
from agentd.fleet.snapshot import Caps
from agentd.home import RUNTIME
from agentd.homefs import Root
from agentd.loop import Events
from agentd.redact import from_settings
from agentd.tools import SandboxSettings
from agentd.turn import TurnReport, TurnRequest, run_turn

log = logging.getLogger("agentd.fleet")
# The workflow's name, as enqueue.TURN_WORKFLOW spells it for the processes that queue turns
# (enqueue imports this module to queue from inside a worker, so not the other way round).
NAME = "agentd.fleet.turn"
ATTEMPTS = 5  # for what talks to git remotes and the database: they come back
RETRY: StepOptions = {"retries_allowed": True, "max_attempts": ATTEMPTS,
                      "interval_seconds": 1.0}


@dataclass
class _Config:
    db_url: str = ""
    cache: Path | None = None


_config = _Config()


def configure(db_url: str, cache: Path) -> None:
    """Where this worker's turns keep their git (the mirrors and the clones under
    `cache`) and the fleet database (homes, usage, runtime state). The worker calls it
    before DBOS launches, since launch resumes unfinished turns at once.

    The cache is made private (0700; cachedir.private_cache refuses one others could
    have written): it holds every home's mirror and the clones of the turns running now,
    and the sandbox, running as its own uid, sees any folder it can search
    (`--ro-bind / /`); a folder it cannot search is masked but for the turn's own clone
    (agentd.tools.owner.reach_plan). So one home's agent never reads another's."""
    _config.db_url, _config.cache = db_url, cachedir.private_cache(cache)


def _configured() -> tuple[str, Path]:
    if not _config.db_url or _config.cache is None:
        raise AgentdError("the fleet turn is not configured: call turnflow.configure first")
    return _config.db_url, _config.cache


def clone_path(cache: Path, workflow_id: str) -> Path:
    """The turn's clone: a folder named after the workflow ID (made safe: cron job names
    come from the home), so a restarted worker finds and replaces its own."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", workflow_id)[:80]
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:16]
    return cache / "turns" / f"{safe}-{digest}"


class NoSuchHome(AgentdError):
    """Not worth a retry: the turn ends at once."""


def _begin(db_url: str, cache: Path, home: str) -> dict[str, str]:
    """Step "begin": where the home's git lives, and its branch head now (the base)."""
    rows = db.retrying(db_url, db.homes, db.check_name(home))
    if not rows:
        raise NoSuchHome(f"no home named {home!r} in the fleet (agentd fleet add)")
    row = rows[0]
    base = workspace.sync_mirror(cache, home, row.git_url, row.branch)
    return {"base": base, "git_url": row.git_url, "branch": row.branch}


def _fresh_clone(cache: Path, home: str, begin: dict[str, str], dest: Path) -> Path:
    """A clone at the base, replacing what an earlier run of this turn left here. A
    worker recovering another's turn may not have fetched the base yet: fetch, again."""
    for attempt in (1, 2):
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            return workspace.checkout(cache, home, begin["base"], dest, begin["branch"])
        except AgentdError:
            if attempt == 2:
                raise
            workspace.sync_mirror(cache, home, begin["git_url"], begin["branch"])
    raise AssertionError("unreachable")


def _restore(db_url: str, home: str, clone: Path, request: dict[str, Any],
             workflow_id: str) -> None:
    """The home's runtime files into the clone (carry.restore). Not a step: every run of
    the turn, a recovery's too, needs them in its own fresh clone. Waits out a database
    restart (db.retrying)."""
    db.retrying(db_url, carry.restore, home, clone, request, workflow_id)


def _save(db_url: str, home: str, clone: Path, workflow_id: str) -> list[str]:
    """Step "save": the clone's runtime files and the turn's ledger rows into the fleet
    database (carry.save; its notes, for the log)."""
    return db.retrying(db_url, carry.save, home, clone, workflow_id)


def _publish(db_url: str, cache: Path, home: str, begin: dict[str, str], clone: Path,
             marker: str) -> dict[str, Any]:
    """Step "publish": workspace.publish, then the home's head as it left it; the outcome
    as a plain dict for the checkpoint. Retried whole (but not when git refused the
    objects: workspace.Refused): a second publish finds the commit by its marker and
    pushes nothing."""
    try:
        published = workspace.publish(cache, home, begin["git_url"], begin["branch"], clone,
                                      begin["base"], marker)
    except AgentdError as e:  # said once per attempt: a retry is not silent
        log.warning("turn %s of %s: publish failed: %s", marker, home, _why(e))
        raise
    db.retrying(db_url, db.set_head, home, published.head)
    return asdict(published)


def _why(e: Exception) -> str:
    """One line: what went wrong (for a step out of retries, what git or the database
    said the last time)."""
    if isinstance(e, DBOSMaxStepRetriesExceeded) and e.errors:
        e = e.errors[-1]
    return db.first_line(e)


def _failed(error: str) -> dict[str, Any]:
    return {"status": "error", "text": "", "error": error, "steps": 0, "commit": None,
            "cost": None, "conflict": None, "notes": []}


def _idle() -> dict[str, Any]:
    """A heartbeat turn with nothing due: no model call, no commit (the daemon's rule)."""
    return {"status": "idle", "text": "", "error": None, "steps": 0, "commit": None,
            "cost": 0.0, "conflict": None, "notes": []}


def _settings(db_url: str, clone: Path) -> Any:
    """The clone's agentd.toml through homefs (agent-written: a symlink to /dev/zero or
    a secret must not be read on the host); a broken file fails the turn, as `agentd run`
    does, rather than running it on defaults. Its [sandbox] may not loosen the worker's
    unless the fleet's setting `trust_home_sandbox` says every home's owner may, nor take
    more of the worker than the fleet's `sandbox_limits` (agentd.fleet.ceilings), nor
    send the worker's key (or its host's requests) to a base_url the operator did not
    allow for it (agentd.fleet.endpoints)."""
    with Root(clone) as root:
        settings, problem = schedule.settings_of(root)
    if problem:
        raise AgentdError(problem)
    fleet = db.retrying(db_url, db.settings)
    if fleet["trust_home_sandbox"] is not True:
        _confined(settings.sandbox)
        ceilings.bound(settings.sandbox, fleet[ceilings.SETTING])
        _keys_only(settings.providers)
        endpoints.check(settings.providers, fleet[endpoints.SETTING])
    return settings


def _keys_only(providers: dict[str, Any]) -> None:
    """Refuse a provider whose key_env names a variable of the worker that is no API key
    (`AGENTD_FLEET_DB`: the fleet's database URL, password and all, would go to the
    home's base_url as its key)."""
    for name, endpoint in providers.items():
        if endpoint.key_env and not endpoint.key_env.endswith("_API_KEY"):
            raise AgentdError(f"providers.{name}.key_env = {endpoint.key_env!r}: a fleet "
                              "home's key comes from a variable named *_API_KEY")


def _confined(sandbox: SandboxSettings) -> None:
    """Refuse a home whose agentd.toml loosens the sandbox. On one machine its owner owns
    the host, so it is theirs to loosen; a fleet worker serves many owners, none of them
    its operator: without the sandbox the agent is the worker (its keys, its database
    URL, every home's mirror), the host's network reaches the fleet's PostgreSQL on
    loopback, and another uid is another host user's files. (An operator who owns every
    home says so with the fleet setting `trust_home_sandbox`.)"""
    default = SandboxSettings()
    if sandbox.mode != default.mode:
        raise AgentdError(f'sandbox.mode = "{sandbox.mode}": a fleet home always runs '
                          "sandboxed")
    if sandbox.network == "full":
        raise AgentdError('sandbox.network = "full": a fleet home may use "allowlist", '
                          "not the worker's own network")
    if (sandbox.uid, sandbox.gid) != (default.uid, default.gid):
        raise AgentdError("sandbox.uid/gid: a fleet home runs commands as the worker's "
                          "sandbox user, not its own choice")


BEAT = f"{RUNTIME}/{carry.DAEMON_FILES[0]}"  # the heartbeat items' times


def _heartbeat(clone: Path, settings: Any) -> dict[str, Any]:
    """Step "heartbeat": the task from the items due now, or None
    (schedule.heartbeat_task; a step, so its gates run once), and the items' times it
    saved, which `_beat` writes back when the step is replayed."""
    task = asyncio.run(schedule.heartbeat_task(clone, settings, datetime.now(UTC)))
    with Root(clone) as root:
        try:
            state = root.read_bytes(BEAT, carry.STATE_CAP).decode("utf-8", "surrogateescape")
        except OSError:
            state = None
    return {"task": task, "state": state}


def _beat(clone: Path, out: dict[str, Any] | str | None) -> str | None:
    """The heartbeat step's task, its items' times written into the clone: replayed, the
    step did not write them, and a turn that forgot them would run the items again."""
    if not isinstance(out, dict):  # a checkpoint of an older agentd: the task only
        return out
    if out["state"] is not None:
        with Root(clone) as root:
            root.write_bytes(BEAT, out["state"].encode("utf-8", "surrogateescape"))
    task: str | None = out["task"]
    return task


def _result(report: TurnReport, published: dict[str, Any],
            notes: list[str]) -> dict[str, Any]:
    """The turn's result; `notes`: what of its files a recovery would not rebuild (a file
    over the caps, left out of a step's checkpoint)."""
    r = report.result
    conflict = (published["ref"].removeprefix("refs/heads/")
                if published["conflict"] else None)
    return {"status": r.status, "text": r.text, "error": r.error, "steps": r.steps,
            "commit": published["commit"], "cost": report.cost, "conflict": conflict,
            "notes": notes}


def _turn(home: str, request: dict[str, Any], workflow_id: str) -> dict[str, Any]:
    db_url, cache = _configured()
    try:  # before anything is spent: it may not be one
        req = TurnRequest.from_json(request)
    except (TypeError, KeyError, ValueError) as e:
        raise AgentdError(f"not a turn request: {e}") from None
    begin: dict[str, str] = DBOS.run_step(
        {"name": "begin", **RETRY, "should_retry": lambda e: not isinstance(e, NoSuchHome)},
        _begin, db_url, cache, home)
    clone = clone_path(cache, workflow_id)
    try:
        clone = _fresh_clone(cache, home, begin, clone)
        steps = DurableSteps(clone, workflow_id)
        req.workdir = clone  # the request's own is another machine's
        _restore(db_url, home, clone, request, workflow_id)
        settings = _settings(db_url, clone)
        steps.redactor = redactor = from_settings(settings)  # the stream, the result
        steps.caps = Caps.of(settings.git)  # a step's patch is bounded as a commit is
        if req.trigger == "heartbeat":  # zero tokens when nothing in HEARTBEAT.md is due
            task = _beat(clone, DBOS.run_step({"name": "heartbeat"}, _heartbeat, clone,
                                              settings))
            if task is None:
                DBOS.run_step({"name": "save", **RETRY}, _save, db_url, home, clone,
                              workflow_id)  # the items' checked times travel
                return _idle()
            req.task = task
        report = asyncio.run(run_turn(clone, settings, req, Events(), steps=steps))
        notes: list[str] = DBOS.run_step({"name": "save", **RETRY}, _save, db_url, home,
                                         clone, workflow_id)
        published: dict[str, Any] = DBOS.run_step(
            {"name": "publish", **RETRY,  # git's fsck refuses the same objects again
             "should_retry": lambda e: not isinstance(e, workspace.Refused)},
            _publish, db_url, cache, home, begin, clone, workflow_id)
    finally:
        shutil.rmtree(clone, ignore_errors=True)
    for note in notes:
        log.warning("turn %s of %s: %s", workflow_id, home, note)
    if steps.replayed:
        log.info("turn %s: %d tool steps replayed from their checkpoints", workflow_id,
                 steps.replayed)
    for note in steps.notes():
        log.warning("turn %s of %s: %s", workflow_id, home, note)
    result = _result(report, published, steps.notes())
    result["text"] = redactor.redact(result["text"])
    result["error"] = redactor.redact(result["error"]) if result["error"] else None
    result["notes"] = [redactor.redact(n) for n in result["notes"]]
    return result


@DBOS.workflow(name=NAME)
def fleet_turn(home: str, request: dict[str, Any]) -> dict[str, Any]:
    """One turn of `home` (see the module doc). `request` is TurnRequest.to_json() (its
    workdir is ignored: the turn runs in a fresh clone). A turn that cannot run (an
    unknown home, a broken agentd.toml, a request that does not parse, a tree that drifted
    from its checkpoints) ends with status "error" and a one-line reason."""
    workflow_id = DBOS.workflow_id
    assert workflow_id is not None
    try:
        result = _turn(home, request, workflow_id)
    except (AgentdError, ValueError, KeyError, TypeError, DBOSMaxStepRetriesExceeded) as e:
        result = _failed(_why(e))
        log.error("turn %s of %s failed: %s", workflow_id, home, result["error"])
    DBOS.write_stream(STREAM, {"kind": "end", **result})
    DBOS.close_stream(STREAM)
    return result
