"""A throwaway PostgreSQL cluster for the fleet tests: Debian's `postgresql` binaries,
a unix socket only (no TCP port, nothing reachable from outside), fsync off. `.ci/run`
installs the package when it is missing; on a laptop without it the fleet tests skip,
loudly (conftest's `needs` marker), and fail in CI.

Root cannot run the server, so under root the cluster belongs to the `postgres` user,
in a folder of its own under /tmp (pytest's tmp folders are private to root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.conftest import _needs


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    ctl = shutil.which("pg_ctl")
    return Path(ctl).parent if ctl else None


def _owner() -> str | None:
    """Who runs the server: `postgres` under root (the server refuses root), else us."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "missing"
    return "postgres"


requires_postgres = _needs(pg_bindir() is None or _owner() == "missing",
                           "PostgreSQL (apt-get install postgresql)")


class PgCluster:
    """One cluster: `url(db)` makes a database and names it for SQLAlchemy/DBOS
    (`postgresql+psycopg://…?host=SOCKDIR`); `libpq_url(db)` for psycopg and the CLI."""

    def __init__(self) -> None:
        bindir = pg_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.user = _owner()
        self.root = Path(tempfile.mkdtemp(prefix="agentd-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.sock.mkdir()
        if self.user:
            os.chmod(self.root, 0o755)
            pw = pwd.getpwnam(self.user)
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8")
        self.start()

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [str(self.bindir / tool), *args]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = (f"-k {self.sock} -c listen_addresses='' -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._pg("pg_ctl", "-D", str(self.data), "-o", opts, "-l",
                 str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop (fast: connections are cut) and start again, as an operator or a crash
        would; clients must reconnect."""
        self.stop()
        self.start()

    def create_db(self, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._pg("createdb", "-h", str(self.sock), "-U", "postgres", name)
        return name

    def url(self, db: str | None = None) -> str:
        return f"postgresql+psycopg://postgres@/{db or self.create_db()}?host={self.sock}"

    def libpq_url(self, db: str | None = None) -> str:
        return f"postgresql://postgres@/{db or self.create_db()}?host={self.sock}"

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
