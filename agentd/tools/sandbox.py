"""The bubblewrap sandbox: one pure function builds the bwrap command line.

Why it is shaped like this (verified with bwrap 0.8.0 on Debian 12, running as root):

- The whole filesystem is read-only (`--ro-bind / /`); only the home and the workdir are
  bound writable. Everything that may hold other people's secrets or sockets is masked with
  an empty tmpfs: `/home`, `/root`, `/run`, `/var/tmp`, and `/tmp` (size-capped).
- `--unshare-all` plus an explicit `--unshare-user` (needed for `--disable-userns`, which
  makes a nested `unshare -U` fail) cuts network, pid, ipc, uts and cgroup namespaces.
  `--cap-drop ALL` is mandatory as root: without it `mount -o remount,rw /` escapes.
- `--die-with-parent` plus the pid namespace means killing bwrap's process group on a timeout
  leaves no survivor, even `setsid`/`nohup` children. `--new-session` stops TIOCSTI.
- The environment inside is an allow-list (`--clearenv` then `--setenv`). bwrap's pid-1
  reaper keeps the *launcher's* environ and argv, readable at `/proc/1/environ` and
  `/proc/1/cmdline`, so bwrap is spawned with `launcher_env()` and argv holds no secret.
- `<home>/.git`, `<home>/agentd.toml` and `<home>/.agentd` are bound read-only over the
  writable home, because the unsandboxed runtime later reads them (git hooks, config).
  bwrap 0.8.0 follows a symlink at a mount destination (`--ro-bind /dev/null <link>` mounts
  on the link's target, or fails), so a symlink there can't be masked: we refuse instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agentd.tools import ToolContext

BASH = "/bin/bash"
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROTECTED_NAMES = (".git", "agentd.toml", ".agentd")
MASKED_DIRS = ("/home", "/root", "/run", "/var/tmp")
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

    HOME is the workdir, in both modes: `~/notes.md` then lands somewhere the model can see
    again with its file tools, instead of vanishing with the per-command tmpfs (or landing in
    the host's shared /tmp with the sandbox off).
    """
    return {
        "PATH": SANE_PATH,
        "HOME": str(ctx.workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
        "AGENTD_HOME": str(ctx.home),
    }


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


def bwrap_argv(ctx: ToolContext, command: str, *, bwrap: str = "/usr/bin/bwrap") -> list[str]:
    """The complete bwrap command line for `command`; pure except for checking which
    protected paths exist. Mount order matters: tmpfs masks first, then the writable binds
    (the home or workdir may live under /tmp or /root), then the read-only protections."""
    home, workdir = str(ctx.home), str(ctx.workdir)
    argv = [
        bwrap,
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--clearenv",
    ]  # fmt: skip
    for key, value in sandbox_env(ctx).items():
        argv += ["--setenv", key, value]
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for masked in MASKED_DIRS:
        argv += ["--tmpfs", masked]
    argv += ["--size", str(ctx.sandbox.tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    argv += ["--bind", home, home, "--bind", workdir, workdir]
    for path in protected_paths(ctx.home):
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--chdir", workdir, "--", BASH, "-c", command]
    return argv


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
        argv = bwrap_argv(ctx, "true", bwrap=bwrap)
    except ValueError as exc:
        return str(exc)
    key = tuple(argv)
    if key in _probed_ok:
        return None
    return _probe(argv, key)


def _probe(argv: list[str], key: tuple[str, ...]) -> str | None:
    """Launch `true` in the sandbox once, so a broken bwrap (userns blocked, bad mount) is
    reported up front with bwrap's own words instead of as a puzzling command failure."""
    prefix = f"bubblewrap ({argv[0]}) failed a trivial launch"
    try:
        proc = subprocess.run(
            argv,
            env=launcher_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{prefix}: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else "no message"
        return f"{prefix} (exit {proc.returncode}): {detail}"
    _probed_ok.add(key)
    return None
