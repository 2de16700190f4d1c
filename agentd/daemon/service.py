"""The daemon as a process: one per home, started, stopped, and run by systemd.

One daemon per home is enforced with an flock on `.agentd/daemon.pid`, held for the
daemon's whole life. `agentd start` takes the lock itself and hands the locked file to the
child it spawns (`--lock-fd`), so of two `agentd start`s at the same instant exactly one
wins and the other says who did. A pid file whose lock nobody holds is stale (its daemon
died, even by SIGKILL: the kernel drops the lock) and is simply overwritten. The file is
never unlinked, only emptied, so two starters can never lock two different files.

`agentd stop` sends SIGTERM: the daemon stops scheduling, lets the running turn finish and
commit, and exits. If that takes longer than the timeout, a second SIGTERM interrupts the
turn (which still commits what it did), and after 15 more seconds SIGKILL; `--now` sends
SIGKILL at once, and the next start commits the leftovers as a recovery commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agentd.errors import AgentdError
from agentd.home import runtime_dir
from agentd.jobs import state

LOG_ROTATE_BYTES = 10 * 1024 * 1024
READY_TIMEOUT = 20.0
_UNIT_UNSAFE = re.compile(r"[\s\"'\\\x00-\x1f\x7f]")


def pid_path(home: Path) -> Path:
    return runtime_dir(home) / "daemon.pid"


def log_path(home: Path) -> Path:
    return runtime_dir(home) / "daemon.log"


def _read_pid(fd: int) -> int | None:
    raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(raw) if raw.isdigit() else None


def _try_lock(fd: int, kind: int, patience: float = 0.0) -> bool:
    """flock without blocking; `patience` rides out another command's momentary probe."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def running_pid(home: Path) -> int | None:
    """The running daemon's pid (0 if it is still starting), or None when none runs. Probes
    with a shared lock, so it never blocks a daemon from starting for long."""
    fd = os.open(pid_path(home), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            return None
        return _read_pid(fd) or 0
    finally:
        os.close(fd)


def acquire(home: Path, inherited: int | None = None) -> tuple[int, int | None]:
    """Lock the pid file for this process and write our pid. Returns (fd, the stale pid it
    replaced or None). Raises AgentdError when another daemon runs for this home."""
    fd = inherited if inherited is not None else os.open(
        pid_path(home), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if not _try_lock(fd, fcntl.LOCK_EX, patience=0.5):
        pid = _read_pid(fd)
        os.close(fd)
        raise AgentdError(f"agentd is already running for {home} (pid {pid or '?'}); "
                          "`agentd status` shows what it does, `agentd stop` stops it", 1)
    old = _read_pid(fd)
    os.set_inheritable(fd, False)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, old if old not in (None, os.getpid()) else None


def release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.close(fd)


def _rotate_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_suffix(".log.1"))


def start(home: Path, json_logs: bool = False) -> int:
    """Start the daemon in the background; returns its pid once it is up."""
    fd = os.open(pid_path(home), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if not _try_lock(fd, fcntl.LOCK_EX, patience=0.5):
        pid = _read_pid(fd)
        os.close(fd)
        raise AgentdError(f"agentd is already running for {home} (pid {pid or '?'})", 1)
    log = log_path(home)
    _rotate_log(log)
    status = state.daemon_dir(home) / "status.json"
    status.unlink(missing_ok=True)
    os.set_inheritable(fd, True)
    cmd = [sys.executable, "-m", "agentd", "daemon", "--home", str(home), "--lock-fd", str(fd)]
    with log.open("ab") as out:
        child = subprocess.Popen(cmd + (["--json-logs"] if json_logs else []), cwd=home,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 pass_fds=(fd,), start_new_session=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{child.pid}\n".encode(), 0)
    os.close(fd)  # the child's copy keeps the lock
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        info = state.read(status, {})
        if isinstance(info, dict) and info.get("pid") == child.pid:
            return child.pid
        code = child.poll()
        if code is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise AgentdError(f"the daemon exited at start (status {code}): "
                              + " / ".join(tail), 1)
        time.sleep(0.05)
    raise AgentdError(f"the daemon (pid {child.pid}) did not report ready within "
                      f"{READY_TIMEOUT:.0f}s; see {log}", 1)


def _wait_gone(home: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if running_pid(home) is None:
            return True
        time.sleep(0.05)
    return running_pid(home) is None


def stop(home: Path, timeout: float, now: bool = False,
         say: Callable[[str], None] = lambda msg: None) -> int | None:
    """Stop the daemon (see the module); returns the pid it stopped, None if none ran."""
    pid = running_pid(home)
    if pid is None:
        return None
    if not pid:
        raise AgentdError("the daemon is still starting; try again in a moment", 1)
    if now:
        os.kill(pid, signal.SIGKILL)
        _wait_gone(home, 10)
        return pid
    os.kill(pid, signal.SIGTERM)
    info = state.read(state.daemon_dir(home) / "status.json", {})
    running = (info.get("queue") or {}).get("running") if isinstance(info, dict) else None
    if running:
        say(f"waiting for the running {running.get('kind')} turn ({running.get('name')}) to "
            f"finish and commit (up to {timeout:.0f}s)…")
    if _wait_gone(home, timeout):
        return pid
    say("still busy: interrupting the turn (it commits what it did)…")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(home, 15):
        return pid
    say("not stopping: killing it (the next start commits its leftovers)")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(home, 10)
    return pid


def unit_name(home: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", home.name).strip("-") or "home"
    return f"agentd-{slug}-{hashlib.sha1(str(home).encode()).hexdigest()[:6]}.service"


def unit_path(path: Path | str) -> str:
    """A path as a unit file takes it. systemd splits ExecStart= and ReadWritePaths= on
    white space and unquotes them, so such a path is refused rather than half-quoted; `%`
    is doubled so no specifier is expanded."""
    text = str(path)
    if _UNIT_UNSAFE.search(text):
        raise AgentdError(f"{text!r} can't go into a systemd unit (white space, a quote, a "
                          "backslash or a control character): move or rename it", 2)
    return text.replace("%", "%%")


def unit_text(home: Path, stop_timeout: float) -> str:
    """A systemd user unit running `agentd daemon` for this home with this interpreter."""
    h, py = unit_path(home), unit_path(sys.executable)
    return f"""\
# agentd daemon for {h}
# Keys: put ANTHROPIC_API_KEY=… / OPENAI_API_KEY=… in ~/.config/agentd/env (chmod 600).
[Unit]
Description=agentd daemon ({h})
After=network-online.target

[Service]
Type=simple
ExecStart={py} -m agentd daemon --home {h}
WorkingDirectory={h}
EnvironmentFile=-%h/.config/agentd/env
Restart=on-failure
RestartSec=10
# SIGTERM to the daemon only: it lets the running turn finish and commit.
KillMode=mixed
TimeoutStopSec={int(stop_timeout) + 30}

[Install]
WantedBy=default.target
"""


def install_unit(home: Path, stop_timeout: float) -> Path:
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = config / "systemd" / "user" / unit_name(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    from agentd.home import atomic_write

    atomic_write(path, unit_text(home, stop_timeout))
    return path


SYSTEM_USER = "agentd"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
ENV_DIR = Path("/etc/agentd")
# What the system unit hides: ProtectHome= empties the first, PrivateTmp= replaces the second.
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
TMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))

# The system unit's sandboxing, each line with why. Every process the daemon starts
# inherits all of it, bwrap and the commands it sandboxes included, so each setting was
# checked with the sandbox launching under it as an unprivileged user (a throwaway systemd
# booted in namespaces, tests/test_service_system.py). LEFT_OUT says what breaks.
HARDENING: tuple[tuple[str, str], ...] = (
    ("NoNewPrivileges=yes", "No set-uid bit or file capability raises a privilege, not even "
     "in the sandbox."),
    ("CapabilityBoundingSet=", "No capability at all, for the daemon and all it starts."),
    ("AmbientCapabilities=", ""),
    ("PrivateUsers=yes", "Its own user namespace: only root and this user are mapped."),
    ("ProtectSystem=strict", "All of the file system is read-only but the home."),
    ("PrivateTmp=yes", ""),
    ("PrivateDevices=yes", ""),
    ("PrivateIPC=yes", ""),
    ("PrivateMounts=yes", ""),
    ("ProtectKernelModules=yes", ""),
    ("ProtectKernelLogs=yes", ""),
    ("ProtectControlGroups=yes", ""),
    ("ProtectClock=yes", ""),
    ("ProtectHostname=yes", ""),
    ("ProtectProc=invisible", "Other users' processes are not even listed."),
    ("LockPersonality=yes", ""),
    ("RestrictRealtime=yes", ""),
    ("RestrictSUIDSGID=yes", ""),
    ("RemoveIPC=yes", ""),
    ("KeyringMode=private", ""),
    ("SystemCallArchitectures=native", ""),
    ("SystemCallFilter=@system-service @mount", "bwrap needs @mount (mount, pivot_root, "
     "umount2)."),
    ("SystemCallErrorNumber=EPERM", "A refused call fails with EPERM instead of killing."),
    ("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "AF_NETLINK: bwrap "
     "brings up lo in the sandbox's network namespace with it."),
    ("RestrictNamespaces=cgroup ipc mnt net pid user uts", "Exactly the namespaces bwrap "
     "creates; only the time namespace is refused."),
    ("UMask=0077", ""),
)


# Printed in the unit too, so nobody "hardens" it into a daemon whose every command fails.
LEFT_OUT = (
    "Left out on purpose, as bwrap or the sandboxed commands fail under them:",
    "  ProtectKernelTunables=  bwrap writes /proc/sys/user/max_user_namespaces",
    "  ProcSubset=pid          bwrap reads /proc/sys/kernel/overflowuid",
    "  MemoryDenyWriteExecute= inherited by every command: JITs (node) abort",
    "  RestrictNamespaces=yes  bwrap creates these namespaces",
    "No pids cgroup (a non-root daemon can't make one): the sandbox's process limit is",
    "RLIMIT_NPROC, which counts this user's processes only. network = \"allowlist\" needs",
    "root for its namespace: bash refuses it here; use \"none\" or \"full\".",
)


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def env_file(home: Path) -> Path:
    """Where the system unit reads the API keys from: root-owned and outside the home, so
    neither the agent nor the daemon's own user can read or change it."""
    return ENV_DIR / (unit_name(home).removesuffix(".service") + ".env")


def system_unit_text(home: Path, stop_timeout: float, user: str = SYSTEM_USER,
                     python: str | None = None) -> str:
    """A system unit running this home's daemon as the dedicated `user`, hardened (see
    HARDENING); its header comment holds the install steps."""
    h, py = unit_path(home), unit_path(python or sys.executable)
    _check_user(user)
    lines = [
        f"# agentd daemon for {h}, as the dedicated user {user}, sandboxed by systemd.",
        "# Install, as root:",
        *(f"#   {step}" for step in install_steps(home, user)),
        *(f"# {line}" for line in install_note(home, user)),
        "",
        "[Unit]",
        f"Description=agentd daemon ({h}, user {user})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        f"ExecStart={py} -m agentd daemon --home {h}",
        f"WorkingDirectory={h}",
        "# The keys: KEY=value lines in a root-owned 0600 file outside the home. systemd",
        "# reads it as root before dropping to the user; never put a key in this unit.",
        f"EnvironmentFile=-{unit_path(env_file(home))}",
        "Restart=on-failure",
        "RestartSec=10",
        "# SIGTERM to the daemon only: it lets the running turn finish and commit.",
        "KillMode=mixed",
        f"TimeoutStopSec={int(stop_timeout) + 30}",
        "",
        *_home_access(home),
    ]
    for directive, why in HARDENING:
        lines += [f"# {why}"] if why else []
        lines.append(directive)
    lines += ["", *(f"# {line}" for line in LEFT_OUT)]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _home_access(home: Path) -> list[str]:
    """The home is the one writable place. ProtectHome=yes would hide a home under /home,
    /root or /run/user even from ReadWritePaths= (the daemon then fails at chdir), so there
    the others are hidden behind an empty tmpfs and this one is bound back; PrivateTmp= hides
    one under /tmp or /var/tmp the same way."""
    h = unit_path(home)
    out = ["# The home is the one writable place (ProtectSystem=strict, below)."]
    if _under(home, HOME_ROOTS):
        out += ["# It is under a home directory: the others are hidden by an empty tmpfs.",
                "ProtectHome=tmpfs"]
    else:
        out.append("ProtectHome=yes")
    if _under(home, HOME_ROOTS + TMP_ROOTS):
        out.append(f"BindPaths={h}")
    return [*out, f"ReadWritePaths={h}"]


def system_warnings(home: Path, python: str | None = None) -> list[str]:
    """What would keep the system unit from starting, or bite later, said up front: agentd
    installed where the unit can't see it, or a home in a temporary folder."""
    import agentd

    out = []
    code = {"Python": Path(os.path.realpath(python or sys.executable)),
            "packages": Path(sys.prefix), "code": Path(agentd.__file__).parent}
    for what, path in code.items():
        if _under(path, HOME_ROOTS + TMP_ROOTS):
            out.append(f"agentd's {what} ({path}) is hidden from the system unit "
                       "(ProtectHome=/PrivateTmp=): install agentd where every user can run "
                       "it, e.g. python3 -m venv /opt/agentd && /opt/agentd/bin/pip install "
                       "agentd, and run `agentd service --system` from there")
    if _under(home, TMP_ROOTS):
        out.append(f"the home {home} is in a temporary folder: it works (bound into the "
                   "unit's private /tmp), but tmp cleaners may delete it; /srv or /var/lib "
                   "is the place")
    return out


def _check_user(user: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise AgentdError(f"{user!r} is not a valid user name for the service "
                          "(lower case letters, digits, - and _)", 2)


def install_steps(home: Path, user: str, written: bool = False) -> list[str]:
    """How to put the system unit in place, as root; `written` once the unit file is. The
    key file is created without truncating one that exists, so running the steps again
    never loses a key."""
    unit, env = unit_name(home), env_file(home)
    write = [] if written else [
        f"  agentd service --system --install --user {user} --home {home}",
        f"  (or save the printed unit as {SYSTEM_UNIT_DIR / unit})"]
    return [
        f"useradd --system --user-group --home-dir /nonexistent --no-create-home "
        f"--shell /usr/sbin/nologin {user}",
        f"chown -R {user}:{user} {home}",
        f"install -d -m 0700 {env.parent} && touch {env} && chmod 0600 {env}",
        "then put the key in it: ANTHROPIC_API_KEY=… or OPENAI_API_KEY=… (key_env)",
        *(line.strip() for line in write),
        f"systemctl daemon-reload && systemctl enable --now {unit}",
    ]


def install_note(home: Path, user: str) -> list[str]:
    """What to know once it runs."""
    return [f"Log: journalctl -u {unit_name(home)} -f. Use the home as {user} from now on",
            f"(sudo -u {user} agentd …): files root creates there are not the daemon's."]


def install_system_unit(home: Path, stop_timeout: float, user: str = SYSTEM_USER) -> Path:
    """Write the system unit to /etc/systemd/system, world-readable like every unit there
    (it holds no secret: the keys are in env_file())."""
    from agentd.home import atomic_write

    path = SYSTEM_UNIT_DIR / unit_name(home)
    text = system_unit_text(home, stop_timeout, user)
    atomic_write(path, text)
    os.chmod(path, 0o644)
    return path
