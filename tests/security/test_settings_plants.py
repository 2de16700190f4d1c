"""agentd.toml planted as something other than a regular file. It decides how the host runs
git and bash (`[sandbox] mode`, uid, limits), and the agent's side can plant it: a fleet
home's owner commits it (a symlink is a tracked blob like any other), and on one machine a
home may be handed over or unpacked with a link in it. A symlink (to a tracked file saying
`mode = "off"`, or to a host secret) must never be followed, a FIFO never opened (it would
hang the host), on one machine (`agentd run`: one error line) and in the fleet (the turn is
refused; the clone's git, which reads the file again through gitexec.home_settings, gets the
strict defaults: sandboxed). The real CLI here; the fleet case is in test_fleet_attacks,
on its worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from attack import MODEL, requires_bwrap
from fakellm import FakeLLM

from agentd import gitexec
from agentd.config import load_settings
from agentd.errors import AgentdError
from agentd.loop import Events
from agentd.turn import TurnRequest, run_turn

AGENTD = [sys.executable, "-m", "agentd"]
SECRET = "HOST-TOML-SECRET-4b1d"
LOOSE = '\n[sandbox]\nmode = "off"\n'


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`agentd run` in `home`; the timeout is the hang a FIFO would cause, not a wait."""
    return subprocess.run([*AGENTD, "run", "--home", str(home), *args, "say hi"],
                          capture_output=True, text=True, timeout=60, cwd=home,
                          env=dict(os.environ))


def _plant(home: Path, tmp_path: Path, kind: str) -> None:
    config = home / "agentd.toml"
    original = config.read_text()
    config.unlink()
    if kind == "link-in-home":  # a file the agent may write, saying the sandbox is off
        (home / "notes").mkdir(exist_ok=True)
        (home / "notes" / "evil.toml").write_text(original + LOOSE)
        config.symlink_to("notes/evil.toml")
    elif kind == "link-outside":  # a host file that is not the home's to show
        secret = tmp_path / "secret.toml"
        secret.write_text(f'# {SECRET}\nbroken = [\n')  # echoed if parsed as TOML
        secret.chmod(0o600)
        config.symlink_to(secret)
    else:
        os.mkfifo(config)


@pytest.mark.parametrize("kind", ["link-in-home", "link-outside", "fifo"])
def test_run_refuses_a_planted_agentd_toml_in_one_line(home: Path, tmp_path: Path,
                                                       kind: str) -> None:
    _plant(home, tmp_path, kind)
    r = _run(home)
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    # A FIFO is not a home's settings file, so the folder is not a home (agentd.home).
    why = "symlink" if kind.startswith("link") else "is not an agentd home"
    assert why in lines[0] and SECRET not in r.stderr + r.stdout, lines


@pytest.mark.parametrize("kind", ["link-in-home", "link-outside", "fifo"])
def test_git_runs_sandboxed_whatever_is_planted(home: Path, tmp_path: Path,
                                                kind: str) -> None:
    """gitexec's own read (how git runs, every git call of a turn) refuses the plant and
    takes the strict defaults: sandboxed; load_settings says why in one line."""
    _plant(home, tmp_path, kind)
    with pytest.raises(AgentdError) as e:
        load_settings(home)
    assert "\n" not in str(e.value) and SECRET not in str(e.value)
    assert gitexec.home_settings(home).sandbox.mode == "bwrap"
    assert gitexec.bwrap_for(home) is not None


def _turn(fake: FakeLLM, home: Path, workdir: Path, profile: str,
          *calls: dict[str, Any]) -> tuple[list[str], list[bool]]:
    """One real turn (agentd.turn.run_turn, as the daemon runs cron and webhook turns) whose
    model makes `calls`, one a step: what each returned and whether it was an error."""
    fake.push(*({"tool_calls": [c]} for c in calls), {"text": "done"})
    before = len(fake.requests)
    req = TurnRequest("plant", workdir, trigger="webhook:plant", model=MODEL,
                      profile=profile)
    report = asyncio.run(run_turn(home, load_settings(home), req, Events()))
    assert report.ok, report.result
    posts = [q for q in fake.requests[before:] if q.method == "POST"]
    results = [m["content"] for m in posts[-1].body["messages"] if m["role"] == "tool"]
    return results, [c["is_error"] for c in report.tool_calls]


@requires_bwrap
@pytest.mark.parametrize("profile", ["trusted", "untrusted"])
def test_a_turn_cannot_plant_a_missing_agentd_toml(fake: FakeLLM, home: Path, workdir: Path,
                                                   profile: str) -> None:
    """A home without agentd.toml (the daemon's turns run on the defaults): a turn, the
    owner's or a webhook's, tries a link, a FIFO and a file at the name, by bash and by the
    file tools. The sandbox masks the name with /dev/null and the tools call it protected,
    so at most the empty mount point bwrap leaves is there afterwards: the defaults."""
    (home / "agentd.toml").unlink()
    bash = f"cd {home}; ln -sfn notes/evil.toml agentd.toml; mkfifo agentd.toml; " \
           "echo '[sandbox]' > agentd.toml; echo END"
    results, errors = _turn(
        fake, home, workdir, profile, {"name": "bash", "arguments": {"command": bash}},
        {"name": "write", "arguments": {"path": f"{home}/agentd.toml", "content": LOOSE}})
    assert "END" in results[0] and "Read-only file system" in results[0], results
    assert errors[1] and "agentd.toml" in results[1], results
    config = home / "agentd.toml"
    assert not config.is_symlink() and (not config.exists() or (
        config.is_file() and config.stat().st_size == 0)), results
    assert load_settings(home).sandbox.mode == "bwrap"


def test_an_oversized_agentd_toml_is_refused(home: Path) -> None:
    (home / "agentd.toml").write_text("# pad\n" * 60_000)
    with pytest.raises(AgentdError, match="KiB"):
        load_settings(home)
