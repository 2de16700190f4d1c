"""The bubblewrap sandbox: one pure function builds the bwrap command line.

Why it is shaped like this (verified with bwrap 0.8.0 on Debian 12, running as root):

- As root, commands run as an unprivileged uid (`[sandbox] uid`, default 65534 `nobody`),
  dropped to between fork and exec; the profile's writable folders are handed to that uid
  once per turn (`hand_over`). Why and how: agentd/tools/owner.py.
- The whole filesystem is read-only (`--ro-bind / /`); only what the profile allows is
  bound writable (trusted: the home and the workdir; untrusted: `<home>/outbox` and a
  scratch folder; readonly: nothing). Everything that may hold other people's secrets or
  sockets is masked with an empty tmpfs: `/home`, `/root`, `/run`, `/var/tmp`, and `/tmp`,
  so the home and workdir are bound again on top, read-only or not.
- Every tmpfs is capped at `tmp_size_mb` (`--size` applies to the next `--tmpfs` only):
  the masks, /tmp, and /dev/shm, mounted over the /dev that `--dev` makes (a tmpfs at half
  the RAM, which is then remounted read-only: its device nodes are separate mounts and stay
  usable).
- `--unshare-all` plus an explicit `--unshare-user` (needed for `--disable-userns`, which
  makes a nested `unshare -U` fail) cuts network, pid, ipc, uts and cgroup namespaces;
  `network = "full"` adds `--share-net` (explicit opt-in, warned on every turn);
  `network = "allowlist"` adds it too, but bwrap then starts inside a fresh network
  namespace agentd made, whose only way out is agentd's proxy (agentd/tools/netproxy.py).
  `--cap-drop ALL` is mandatory as root: without it `mount -o remount,rw /` escapes.
- A seccomp filter (agentd/tools/seccomp.py, `--seccomp FD`) refuses AF_UNIX sockets,
  ptrace, mount, namespaces, bpf, io_uring and the like; limits (agentd/tools/limits.py)
  bound CPU, memory, file size, open files and processes.
- `--die-with-parent` plus the pid namespace means killing bwrap's process group on a timeout
  leaves no survivor, even `setsid`/`nohup` children. `--new-session` stops TIOCSTI.
- The environment inside is an allow-list (`--clearenv` then `--setenv`). bwrap's pid-1
  reaper keeps the *launcher's* environ and argv, readable at `/proc/1/environ` and
  `/proc/1/cmdline`, so bwrap is spawned with `launcher_env()` and argv holds no secret.
- `<home>/.git`, `<home>/agentd.toml` and `<home>/.agentd` stay read-only inside a writable
  home, because the unsandboxed runtime later reads them (git, config, ledger). An existing
  one is bound read-only over itself; a missing directory gets a read-only empty tmpfs and a
  missing agentd.toml `/dev/null`, so nothing can be planted there (bwrap leaves the empty
  mount point behind: an empty `.git`/`.agentd` folder or an empty agentd.toml, which loads
  as the defaults). bwrap 0.8.0 follows a symlink at a mount destination, so a symlink there
  can't be masked: we refuse instead.
- Untrusted and readonly turns don't see `<home>/.agentd` at all (an empty read-only tmpfs
  over it): the owner's transcripts, the bridge's runs, the daemon log and the usage ledger
  are nobody else's business. The file tools refuse it too (`hidden_paths`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentd.home import PROTECTED_DIRS, PROTECTED_NAMES
from agentd.tools import PROFILES, SandboxSettings, ToolContext, limits, netproxy, owner, seccomp

BASH = "/bin/bash"
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MASKED_DIRS = ("/home", "/root", "/run", "/var/tmp")
NETWORKS = ("none", "allowlist", "full")
INSTALL_HINT = (
    "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, "
    'or opt out with sandbox = "off" in agentd.toml / --no-sandbox'
)
PROBE_TIMEOUT = 10.0
HIDDEN_NAMES = (".agentd",)  # not even readable by untrusted and readonly turns
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


def sandbox_env(ctx: ToolContext) -> dict[str, str]:
    """The environment the command sees, built from an allow-list and never inherited.

    HOME is the workdir for the trusted profile, in both modes: `~/notes.md` then lands
    somewhere the model can see again with its file tools, instead of vanishing with the
    per-command tmpfs. Where the workdir is read-only, HOME is the scratch folder (untrusted)
    or the private /tmp (readonly), so tools that write dotfiles still work.
    """
    home = {"untrusted": str(ctx.scratch), "readonly": "/tmp"}.get(ctx.profile, str(ctx.workdir))
    if ctx.profile == "trusted" and not workdir_writable(ctx):
        home = "/tmp"  # not the agentd home: dotfiles there would end up in its history
    return {
        "PATH": SANE_PATH,
        "HOME": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
        "AGENTD_HOME": str(ctx.home),
    }


def ensure_scratch(ctx: ToolContext) -> None:
    """Give an untrusted turn its scratch folder (0700, under the host's temp dir) and an
    outbox, when the runtime didn't; impure, so it is kept out of bwrap_argv."""
    if ctx.profile != "untrusted":
        return
    if ctx.scratch is None:
        ctx.scratch = Path(tempfile.mkdtemp(prefix="agentd-scratch-")).resolve()
    outbox = ctx.home / "outbox"
    if not outbox.exists() and not outbox.is_symlink():
        outbox.mkdir()


def writable_paths(ctx: ToolContext) -> list[Path]:
    """The host folders the profile lets bash and the file tools change. Raises ValueError
    for an unknown profile or an outbox/scratch that isn't a real folder of its own."""
    if ctx.profile not in PROFILES:
        raise ValueError(f"unknown sandbox profile {ctx.profile!r} (one of "
                         f"{', '.join(PROFILES)})")
    if ctx.profile == "trusted":
        return [ctx.home, ctx.workdir] if workdir_writable(ctx) else [ctx.home]
    if ctx.profile == "readonly":
        return []
    if ctx.scratch is None:
        raise ValueError("the untrusted profile needs a scratch folder")
    paths = [ctx.home / "outbox", ctx.scratch]
    for path in paths:
        if path.is_symlink() or not path.is_dir():
            raise ValueError(f"{path} must be a real folder (not a symlink) for the "
                             "untrusted profile")
    return paths


def workdir_writable(ctx: ToolContext) -> bool:
    """Whether a trusted turn may change its workdir. As root, a workdir outside the home
    is the user's own tree, not agentd's to give away: writable only when its folder is
    already owned by the sandbox uid (see agentd/tools/owner.py)."""
    who = owner.sandbox_owner(ctx.sandbox)
    if who is None or ctx.workdir.is_relative_to(ctx.home):
        return True
    return owner.owned_by(ctx.workdir, who)


def hidden_paths(ctx: ToolContext) -> list[Path]:
    """What the profile may not even read: `<home>/.agentd` for untrusted and readonly
    turns (bash sees an empty folder there; the file tools refuse it)."""
    if ctx.profile == "trusted":
        return []
    return [ctx.home / name for name in HIDDEN_NAMES]


def protected_paths(home: Path) -> list[Path]:
    """The home's paths the runtime trusts and that exist now (real files or directories).

    Raises ValueError for a symlinked one: it can't be mounted over (see the module doc).
    """
    found: list[Path] = []
    for name in PROTECTED_NAMES:
        path = home / name
        if path.is_symlink():
            raise ValueError(
                f"{path} is a symlink, which the sandbox can't protect read-only; "
                "replace it with the real file or directory"
            )
        if path.exists():
            found.append(path)
    return found


def _protections(home: Path, size: list[str]) -> list[str]:
    """Mounts keeping the runtime's paths read-only, whether they exist yet or not."""
    argv: list[str] = []
    existing = protected_paths(home)
    for name in PROTECTED_NAMES:
        path = home / name
        p = str(path)
        if path in existing:
            argv += ["--ro-bind", p, p]
        elif name in PROTECTED_DIRS:
            argv += [*size, "--tmpfs", p, "--remount-ro", p]
        else:
            argv += ["--ro-bind", "/dev/null", p]
    return argv


def _hidings(ctx: ToolContext, size: list[str]) -> list[str]:
    """An empty read-only tmpfs over each hidden folder that exists (in a read-only home
    nothing can create one, and there is no mount point for a missing one)."""
    argv: list[str] = []
    existing = protected_paths(ctx.home)  # refuses a symlinked one
    for path in hidden_paths(ctx):
        if path in existing:
            argv += [*size, "--tmpfs", str(path), "--remount-ro", str(path)]
    return argv


def bwrap_argv(
    ctx: ToolContext, command: str, *, bwrap: str = "/usr/bin/bwrap", seccomp_fd: int
) -> list[str]:
    """The complete bwrap command line for `command`; pure except for checking which paths
    exist. `seccomp_fd` is an fd holding seccomp.program() that the child inherits. Mount
    order matters: tmpfs masks first, then the home and workdir (they may live under /tmp
    or /root), then the writable folders inside them, then the read-only protections (or,
    in a read-only home, the hidden folders)."""
    writable = writable_paths(ctx)
    s = ctx.sandbox
    if s.network not in NETWORKS:
        raise ValueError(f"unknown sandbox network {s.network!r} (one of {', '.join(NETWORKS)})")
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
    if s.network in ("full", "allowlist"):
        argv.append("--share-net")
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    env = sandbox_env(ctx)
    if s.network == "allowlist":
        env |= netproxy.proxy_env()
    for key, value in env.items():
        argv += ["--setenv", key, value]
    size = ["--size", str(s.tmp_size_mb * 1024 * 1024)]
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev",
             *size, "--tmpfs", "/dev/shm", "--proc", "/proc"]
    for masked in (*MASKED_DIRS, "/tmp"):
        argv += [*size, "--tmpfs", masked]
    for path in (ctx.home, ctx.workdir):
        argv += ["--bind" if path in writable else "--ro-bind", str(path), str(path)]
    for path in writable:
        if path not in (ctx.home, ctx.workdir):
            argv += ["--bind", str(path), str(path)]
    if ctx.home in writable:
        argv += _protections(ctx.home, size)
    else:
        argv += _hidings(ctx, size)
    argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--chdir", str(ctx.workdir), "--", BASH, "-c", command]
    return argv


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
