"""`agentd doctor`: check this host and this home, and say how to fix what is wrong.

Every check reports what it really observed (a launch, a write, a file in /proc), never
what the configuration merely asks for: the sandbox is a security boundary, and a doctor
that reports a limit this host silently ignores would be worse than none. Offline by
default: provider endpoints are contacted only with `--online` (agentd/doctor_online.py).
Key values are never shown, only whether they are set.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from agentd.config import CONFIG_NAME, Settings, load_settings
from agentd.diagnosis import FAIL, OK, WARN, Check
from agentd.errors import AgentdError
from agentd.home import Home, is_home, locate_home

if TYPE_CHECKING:
    from agentd.tools import ToolContext



def _write_problem(folder: Path) -> str | None:
    """Really write a file (os.access lies for root on a read-only mount)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".agentd-doctor-"):
            return None
    except OSError as e:
        return e.strerror or str(e)


def check_home(home: Path | None) -> list[Check]:
    if home is None:
        return [Check("home", FAIL, "no home here, in a parent folder, or at ~/.agentd",
                      "run `agentd init PATH`, or pass --home", required=True)]
    if not is_home(home):
        return [Check("home", FAIL, f"{home} is not an agentd home (no {CONFIG_NAME})",
                      f"run `agentd init {home}`", required=True)]
    problem = _write_problem(home)
    if problem:
        return [Check("home", FAIL, f"{home} is not writable: {problem}",
                      "fix its permissions or mount; agentd writes memory, sessions and "
                      "commits there", required=True)]
    return [Check("home", OK, f"{home} (writable)")]


def check_git() -> Check:
    git = shutil.which("git")
    if git is None:
        return Check("git", FAIL, "git is not installed", "`apt-get install git`: the home's "
                     "history is a git repository", required=True)
    return Check("git", OK, git)


def check_sandbox(home: Path, settings: Settings) -> list[Check]:
    """bwrap present and launching, seccomp really active inside, user namespaces."""
    import asyncio

    from agentd.tools import ToolContext
    from agentd.tools import sandbox as sb
    from agentd.tools.bash import run_bash

    s = settings.sandbox
    loosened = sb.turn_warnings(s)
    detail = (f"mode {s.mode}, network {s.network}, profile trusted for the CLI "
              "(untrusted and readonly are chosen by the runtime per trigger)")
    out = [Check("sandbox", WARN if loosened else OK,
                 "; ".join([*loosened, detail]),
                 'set mode = "bwrap" and network = "none" in [sandbox] unless you mean it'
                 if loosened else "")]
    if s.mode == "off":
        out.append(Check("bubblewrap", WARN, "not used: sandbox mode is off",
                         'set [sandbox] mode = "bwrap" in agentd.toml'))
        return out
    bwrap = sb.find_bwrap()
    if bwrap is None:
        out.append(Check("bubblewrap", FAIL, "not installed, so bash refuses to run",
                         "`apt-get install bubblewrap`", required=True))
        return out
    # readonly: the probes observe the real sandbox without handing the home over
    ctx = ToolContext(home=home, workdir=home, sandbox=s, profile="readonly")
    reason = sb.check_sandbox(ctx)
    if reason:
        out.append(Check("bubblewrap", FAIL, reason, _userns_fix(), required=True))
        return out
    out.append(Check("bubblewrap", OK, f"{bwrap}: a trivial launch works"))
    probe = asyncio.run(run_bash(ctx, "grep -E '^(Seccomp|NoNewPrivs|CapEff):' "
                                      "/proc/self/status", 20))
    fields = dict(line.split(":\t", 1) for line in probe.content.splitlines() if ":\t" in line)
    if fields.get("Seccomp") == "2" and fields.get("NoNewPrivs") == "1":
        out.append(Check("seccomp", OK, "filter active inside (Seccomp: 2, NoNewPrivs: 1)"))
    else:
        out.append(Check("seccomp", FAIL, f"not active inside: {probe.content.strip()[:200]}",
                         "a kernel with CONFIG_SECCOMP_FILTER is needed", required=True))
    if fields.get("CapEff", "").strip("0") == "":
        out.append(Check("capabilities", OK, "all dropped inside (CapEff 0)"))
    else:
        out.append(Check("capabilities", FAIL, f"CapEff {fields.get('CapEff')}",
                         "bwrap must run with --cap-drop ALL", required=True))
    out.append(Check("user namespaces", OK, "available (bwrap's --unshare-user launch works; "
                     "nested ones are disabled inside)"))
    out += check_sandbox_user(ctx)
    if s.network == "allowlist":
        out.append(check_allowlist(ctx))
    return out


ROOT_ONLY = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssl/private")


def check_sandbox_user(ctx: ToolContext) -> list[Check]:
    """Who commands really run as (observed inside), and whether root-only host files are
    readable from there: they must not be when agentd is root."""
    import asyncio

    from agentd.tools.bash import run_bash
    from agentd.tools.owner import describe, sandbox_owner

    who = sandbox_owner(ctx.sandbox)
    files = [f for f in ROOT_ONLY if Path(f).exists()]
    names = " ".join(shlex.quote(f) for f in files)
    probe = asyncio.run(run_bash(ctx, f'id -u; for f in {names}; do [ -r "$f" ] && echo "$f"; '
                                      "done; true", 20))
    seen = probe.content.split()
    uid, readable = (seen[0], seen[1:]) if seen and seen[0].isdigit() else ("?", [])
    if who is None:
        user = Check("sandbox user", OK, f"uid {uid} inside: agentd is not root, so commands "
                     "run as your own user")
    elif uid == str(who[0]):
        user = Check("sandbox user", OK, f"{describe(who)} inside, no capabilities (agentd "
                     "is root; the writable folders are handed over to it each turn)")
    else:
        user = Check("sandbox user", FAIL, f"uid {uid} inside, not {who[0]}: "
                     f"{probe.content.strip()[:200]}", "see [sandbox] uid in agentd.toml",
                     required=True)
    if readable:
        secret = Check("root-only files", FAIL, "readable from the sandbox: " +
                       ", ".join(readable), "run agentd as root with the default [sandbox] "
                       "uid, or as a normal user", required=who is not None)
    else:
        secret = Check("root-only files", OK, "unreadable from the sandbox (checked: " +
                       (", ".join(files) or "none present") + ")")
    return [user, secret]


def check_allowlist(ctx: ToolContext) -> Check:
    """network = "allowlist": observed inside a real sandboxed command, not assumed: only
    `lo` exists there and the proxy variables point at agentd's proxy."""
    import asyncio

    from agentd.tools import netproxy
    from agentd.tools.bash import run_bash

    domains = ", ".join(ctx.sandbox.allow_domains)
    probe = asyncio.run(run_bash(ctx, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; "
                                      "echo \"$HTTPS_PROXY\"", 20))
    seen = probe.content.split()
    if not probe.is_error and seen == ["lo", netproxy.PROXY_URL]:
        return Check("network allowlist", OK, f"only lo inside, HTTP(S) via agentd's proxy "
                     f"({netproxy.PROXY_URL}) to: {domains}")
    return Check("network allowlist", FAIL, f"not in effect: {probe.content.strip()[:200]}",
                 'run agentd as root (it creates a network namespace per command), or set '
                 'network = "none"', required=True)


def _userns_fix() -> str:
    """The likely fix when bwrap can't launch: user namespaces restricted on this host."""
    for path, bad, fix in (
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
         "AppArmor restricts user namespaces: use /usr/bin/bwrap from the distribution "
         "package, whose profile allows them"),
        ("/proc/sys/user/max_user_namespaces", "0",
         "user namespaces are disabled: `sysctl user.max_user_namespaces=15000`"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0",
         "`sysctl kernel.unprivileged_userns_clone=1`"),
    ):
        try:
            if Path(path).read_text().strip() == bad:
                return fix
        except OSError:
            continue
    return 'see bwrap\'s message; or opt out with [sandbox] mode = "off" (warned every turn)'


def check_limits(settings: Settings) -> list[Check]:
    from agentd.tools.limits import limits_status

    out = []
    for row in limits_status(settings.sandbox):
        fix = ""
        if not row.enforced and row.name == "processes" and "NOT" in row.how:
            fix = ("run agentd as a non-root user (RLIMIT_NPROC), or give it a writable "
                   "pids cgroup (cgroup v1 pids, or a delegated v2 subtree)")
        elif not row.enforced:
            fix = f"set a non-zero {row.name} limit in [sandbox] of agentd.toml"
        out.append(Check(f"limit: {row.name}", OK if row.enforced else WARN, row.how, fix))
    return out


def check_keys(settings: Settings) -> list[Check]:
    """Whether each provider's key variable is set; the value is never read out."""
    out = []
    for name, ep in sorted(settings.providers.items()):
        if not ep.key_env:
            out.append(Check(f"key: {name}", OK, "needs no key"))
        elif os.environ.get(ep.key_env):
            out.append(Check(f"key: {name}", OK, f"{ep.key_env} is set"))
        else:
            out.append(Check(f"key: {name}", WARN, f"{ep.key_env} is not set",
                             f"export {ep.key_env}=… to use {name}:<model>"))
    return out


def run_checks(home_opt: str | None, cwd: Path, online: bool = False) -> list[Check]:
    home = locate_home(home_opt, cwd)
    checks = check_home(home)
    checks.append(check_git())
    if home is None or not is_home(home):
        return checks
    try:
        settings = load_settings(home)
    except AgentdError as e:
        checks.append(Check("config", FAIL, str(e), f"fix {Home(home).config}", required=True))
        return checks
    checks.append(Check("config", OK, f"{Home(home).config} parses"))
    checks += check_sandbox(home, settings)
    checks += check_limits(settings)
    checks += check_keys(settings)
    if online:
        from agentd.doctor_online import check_online

        checks += check_online(settings)
    return checks


def healthy(checks: list[Check]) -> bool:
    return not any(c.status == FAIL and c.required for c in checks)


def as_json(checks: list[Check]) -> dict[str, object]:
    return {"ok": healthy(checks), "checks": [asdict(c) for c in checks]}


def render(checks: list[Check]) -> None:
    """A rich table: one row per check, the fix beside anything not ok."""
    from rich.console import Console
    from rich.table import Table

    style = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
    console = Console()
    console.print(table)
    broken = [c.name for c in checks if c.status == FAIL and c.required]
    console.print(f"[bold red]broken: {', '.join(broken)}[/]" if broken else
                  "[green]nothing required is broken[/]", highlight=False)
