"""`agentd service --system`: the hardened system unit for a dedicated user. Its text, how
systemd rates it (`systemd-analyze security`), and that its directives parse on this
systemd (`systemd-analyze verify`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import systemdkit
from conftest import IN_CI, agentd, requires_root_bwrap
from daemonkit import AGENTD, commit_settings, configure, model_requests, wait_for
from fakellm import FakeLLM

from agentd.daemon import units
from agentd.newhome import init_home

ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if os.access("/usr/bin/systemd-analyze", os.X_OK) else None)
# systemd-analyze security's scale (badness_table in src/analyze/analyze-security.c): an
# exposure of 0.0-10.0 gets the name of the highest threshold it reaches; "OK" is 1.0-4.9.
RATINGS = (("PERFECT", 0.0), ("SAFE", 0.1), ("OK", 1.0), ("MEDIUM", 5.0), ("EXPOSED", 7.5),
           ("UNSAFE", 9.0), ("DANGEROUS", 10.0))


def needs_analyze() -> None:
    """systemd-analyze comes with the `systemd` package; .ci/run installs it, so CI fails
    instead of skipping."""
    if ANALYZE is None:
        if IN_CI:
            pytest.fail("CI must have systemd-analyze (apt-get install systemd)")
        pytest.skip("systemd-analyze is missing (apt-get install systemd): UNIT NOT RATED")


def write_unit(tmp_path: Path, text: str, name: str = "agentd-test.service") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_system_unit_runs_the_daemon_as_the_dedicated_user() -> None:
    home = Path("/srv/agent")
    text = units.system_unit_text(home, 300, python="/opt/agentd/bin/python")
    d = directives(text)
    assert d["User"] == d["Group"] == ["agentd"]
    assert d["ExecStart"] == ["/opt/agentd/bin/python -m agentd daemon --home /srv/agent"]
    assert d["WorkingDirectory"] == d["ReadWritePaths"] == ["/srv/agent"]
    assert d["ProtectHome"] == ["yes"] and "BindPaths" not in d
    assert d["EnvironmentFile"] == [f"-/etc/agentd/{units.unit_name(home)[:-8]}.env"]
    assert d["KillMode"] == ["mixed"] and d["TimeoutStopSec"] == ["330"]
    assert d["WantedBy"] == ["multi-user.target"]
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                 "CapabilityBoundingSet=", "AmbientCapabilities=", "PrivateDevices=yes",
                 "RestrictSUIDSGID=yes", "UMask=0077", "SystemCallArchitectures=native",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"):
        assert line in text.splitlines(), line
    # What breaks bwrap or the sandboxed commands is left out (see HARDENING).
    for key in ("ProtectKernelTunables", "ProcSubset", "MemoryDenyWriteExecute"):
        assert key not in d, key
    assert d["RestrictNamespaces"] == ["cgroup ipc mnt net pid user uts"]  # no time ns
    # The install steps head the unit.
    assert "useradd --system --user-group" in text and f"enable --now {units.unit_name(home)}" \
        in text


def test_a_home_the_unit_would_hide_is_bound_back_in() -> None:
    """ProtectHome=yes hides a home under /home even from ReadWritePaths= (the daemon dies
    at chdir, status 200): an empty tmpfs over the homes, and this one bound back."""
    d = directives(units.system_unit_text(Path("/home/ann/agent"), 300, user="ann-agent"))
    assert d["ProtectHome"] == ["tmpfs"] and d["BindPaths"] == ["/home/ann/agent"]
    assert d["User"] == ["ann-agent"]
    d = directives(units.system_unit_text(Path("/var/tmp/agent"), 300))
    assert d["ProtectHome"] == ["yes"] and d["BindPaths"] == ["/var/tmp/agent"]
    assert units.system_warnings(Path("/var/tmp/agent"), "/usr/bin/python3")[-1].startswith(
        "the home /var/tmp/agent is in a temporary folder")
    warned = units.system_warnings(Path("/srv/a"), "/root/.venv/bin/python")
    assert any("agentd's Python (/root/.venv/bin/python) is hidden" in w for w in warned)


def test_paths_and_names_a_unit_would_misread_are_refused() -> None:
    for bad in ("/srv/my agent", "/srv/a\nExecStartPre=/bin/evil", '/srv/"a', "/srv/a\\b"):
        with pytest.raises(units.AgentdError, match="can't go into a systemd unit"):
            units.system_unit_text(Path(bad), 300)
    for bad in ("Agentd", "a b", "root\nUser=root", "-x", ""):
        with pytest.raises(units.AgentdError, match="not a valid user name"):
            units.system_unit_text(Path("/srv/a"), 300, user=bad)
    assert units.unit_path("/srv/50%") == "/srv/50%%"  # no specifier expansion


def test_the_command(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-NEVER-IN-A-UNIT")
    r = agentd("service", "--system", "--user", "bot", "--home", str(home))
    assert r.exit_code == 0
    d = directives(r.stdout)
    assert d["User"] == ["bot"] and d["ExecStart"] == [
        f"{sys.executable} -m agentd daemon --home {home}"]
    assert d["BindPaths"] == [str(home)]  # pytest's homes live in /tmp
    assert "temporary folder" in r.stderr and "NEVER-IN-A-UNIT" not in r.output
    r = agentd("service", "--user", "bot", "--home", str(home))
    assert r.exit_code == 2 and "--user NAME goes with --system" in r.stderr


def test_install_writes_etc_systemd_system(home: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(units, "SYSTEM_UNIT_DIR", tmp_path / "system")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = agentd("service", "--system", "--install", "--home", str(home))
    assert r.exit_code == 1 and "run it as root" in r.stderr
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    r = agentd("service", "--system", "--install", "--home", str(home))
    assert r.exit_code == 0, r.output
    unit = tmp_path / "system" / units.unit_name(home)
    assert unit.stat().st_mode & 0o777 == 0o644
    assert "User=agentd" in unit.read_text()
    assert r.stdout.startswith(f"wrote {unit}\nthen, as root:\n  useradd --system")
    assert f"systemctl daemon-reload && systemctl enable --now {unit.name}" in r.stdout
    assert "agentd service" not in r.stdout  # done already


def exposure(unit: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline=true` on a unit file: (exposure, rating)."""
    r = subprocess.run([str(ANALYZE), "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m[1]), m[2]


def rating_for(score: float) -> str:
    return next(name for name, top in reversed(RATINGS) if score >= top)


@pytest.mark.parametrize("home", ["/srv/agent", "/home/ann/agent"])
def test_systemd_rates_the_unit_ok_or_better(tmp_path: Path, home: str) -> None:
    """The issue asks for "OK" or better; the README quotes this score. A unit that loses
    a directive must fail here rather than quietly score worse."""
    needs_analyze()
    text = units.system_unit_text(Path(home), 300, python=sys.executable)
    score, rating = exposure(write_unit(tmp_path, text))
    assert rating == rating_for(score)
    assert rating in ("PERFECT", "SAFE", "OK"), (score, rating)
    assert score <= 2.4, f"the unit got weaker ({score} {rating}); the README quotes 2.4"
    weaker = text.replace("NoNewPrivileges=yes\n", "").replace("PrivateUsers=yes\n", "")
    assert exposure(write_unit(tmp_path, weaker, "weaker.service"))[0] > score


def test_the_user_unit_is_rated_too(home: Path, tmp_path: Path) -> None:
    """For contrast, and to prove the rating test can fail: the plain user unit has no
    sandboxing at all."""
    needs_analyze()
    score, rating = exposure(write_unit(tmp_path, units.unit_text(home, 300)))
    assert rating not in ("PERFECT", "SAFE", "OK") and score > 5


def test_systemd_accepts_every_directive(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 even for unknown keys and bad values, and only says
    so on stderr: so stderr must be silent (a bad directive here would be ignored by
    systemd at runtime, silently weakening the unit)."""
    needs_analyze()
    unit = write_unit(tmp_path, units.system_unit_text(Path("/srv/agent"), 300,
                                                     python=sys.executable))
    r = subprocess.run([str(ANALYZE), "verify", "--man=no", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    bad = write_unit(tmp_path, unit.read_text().replace("UMask=0077", "ProtectProc=bogus"),
                     "bad.service")
    r = subprocess.run([str(ANALYZE), "verify", "--man=no", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert "ProtectProc" in r.stderr or "protection mode" in r.stderr


def test_the_example_is_what_the_command_prints() -> None:
    example = Path(__file__).parent.parent / "examples/agentd-system.service"
    assert example.read_text() == units.system_unit_text(Path("/srv/agent"), 300,
                                                       python="/opt/agentd/bin/python")


def test_the_help_says_what_it_does() -> None:
    r = subprocess.run([*AGENTD, "service", "--help"], capture_output=True, text=True)
    assert "--system" in r.stdout and "--user NAME" in r.stdout and "dedicated" in r.stdout


# --- The sandbox under the unit's restrictions, for real ---------------------------------

PROBE = r"""
id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status
echo hi > outbox/made-in-sandbox && stat -c 'owner %u' outbox/made-in-sandbox
cat /etc/shadow >/dev/null 2>&1 || echo 'shadow: refused'
""".strip()
FORKS = ("python3 -c $'import os, time\\nn = 0\\nfor _ in range(60):\\n  try:\\n"
         "    pid = os.fork()\\n  except OSError:\\n    break\\n  if pid == 0:\\n"
         "    time.sleep(1); os._exit(0)\\n  n += 1\\nprint(\"forks\", n)'")


def _boot_or_skip() -> None:
    problem = systemdkit.boot_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI must be able to boot a throwaway systemd: needs {problem}")
        pytest.skip(f"needs {problem}: SYSTEM UNIT NOT RUN")


@requires_root_bwrap
def test_the_sandbox_launches_as_a_plain_user_without_new_privileges() -> None:
    """The unit's core restrictions without systemd: a dedicated uid, no_new_privs, no
    capability at all. bwrap must still build the whole sandbox (unprivileged user
    namespaces), root-only files are out of reach, the process limit holds through
    RLIMIT_NPROC (no pids cgroup for a non-root daemon), and network = "allowlist", which
    needs root for its namespace, is refused rather than run open."""
    uid, code, scratch = 64990, systemdkit.Code(), systemdkit.own_scratch()
    try:
        work = scratch / "home"
        (work / "outbox").mkdir(parents=True)
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(work)], check=True)
        script = (
            "import asyncio, json, sys\nfrom pathlib import Path\n"
            "from agentd.tools import SandboxSettings, ToolContext\n"
            "from agentd.tools.bash import run_bash\n"
            "home = Path(sys.argv[1])\nout = []\n"
            "for cmd, kw in json.loads(sys.argv[2]):\n"
            "    ctx = ToolContext(home=home, workdir=home, sandbox=SandboxSettings(**kw))\n"
            "    r = asyncio.run(run_bash(ctx, cmd, 30))\n"
            "    out.append([r.is_error, r.content])\n"
            "print(json.dumps(out))\n")
        runs = [[PROBE, {}], [FORKS, {"processes": 20}], ["true", {"network": "allowlist"}]]
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"]
        env = ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/nonexistent",
               *(f"{k}={v}" for k, v in code.env.items())]
        cmd = [*drop, *env, code.python, "-c", script, str(work), json.dumps(runs)]
        shell = code.mounts() + 'exec "$@"'
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                            "sh", "-ec", shell, "sh", *cmd],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        (probe_err, probe), (forks_err, forks), (net_err, net) = json.loads(r.stdout)
        assert not probe_err, probe
        assert probe.splitlines() == [str(uid), "CapEff:\t0000000000000000", "NoNewPrivs:\t1",
                                      f"owner {uid}", "shadow: refused"]
        assert not forks_err and 10 <= int(forks.split()[1]) < 20, forks
        assert net_err and 'network = "allowlist"' in net and "needs root" in net
    finally:
        shutil.rmtree(scratch)


@requires_root_bwrap
def test_the_daemon_runs_its_sandbox_under_the_system_unit(fake: FakeLLM) -> None:
    """The generated unit, unchanged but for ExecStart's interpreter and where the log and
    keys come from, run by a real systemd (tests/systemdkit.py) as the dedicated user: the
    daemon starts, reads its key from EnvironmentFile=, answers an inbox file with a turn
    whose bash command runs in bwrap, and commits, all inside the hardening."""
    _boot_or_skip()
    scratch, code = systemdkit.own_scratch(), systemdkit.Code()
    try:
        home = scratch / "home"  # under /tmp: the unit binds it into its private /tmp
        init_home(home)
        configure(home, {"model": "openai:test"}, heartbeat={"enabled": False},
                  sandbox={"processes": 20})
        commit_settings(home)
        out = scratch / "out"
        out.mkdir()
        keys = scratch / "keys.env"  # the namespace's root owns it, 0600, like /etc/agentd
        keys.write_text(f"OPENAI_BASE_URL={fake.openai_url}\nOPENAI_API_KEY=sk-test-KEY\n")
        keys.chmod(0o600)
        for path in (out, keys):
            os.chown(path, systemdkit.SUBUID, systemdkit.SUBUID)
        dedicated = systemdkit.SUBUID + systemdkit.SERVICE_UID
        subprocess.run(["chown", "-R", f"{dedicated}:{dedicated}", str(home)], check=True)
        name = units.unit_name(home)
        dropin = "".join(f"{line}\n" for line in (
            "[Service]", "ExecStart=", f"ExecStart={code.python} -m agentd daemon --home {home}",
            *(f"Environment={k}={v}" for k, v in code.env.items()), f"EnvironmentFile={keys}",
            f"StandardOutput=append:{out}/daemon.log", f"StandardError=append:{out}/daemon.log",
            # "+": unconfined, so it reports even a unit that failed to set up its sandbox
            f"ExecStopPost=+/bin/sh -c 'echo $SERVICE_RESULT $EXIT_CODE $EXIT_STATUS >{out}/end'"))
        files = systemdkit.unit_files(name, units.system_unit_text(home, 300), dropin)
        fake.push({"text": "", "tool_calls": [{"name": "bash",
                                               "arguments": {"command": PROBE + "\n" + FORKS}}]},
                  {"text": "Checked."})
        log = out / "daemon.log"
        with systemdkit.Systemd(files, scratch, code) as sd:
            def started() -> bool:
                ended = out / "end"
                assert sd.alive() and not ended.exists(), (
                    f"the unit stopped: {ended.exists() and ended.read_text()}\n"
                    f"{log.exists() and log.read_text()}")
                return log.exists() and "daemon: started" in log.read_text()
            wait_for(started, 60, "the daemon under systemd")
            note = home / "inbox/check.txt"
            note.write_text("Check who you are.\n")
            os.chown(note, dedicated, dedicated)
            wait_for(lambda: len(model_requests(fake)) >= 2, 60, "the turn's second request")
            wait_for(lambda: "inbox: check.txt: answered" in log.read_text(), 30, "the answer")
            daemon = _daemon_status(sd, name)
        # systemd applied the unit to the daemon itself (bwrap sets no_new_privs and drops
        # capabilities on its own, so the sandbox's view proves nothing about the unit).
        assert daemon["Uid"].split()[0] == str(dedicated)
        assert daemon["NoNewPrivs"] == "1" and daemon["Seccomp"] == "2"
        assert daemon["CapBnd"] == daemon["CapEff"] == "0000000000000000"
        assert daemon["/"].split(",")[0] == "ro" and daemon[str(home)].split(",")[0] == "rw"
        result = json.dumps(model_requests(fake)[1].body["messages"][-1])
        sandbox = str(systemdkit.SERVICE_UID)
        for line in (sandbox, "NoNewPrivs:\\t1", "CapEff:\\t0000000000000000",
                     f"owner {sandbox}", "shadow: refused"):
            assert line in result, (line, result)
        forks = int(re.search(r"forks (\d+)", result)[1])  # type: ignore[index]
        assert 10 <= forks < 20, result  # RLIMIT_NPROC, as there is no pids cgroup
        assert (home / "outbox/made-in-sandbox").stat().st_uid == dedicated
        assert (home / "outbox/check.md").read_text() == "Checked.\n"
        history = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(home), "log",
                                  "--format=%s"], capture_output=True, text=True).stdout
        assert history.startswith("Inbox: check.txt"), history
    finally:
        shutil.rmtree(scratch)


def _daemon_status(sd: systemdkit.Systemd, unit: str) -> dict[str, str]:
    """/proc/<pid>/status of the unit's main process as the host sees it, plus the mount
    options of / and of the home from its mountinfo."""
    procs = sd.cgroup / "system.slice" / unit / "cgroup.procs"
    pid = procs.read_text().split()[0]
    status = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        status[fields[4]] = fields[5]  # the last mount on a path wins, as in the kernel
    return {k: v.strip() for k, v in status.items()}
