"""Running a command in the bubblewrap sandbox: find bwrap, prepare one launch (seccomp fd,
limits, network namespace, the drop to the sandbox uid), hand the writable folders over,
and probe bwrap once. The command line itself is built by agentd/tools/bwrap.py.

Why it is shaped like this (verified with bwrap 0.8.0 on Debian 12, running as root):

- As root, commands run as an unprivileged uid (`[sandbox] uid`, default 65534 `nobody`),
  dropped to between fork and exec; the profile's writable folders are handed to that uid
  once per turn (`hand_over`). Why and how: agentd/tools/owner.py.
- A seccomp filter (agentd/tools/seccomp.py, `--seccomp FD`) refuses AF_UNIX sockets,
  ptrace, mount, namespaces, bpf, io_uring and the like; limits (agentd/tools/limits.py)
  bound CPU, memory, file size, open files and processes.
- bwrap's pid-1 reaper keeps the *launcher's* environ and argv, readable at
  `/proc/1/environ` and `/proc/1/cmdline`, so bwrap is spawned with `launcher_env()` and
  argv holds no secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentd.home import PROTECTED_DIRS, PROTECTED_NAMES
from agentd.tools import SandboxSettings, ToolContext, leftovers, limits, netproxy, owner, seccomp
from agentd.tools.bwrap import (
    BASH,
    SANE_PATH,
    bwrap_argv,
    protected_paths,
    sandbox_env,
    writable_paths,
)

INSTALL_HINT = (
    "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, "
    'or opt out with sandbox = "off" in agentd.toml / --no-sandbox'
)
PROBE_TIMEOUT = 10.0
SCRATCH_PREFIX = "agentd-scratch-"
log = logging.getLogger("agentd.sandbox")

# argv tuples whose trivial launch succeeded; only successes are cached, so a fixed install
# is picked up at once and a broken one is re-probed (and refused) every time.
_probed_ok: set[tuple[str, ...]] = set()


def find_bwrap() -> str | None:
    """Prefer /usr/bin/bwrap: Ubuntu's AppArmor profile for user namespaces covers only it."""
    if os.access("/usr/bin/bwrap", os.X_OK):
        return "/usr/bin/bwrap"
    return shutil.which("bwrap")


def launcher_env() -> dict[str, str]:
    """The environment bwrap itself runs with: PATH only, since /proc/1/environ leaks it."""
    return {"PATH": SANE_PATH}


def ensure_scratch(ctx: ToolContext) -> None:
    """Give an untrusted turn its scratch folder (0700, under the host's temp dir) and an
    outbox, when the runtime didn't; impure, so it is kept out of bwrap_argv."""
    if ctx.profile != "untrusted":
        return
    if ctx.scratch is None:
        prefix = f"{SCRATCH_PREFIX}{leftovers.tag()}-"  # whose it is: sweep_leftovers
        ctx.scratch = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    outbox = ctx.home / "outbox"
    if not outbox.exists() and not outbox.is_symlink():
        outbox.mkdir()


def sweep_leftovers() -> list[Path]:
    """Remove what dead agentd processes left on this host: their command cgroups (and
    anything still running in them) and their scratch folders in this temp dir. Returns
    what it removed. Cheap (two directory listings); called as each agentd starts."""
    removed = limits.sweep_cgroups()
    tmp = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in os.scandir(tmp):
            owner_tag = entry.name.removeprefix(SCRATCH_PREFIX).rpartition("-")[0]
            if (entry.name.startswith(SCRATCH_PREFIX) and owner_tag.count("-") == 1
                    and entry.is_dir(follow_symlinks=False)
                    and leftovers.owner_dead(owner_tag)):
                shutil.rmtree(entry.path, ignore_errors=True)  # never follows a symlink
                removed.append(tmp / entry.name)
    return removed


def seccomp_memfd() -> int:
    """A fresh fd holding the compiled filter at offset 0 (bwrap reads it to EOF)."""
    fd = os.memfd_create("agentd-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, seccomp.program())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Launch:
    """Everything needed to spawn one command, and to clean up after it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    pass_fds: tuple[int, ...] = ()
    preexec: Callable[[], None] | None = None
    cgroup: limits.PidsCgroup | None = None
    netns: netproxy.Namespace | None = None  # network = "allowlist": where bwrap starts
    _fds: list[int] = field(default_factory=list)

    def spawned(self) -> None:
        """Close our copies of the fds handed to the child."""
        while self._fds:
            os.close(self._fds.pop())

    def cleanup(self) -> None:
        """After the command ends: no fd, no cgroup and no process of it is left."""
        self.spawned()
        if self.netns is not None:
            self.netns.close()
            self.netns = None
        if self.cgroup is not None:
            self.cgroup.close()
            self.cgroup = None


def prepare(ctx: ToolContext, command: str, *, with_limits: bool = True) -> Launch:
    """How to run `command` under the configured mode, profile and limits.

    Raises ValueError for a refusal (one line saying why) and OSError when the host can't
    set up what is configured (a seccomp fd, a cgroup): callers refuse, never downgrade.
    `with_limits=False` is for the probe only: joining a cgroup costs a few ms the first
    time, and a failure there already makes the real command refuse.
    """
    s = ctx.sandbox
    if s.mode == "off":
        argv, env, cwd, fds = [BASH, "-c", command], sandbox_env(ctx), str(ctx.workdir), []
    else:
        bwrap = find_bwrap()
        if bwrap is None:
            raise ValueError(INSTALL_HINT)
        ensure_scratch(ctx)
        fd = seccomp_memfd()
        try:
            argv = bwrap_argv(ctx, command, bwrap=bwrap, seccomp_fd=fd)
        except BaseException:
            os.close(fd)
            raise
        env, cwd, fds = launcher_env(), None, [fd]
    who = owner.sandbox_owner(s)
    launch = Launch(argv, env, cwd, tuple(fds), _fds=list(fds))
    steps: list[Callable[[], None]] = []
    try:
        if s.mode != "off" and s.network == "allowlist":
            launch.netns = netproxy.Namespace()
            steps.append(launch.netns.enter)
        if with_limits:
            launch.cgroup = limits.open_cgroup(s)
            procs_fd = launch.cgroup.procs_fd if launch.cgroup else None
            steps.append(limits.preexec(limits.rlimits(
                s, cgroup=procs_fd is not None, uid=who[0] if who else None), procs_fd))
        if who is not None:
            plan = owner.reach_plan([ctx.home, ctx.workdir, *writable_paths(ctx)], who)
            steps.append(owner.child_steps(plan, who))
    except BaseException:
        launch.cleanup()
        raise
    launch.preexec = _in_order(steps) if steps else None
    return launch


def _in_order(steps: list[Callable[[], None]]) -> Callable[[], None]:
    """preexec_fn: the steps that need root first (enter the network namespace, set the
    limits and join the cgroup), then the mounts and the drop to the sandbox uid, last."""

    def child() -> None:
        for step in steps:
            step()

    return child


def hand_over(ctx: ToolContext) -> list[str]:
    """Give the profile's writable folders to the sandbox uid; a note for the model when
    the workdir stays read-only. Call it before the turn's first command (run_bash does);
    once done, it is a no-op for the turn (the file tools give what they create to
    `ctx.owner`, the same uid). Raises
    ValueError (a symlinked protected path, a bad outbox) or OSError (a chown failed).
    Nothing to do when agentd isn't root or the sandbox isn't bwrap."""
    who = owner.sandbox_owner(ctx.sandbox) if ctx.sandbox.mode == "bwrap" else None
    if ctx.handed_over or who is None:
        return []
    ensure_scratch(ctx)
    writable = writable_paths(ctx)
    _keep_protected(ctx.home, who)
    report = owner.hand_over_tree(ctx.home, who, keep_root=True, skip=PROTECTED_NAMES,
                                  descend=ctx.home in writable)
    for path in writable:  # the home's own (outbox, a workdir inside) went with it above
        if not path.is_relative_to(ctx.home) or ctx.home not in writable:
            owner.hand_over_tree(path, who, report=report)
    if report.skipped:
        log.warning("hand-over to %s left %d entries alone: %s", owner.describe(who),
                    len(report.skipped), "; ".join(report.skipped[:5]))
    ctx.handed_over = True
    notes = []
    if ctx.profile == "trusted" and ctx.workdir not in writable:
        notes.append(f"running as root: the workdir {ctx.workdir} is read-only to the sandbox "
                     f"(uid {who[0]}); chown it to {who[0]} or run agentd as a normal user")
    fresh = [note for note in notes if note not in ctx.told]  # once per turn
    ctx.told.update(fresh)
    return fresh


def _keep_protected(home: Path, who: owner.Owner) -> None:
    """The runtime's own paths stay agentd's: a missing one is created now (else bwrap would
    leave its mount point behind, owned by the sandbox uid), and one an earlier command
    left owned by that uid is taken back. Refuses a symlinked one (ValueError)."""
    existing = protected_paths(home)
    for name in PROTECTED_NAMES:
        path = home / name
        if path not in existing:
            if name in PROTECTED_DIRS:
                path.mkdir(mode=0o755)
            else:
                path.touch(mode=0o644)
        elif path.lstat().st_uid == who[0]:
            os.lchown(path, os.geteuid(), os.getegid())


def check_sandbox(ctx: ToolContext) -> str | None:
    """A one-line reason why bash must refuse, or None. Never a silent downgrade: an unknown
    mode or a broken bwrap refuses; only an explicit mode "off" runs unsandboxed."""
    mode = ctx.sandbox.mode
    if mode == "off":
        return None
    if mode != "bwrap":
        return f'unknown sandbox mode {mode!r}: use "bwrap" (default) or "off" in agentd.toml'
    bwrap = find_bwrap()
    if bwrap is None:
        return INSTALL_HINT
    try:
        seccomp.program()
        hand_over(ctx)  # as root, the launch needs it (a no-op when already done)
        ensure_scratch(ctx)
        who = owner.sandbox_owner(ctx.sandbox)
        key = (*bwrap_argv(ctx, "true", bwrap=bwrap, seccomp_fd=-1), f"as {who}")
    except (ValueError, OSError) as exc:
        return str(exc)
    if key in _probed_ok:
        return None
    return _probe(ctx, key)


def _probe(ctx: ToolContext, key: tuple[str, ...]) -> str | None:
    """Launch `true` in the sandbox once, seccomp and limits included, so a broken bwrap
    (userns blocked, bad mount) is reported up front with bwrap's own words instead of as a
    puzzling command failure."""
    prefix = f"bubblewrap ({key[0]}) failed a trivial launch"
    try:
        launch = prepare(ctx, "true", with_limits=False)
    except (ValueError, OSError) as exc:
        return f"{prefix}: {exc}"
    try:
        proc = subprocess.run(
            launch.argv, env=launch.env, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=PROBE_TIMEOUT, check=False, pass_fds=launch.pass_fds,
            preexec_fn=launch.preexec,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{prefix}: {exc}"
    finally:
        launch.cleanup()
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else "no message"
        return f"{prefix} (exit {proc.returncode}): {detail}"
    _probed_ok.add(key)
    return None


def turn_warnings(s: SandboxSettings) -> list[str]:
    """What a turn must say out loud about its sandbox, every time: loosened settings."""
    out = []
    if s.mode == "off":
        out.append("sandbox is off: bash runs unsandboxed on this host")
    elif s.network == "full":
        out.append('sandbox network is "full": commands can reach this host\'s network '
                   "and the internet")
    return out
