"""`agentd service --system`: the hardened system unit for a dedicated user. Its text, how
systemd rates it (`systemd-analyze security`), and that its directives parse on this
systemd (`systemd-analyze verify`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI, agentd
from daemonkit import AGENTD

from agentd.daemon import service as svc

ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if os.access("/usr/bin/systemd-analyze", os.X_OK) else None)
# systemd-analyze security's scale (src/analyze/analyze-security.c): the exposure 0.0-10.0
# is rated by the first row it reaches, from the top.
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
    text = svc.system_unit_text(home, 300, python="/opt/agentd/bin/python")
    d = directives(text)
    assert d["User"] == d["Group"] == ["agentd"]
    assert d["ExecStart"] == ["/opt/agentd/bin/python -m agentd daemon --home /srv/agent"]
    assert d["WorkingDirectory"] == d["ReadWritePaths"] == ["/srv/agent"]
    assert d["ProtectHome"] == ["yes"] and "BindPaths" not in d
    assert d["EnvironmentFile"] == [f"-/etc/agentd/{svc.unit_name(home)[:-8]}.env"]
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
    assert "useradd --system --user-group" in text and f"enable --now {svc.unit_name(home)}" \
        in text


def test_a_home_the_unit_would_hide_is_bound_back_in() -> None:
    """ProtectHome=yes hides a home under /home even from ReadWritePaths= (the daemon dies
    at chdir, status 200): an empty tmpfs over the homes, and this one bound back."""
    d = directives(svc.system_unit_text(Path("/home/ann/agent"), 300, user="ann-agent"))
    assert d["ProtectHome"] == ["tmpfs"] and d["BindPaths"] == ["/home/ann/agent"]
    assert d["User"] == ["ann-agent"]
    d = directives(svc.system_unit_text(Path("/var/tmp/agent"), 300))
    assert d["ProtectHome"] == ["yes"] and d["BindPaths"] == ["/var/tmp/agent"]
    assert svc.system_warnings(Path("/var/tmp/agent"), "/usr/bin/python3")[-1].startswith(
        "the home /var/tmp/agent is in a temporary folder")
    warned = svc.system_warnings(Path("/srv/a"), "/root/.venv/bin/python")
    assert any("agentd's Python (/root/.venv/bin/python) is hidden" in w for w in warned)


def test_paths_and_names_a_unit_would_misread_are_refused() -> None:
    for bad in ("/srv/my agent", "/srv/a\nExecStartPre=/bin/evil", '/srv/"a', "/srv/a\\b"):
        with pytest.raises(svc.AgentdError, match="can't go into a systemd unit"):
            svc.system_unit_text(Path(bad), 300)
    for bad in ("Agentd", "a b", "root\nUser=root", "-x", ""):
        with pytest.raises(svc.AgentdError, match="not a valid user name"):
            svc.system_unit_text(Path("/srv/a"), 300, user=bad)
    assert svc.unit_path("/srv/50%") == "/srv/50%%"  # no specifier expansion


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
    monkeypatch.setattr(svc, "SYSTEM_UNIT_DIR", tmp_path / "system")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = agentd("service", "--system", "--install", "--home", str(home))
    assert r.exit_code == 1 and "run it as root" in r.stderr
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    r = agentd("service", "--system", "--install", "--home", str(home))
    assert r.exit_code == 0, r.output
    unit = tmp_path / "system" / svc.unit_name(home)
    assert unit.stat().st_mode & 0o777 == 0o644
    assert "User=agentd" in unit.read_text()
    assert r.stdout.startswith(f"wrote {unit}\nuseradd --system")
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
    text = svc.system_unit_text(Path(home), 300, python=sys.executable)
    score, rating = exposure(write_unit(tmp_path, text))
    assert rating == rating_for(score)
    assert rating in ("PERFECT", "SAFE", "OK"), (score, rating)
    assert score <= 2.4, f"the unit got weaker: {score} {rating}"
    weaker = text.replace("NoNewPrivileges=yes\n", "").replace("PrivateUsers=yes\n", "")
    assert exposure(write_unit(tmp_path, weaker, "weaker.service"))[0] > score


def test_the_user_unit_is_rated_too(home: Path, tmp_path: Path) -> None:
    """For contrast, and to prove the rating test can fail: the plain user unit has no
    sandboxing at all."""
    needs_analyze()
    score, rating = exposure(write_unit(tmp_path, svc.unit_text(home, 300)))
    assert rating not in ("PERFECT", "SAFE", "OK") and score > 5


def test_systemd_accepts_every_directive(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 even for unknown keys and bad values, and only says
    so on stderr: so stderr must be silent (a bad directive here would be ignored by
    systemd at runtime, silently weakening the unit)."""
    needs_analyze()
    unit = write_unit(tmp_path, svc.system_unit_text(Path("/srv/agent"), 300,
                                                     python=sys.executable))
    r = subprocess.run([str(ANALYZE), "verify", "--man=no", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    bad = write_unit(tmp_path, unit.read_text().replace("UMask=0077", "ProtectProc=bogus"),
                     "bad.service")
    r = subprocess.run([str(ANALYZE), "verify", "--man=no", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert "ProtectProc" in r.stderr or "protection mode" in r.stderr


def test_the_help_says_what_it_does() -> None:
    r = subprocess.run([*AGENTD, "service", "--help"], capture_output=True, text=True)
    assert "--system" in r.stdout and "--user NAME" in r.stdout and "dedicated" in r.stdout
