"""The daemon's systemd units: a user unit (`agentd service`), and a hardened system unit
running the daemon as a dedicated user (`agentd service --system`), with the steps to
install it. Starting and stopping the daemon itself is agentd/daemon/service.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from agentd.errors import AgentdError

_UNIT_UNSAFE = re.compile(r"[\s\"'\\\x00-\x1f\x7f]")


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
