"""The bubblewrap sandbox: one pure function builds the bwrap command line.

Why it is shaped like this (verified with bwrap 0.8.0 on Debian 12, running as root):

- The whole filesystem is read-only (`--ro-bind / /`); only what the profile allows is
  bound writable (trusted: the home and the workdir; untrusted: `<home>/outbox` and a
  scratch folder; readonly: nothing). Everything that may hold other people's secrets or
  sockets is masked with an empty tmpfs: `/home`, `/root`, `/run`, `/var/tmp`, and `/tmp`
  (size-capped), so the home and workdir are bound again on top, read-only or not.
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
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentd.tools import PROFILES, SandboxSettings, ToolContext, limits, netproxy, seccomp

BASH = "/bin/bash"
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROTECTED_NAMES = (".git", "agentd.toml", ".agentd")
PROTECTED_DIRS = (".git", ".agentd")
MASKED_DIRS = ("/home", "/root", "/run", "/var/tmp")
NETWORKS = ("none", "allowlist", "full")
INSTALL_HINT = (
    "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, "
    'or opt out with sandbox = "off" in agentd.toml / --no-sandbox'
)
PROBE_TIMEOUT = 10.0

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
        return [ctx.home, ctx.workdir]
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


def _protections(home: Path) -> list[str]:
    """Mounts keeping the runtime's paths read-only, whether they exist yet or not."""
    argv: list[str] = []
    existing = protected_paths(home)
    for name in PROTECTED_NAMES:
        path = home / name
        p = str(path)
        if path in existing:
            argv += ["--ro-bind", p, p]
        elif name in PROTECTED_DIRS:
            argv += ["--tmpfs", p, "--remount-ro", p]
        else:
            argv += ["--ro-bind", "/dev/null", p]
    return argv


def bwrap_argv(
    ctx: ToolContext, command: str, *, bwrap: str = "/usr/bin/bwrap", seccomp_fd: int
) -> list[str]:
    """The complete bwrap command line for `command`; pure except for checking which paths
    exist. `seccomp_fd` is an fd holding seccomp.program() that the child inherits. Mount
    order matters: tmpfs masks first, then the home and workdir (they may live under /tmp
    or /root), then the writable folders inside them, then the read-only protections."""
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
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for masked in MASKED_DIRS:
        argv += ["--tmpfs", masked]
    argv += ["--size", str(s.tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    for path in (ctx.home, ctx.workdir):
        argv += ["--bind" if path in writable else "--ro-bind", str(path), str(path)]
    for path in writable:
        if path not in (ctx.home, ctx.workdir):
            argv += ["--bind", str(path), str(path)]
    if ctx.home in writable:
        argv += _protections(ctx.home)
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
    launch = Launch(argv, env, cwd, tuple(fds), _fds=list(fds))
    try:
        if s.mode != "off" and s.network == "allowlist":
            launch.netns = netproxy.Namespace()
        if with_limits:
            launch.cgroup = limits.open_cgroup(s)
            procs_fd = launch.cgroup.procs_fd if launch.cgroup else None
            launch.preexec = limits.preexec(limits.rlimits(s, cgroup=procs_fd is not None),
                                            procs_fd)
    except BaseException:
        launch.cleanup()
        raise
    if launch.netns is not None:
        launch.preexec = _join_then(launch.netns, launch.preexec)
    return launch


def _join_then(netns: netproxy.Namespace, then: Callable[[], None] | None) -> Callable[[], None]:
    """preexec_fn: enter the command's network namespace first, then apply the limits."""

    def child() -> None:
        netns.enter()
        if then is not None:
            then()

    return child


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
        ensure_scratch(ctx)
        key = tuple(bwrap_argv(ctx, "true", bwrap=bwrap, seccomp_fd=-1))
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
