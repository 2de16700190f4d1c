"""The bwrap command line for one command: `bwrap_argv`, pure but for checking which
paths exist. Launching it (seccomp fd, limits, the uid drop) is agentd/tools/sandbox.py.

Why it is shaped like this (verified with bwrap 0.8.0 on Debian 12, running as root):

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
- `--die-with-parent` plus the pid namespace means killing bwrap's process group on a timeout
  leaves no survivor, even `setsid`/`nohup` children. `--new-session` stops TIOCSTI.
- The environment inside is an allow-list (`--clearenv` then `--setenv`).
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

from pathlib import Path

from agentd.home import PROTECTED_DIRS, PROTECTED_NAMES
from agentd.tools import PROFILES, ToolContext, netproxy, owner

BASH = "/bin/bash"
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MASKED_DIRS = ("/home", "/root", "/run", "/var/tmp")
NETWORKS = ("none", "allowlist", "full")
HIDDEN_NAMES = (".agentd",)  # not even readable by untrusted and readonly turns


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

