"""Shared fixtures: a fresh home, a fake LLM server on loopback, a clean environment."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).parent))

from fakellm import FakeLLM

from agentd.cli import cli
from agentd.newhome import init_home
from agentd.tools import SandboxSettings
from agentd.tools.owner import sandbox_owner
from agentd.tools.sandbox import find_bwrap

# CI (`.ci/run` sets AGENTD_CI=1) must run every security test: a missing bubblewrap or a
# non-root runner is a failure there, not a skip. On a laptop these skip, loudly.
IN_CI = os.environ.get("AGENTD_CI") == "1"


def _needs(missing: bool, what: str) -> pytest.MarkDecorator:
    return pytest.mark.needs(missing=missing, what=what)


requires_bwrap = _needs(find_bwrap() is None, "bubblewrap (apt-get install bubblewrap)")
requires_root = _needs(os.geteuid() != 0, "root")
requires_root_bwrap = _needs(os.geteuid() != 0 or find_bwrap() is None,
                             "root and bubblewrap")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(missing, what): skip-or-fail (in CI) marker")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        if mark.kwargs["missing"]:
            what = mark.kwargs["what"]
            if IN_CI:
                pytest.fail(f"CI must have {what}: this security test cannot be skipped")
            pytest.skip(f"{what} is missing: SECURITY TEST NOT RUN")


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways agentd/homefs resolves paths: openat2, and the O_NOFOLLOW walk of
    kernels before 5.6. CI's kernel must have openat2."""
    from agentd.homefs import beneath

    if request.param == "openat2" and not beneath.openat2_available():
        if IN_CI:
            pytest.fail("CI's kernel must have openat2 (Linux 5.6+)")
        pytest.skip("this kernel has no openat2: SECURITY TEST NOT RUN")
    monkeypatch.setattr(beneath, "_have_openat2", request.param == "openat2")
    return str(request.param)


def pytest_terminal_summary(terminalreporter: object) -> None:
    """Say out loud when security tests did not run."""
    skipped = getattr(terminalreporter, "stats", {}).get("skipped", [])
    if any("SECURITY TEST NOT RUN" in str(getattr(r, "longrepr", "")) for r in skipped):
        terminalreporter.write_line(  # type: ignore[attr-defined]
            "WARNING: some security tests were skipped (bubblewrap or root missing); "
            "CI fails on this", red=True, bold=True)

@pytest.fixture(scope="session")
def one_cert_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A CA bundle of one certificate (the system bundle's first), for SSL_CERT_FILE; None
    (and the system's bundle is used) on a system without one where we look.

    agentd makes a new SDK client for every turn, and each builds its TLS contexts (two
    with the proxy variable below) by loading the CA bundle: with the system's ~150
    certificates that is ~45 ms of CPU each, minutes across the suite's turns (in the
    test process and in every daemon and `agentd serve` it starts). No test speaks TLS
    (every server here is plain HTTP on loopback), so nothing a test checks depends on
    which certificates are trusted; a stray TLS connection would only fail sooner."""
    system = ssl.get_default_verify_paths()
    for name in (system.cafile, system.openssl_cafile, "/etc/ssl/cert.pem"):
        if name and Path(name).is_file():
            first = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n",
                              Path(name).read_text(errors="replace"), re.S)
            if first:
                path = tmp_path_factory.mktemp("tls") / "one-ca.pem"
                path.write_text(first.group(0))
                return path
    return None


SECRET_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL",
               "OPENAI_API_KEY", "OPENAI_BASE_URL", "AGENTD_MODEL", "AGENTD_HOME")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
              one_cert_bundle: Path | None) -> None:
    """No test sees the developer's keys, models or ~/.agentd; HOME is a scratch folder."""
    for var in SECRET_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("userhome")))
    if one_cert_bundle is not None:
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(one_cert_bundle))  # see one_cert_bundle
    # Any stray connection attempt by an SDK goes to a dead loopback port.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def home_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home made by `agentd init` (plus the test settings, committed) per session, which
    the `home` fixture copies: the same files and history as making it again, without the
    git processes of init and commit in every one of the hundreds of tests that take a home.
    (A home's repository holds no absolute path, so a copy is a home in its own right.)"""
    h = tmp_path_factory.mktemp("template") / "home"
    init_home(h)
    # Fast failures in tests: one SDK retry instead of two.
    with (h / "agentd.toml").open("a") as f:
        f.write("\n[providers.anthropic]\nmax_retries = 1\n[providers.openai]\nmax_retries = 1\n")
    subprocess.run(["git", "-C", str(h), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                    "-qam", "test settings"], check=True)
    return h.resolve()


@pytest.fixture
def home(tmp_path: Path, home_template: Path) -> Path:
    """A fresh home for this test: a copy of the session's template (see home_template)."""
    h = tmp_path / "home"
    shutil.copytree(home_template, h, symlinks=True)
    return h.resolve()


# Who sandboxed commands run as here: (65534, 65534) when the tests run as root, else None.
SANDBOX_OWNER = sandbox_owner(SandboxSettings())


def sandbox_workdir(path: Path) -> Path:
    """A workdir outside the home that bash may write, as a user would set one up: as root,
    agentd binds a workdir it doesn't own read-only unless it belongs to the sandbox uid."""
    path.mkdir(parents=True, exist_ok=True)
    if SANDBOX_OWNER is not None:
        os.chown(path, *SANDBOX_OWNER)
    return path.resolve()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return sandbox_workdir(tmp_path / "work")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    """A scripted fake LLM; both SDKs are pointed at it through their own variables."""
    with FakeLLM() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-KEYVALUE")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-KEYVALUE")
        yield server


def agentd(*args: str, input: str | None = None) -> Result:
    """Run the CLI in-process, with stderr kept apart from stdout."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def json_out(result: Result) -> dict:
    return json.loads(result.stdout)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback server on the host (standing in for the daemon's or bridge's port) that a
    sandboxed command must not be able to reach."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point at, for leak checks."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """The session's one throwaway PostgreSQL cluster (tests/pgkit.py); each test makes
    its own databases in it. Defined here and used by name: a session fixture imported
    into a test module (`from pgkit import pg_cluster`) is that module's own, and made
    one cluster (initdb and start: seconds) per module that imported it."""
    from pgkit import PgCluster, _owner, pg_bindir

    if pg_bindir() is None or _owner() == "missing":
        if IN_CI:  # .ci/run installs it: a fleet test must not skip silently there
            pytest.fail("CI must have PostgreSQL (apt-get install postgresql)")
        pytest.skip("PostgreSQL is missing (apt-get install postgresql): FLEET TEST NOT RUN")
    cluster = PgCluster()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def fleet_template(pg_cluster: Any) -> str:
    """The name of a database set up once per session as `agentd fleet init` sets one up
    (DBOS's migrations, then the fleet's tables), for tests to copy (fleetfake.copy_db):
    a copy takes a fraction of a second, the migrations take seconds, and a worker
    launched on a bare database pays them again. Tests change only their copies."""
    from agentd.fleet import admin

    name = f"f_tmpl_{os.urandom(4).hex()}"
    admin.init(pg_cluster.libpq_url(name))
    return name
