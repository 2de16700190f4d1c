"""The request of the warm path (agentd/daemon/warm.py serves it, agentd/warm.py sends it):
its fields checked, the environment it carries put in place for its turn, and whether it
would run here as it would in the CLI.

The environment the CLI sends (provider keys, SDK variables, TZ, PATH) is put in place for
the turn and the daemon's own put back after it. That is process-wide, which is sound
because the queue runs one turn at a time and nothing else in the daemon reads those
variables meanwhile (git and bash get environments of their own; `differs` compares with
the daemon's environment as it started). It is never logged or written: the turn's
redactor knows the CLI's keys, because it reads them while they are in place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd import warmwire as wire
from agentd.errors import AgentdError

ENV_LIMIT = 512  # variables a request may carry
PREFIXES = ("ANTHROPIC_", "OPENAI_")  # the SDK prefixes a request may ask to clear


@dataclass(frozen=True)
class Request:
    """A client's request, its fields checked (`parse`)."""

    task: str
    workdir: Path
    workdir_id: list[int]
    base: Path
    base_id: list[int]
    model: str
    session: str | None
    max_steps: int | None
    umask: int
    env: dict[str, str | None]
    prefixes: tuple[str, ...]
    present: frozenset[str]

    @classmethod
    def parse(cls, f: dict[str, Any]) -> Request:
        """The request in `f`; wire.Malformed naming the first field that is wrong."""
        from agentd.session import check_name

        def need(name: str, ok: bool) -> None:
            if not ok:
                raise wire.Malformed(f"a request whose {name!r} is missing or malformed")

        need("v", f.get("v") == wire.VERSION)
        for name in ("task", "workdir", "base", "model"):
            need(name, isinstance(f.get(name), str) and bool(f[name]) and "\0" not in f[name])
        for name in ("workdir", "base"):
            need(name, Path(f[name]).is_absolute())
        for name in ("workdir_id", "base_id"):
            ids = f.get(name)
            need(name, isinstance(ids, list) and len(ids) == 2 and all(_int(i) for i in ids))
        steps, session, umask = f.get("max_steps"), f.get("session"), f.get("umask")
        need("max_steps", steps is None or (_int(steps) and steps >= 1))
        need("umask", _int(umask) and 0 <= umask <= 0o777)
        try:
            session = None if session is None else check_name(session)
        except (AgentdError, AttributeError):
            need("session", False)
        env, prefixes, present = f.get("env"), f.get("prefixes"), f.get("present")
        need("env", isinstance(env, dict) and len(env) <= ENV_LIMIT and all(
            _var(k) and (v is None or (isinstance(v, str) and "\0" not in v
                                       and _encodable(v))) for k, v in env.items()))
        need("prefixes", isinstance(prefixes, list) and all(p in PREFIXES for p in prefixes))
        need("present", isinstance(present, list) and all(_var(n) for n in present))
        return cls(f["task"], Path(f["workdir"]), f["workdir_id"], Path(f["base"]),
                   f["base_id"], f["model"], session, steps, umask, env, tuple(prefixes),
                   frozenset(present))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _var(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 256 and "=" not in name and (
        "\0" not in name) and _encodable(name)


def _encodable(text: str) -> bool:
    """Can os.environ hold it? A lone surrogate the JSON carried (`\\ud800`) cannot, and
    would fail only once the turn is under way."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def environment(env: dict[str, str | None], prefixes: tuple[str, ...]) -> Iterator[None]:
    """The CLI's variables in place for the block (None: unset), and the daemon's own
    variables under `prefixes` the CLI does not have cleared; all put back after."""
    saved = {n: v for n, v in os.environ.items() if prefixes and n.startswith(prefixes)}
    saved.update({n: os.environ.get(n) for n in env})
    try:
        for name in saved:
            os.environ.pop(name, None)
        os.environ.update({n: v for n, v in env.items() if v is not None})
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def differs(home: Path, req: Request, pid: int, own: dict[str, str]) -> str | None:
    """Why this request would not run here as in the CLI, or None (blocking: a thread).
    A client in another mount namespace (in the agent's sandbox, a container, a service
    unit's private mounts) sees other folders under the same paths: never served.

    `own` is the daemon's environment as it started, not os.environ: while another warm
    turn runs, os.environ holds that turn's CLI's variables. Another TZ is `cold`, as
    another umask is: the local clock (the day log's dates and times, cron) is read
    through the C library, which takes TZ in once per process, so a TZ put in place for
    one turn would be ignored, and calling tzset() would move the scheduler's clock too."""
    from agentd.skills import discover

    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            return "it runs in another mount namespace"
    except OSError:
        return "its mount namespace cannot be compared"
    for name, path, want in (("workdir", req.workdir, req.workdir_id),
                             ("current folder", req.base, req.base_id)):
        try:
            if wire.file_id(path) != want:
                return f"its {name} is another folder here"
        except OSError:
            return f"its {name} is not visible here"
    if req.umask != wire.current_umask():
        return "its umask differs"
    if req.env.get("TZ") != own.get("TZ"):
        return "its TZ differs"
    for skill in discover(home, []):
        for var in skill.env:
            if var in req.env:
                continue  # carried: the turn sees the CLI's value
            here = bool(own.get(var)) and not var.startswith(req.prefixes)
            if here != (var in req.present):
                return f"skill {skill.name}'s variable {var} is set on one side only"
    return None
