"""The wheel, installed as a user installs it (not editable), works from any folder.

The wheel is built offline from a copy of the source tree (setuptools is a dev dependency),
and installed with `--no-deps` into a fresh venv that borrows the dev venv's third-party
packages through a .pth path line (a path line only adds that folder: the editable
install's own .pth hook there is not run, so `agentd` can only come from the wheel). Then
`init`, a replay `run` in the real sandbox and `doctor` run from an unrelated folder.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import requires_bwrap

ROOT = Path(__file__).resolve().parent.parent
JUNK = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              ".pytest_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ folder."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=JUNK)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("agentd-*.whl")
    env = tmp / "venv"
    venv.create(env, with_pip=False)
    purelib = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    (purelib / "_devdeps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install",
         "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    return env / "bin"


def run(cmd: list[str], cwd: Path, **env: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": "", **env})
    assert r.returncode == 0, f"{cmd[:3]} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path,
                                                              tmp_path: Path) -> None:
    where = run([str(installed / "python"), "-c", "import agentd; print(agentd.__file__)"],
                cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(installed.parent), where
    assert not Path(where.strip()).is_relative_to(ROOT)


@requires_bwrap
def test_init_run_and_doctor_work_from_any_folder(installed: Path, tmp_path: Path) -> None:
    agentd = str(installed / "agentd")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"HOME": str(tmp_path), "AGENTD_HOME": "", "COLUMNS": "300"}
    run([agentd, "init", "h"], cwd=elsewhere, **env)
    home = elsewhere / "h"
    # the same home as a checkout makes: every template file, byte for byte
    templates = ROOT / "agentd" / "templates"
    for sub in ("memory", "skills"):
        for f in (templates / sub).rglob("*"):
            if f.is_file():
                copy = home / sub / f.relative_to(templates / sub)
                assert copy.is_file() and filecmp.cmp(f, copy, shallow=False), copy
    out = run([agentd, "run", "--home", str(home), "--model",
               f"replay:{ROOT / 'examples' / 'demo.jsonl'}",
               "Write notes/hello.md with a greeting, then check it with the shell"],
              cwd=home, **env)
    assert (home / "notes" / "hello.md").is_file(), out
    report = run([agentd, "doctor", "--home", str(home)], cwd=elsewhere, **env)
    assert f"{home} (writable)" in report and "nothing required is broken" in report
