"""`agentd fleet init/add/run/status/usage/worker` against a real PostgreSQL (tests/pgkit.py)
and, for `run --wait`, a real DBOS worker process whose turn is scripted
(tests/fleetfake.py): the CLI reads the very stream and status a real worker writes.

Most commands run in-process through click's runner (DBOS's import is paid once); the
ones about processes and signals (`run --wait`, Ctrl-C) run `python -m agentd` for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonkit import wait_for
from fleetfake import copy_db, start_worker

from agentd.newhome import init_home
from tests.conftest import agentd
from tests.pgkit import PgCluster, requires_postgres

pytestmark = requires_postgres
ROOT = Path(__file__).resolve().parent.parent
AGENTD = [sys.executable, "-m", "agentd"]


def fleet(url: str, *args: str, input: str | None = None) -> Any:
    return agentd("fleet", *args, "--db", url, input=input)


def one_error(r: Any, code: int = 1) -> str:
    """The command failed with `code` and said why in exactly one line, no traceback."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]


def bare_home(tmp: Path, name: str = "h") -> Path:
    """An agentd home pushed to a bare repository (what `fleet add` registers)."""
    work = tmp / f"{name}-work"
    init_home(work)
    remote = tmp / f"{name}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(remote)], check=True)
    return remote


@pytest.fixture
def db(pg_cluster: PgCluster, fleet_template: str) -> str:
    """A fresh fleet database of the test's own: a copy of conftest's fleet_template."""
    return copy_db(pg_cluster.libpq_url("postgres"), fleet_template)


@pytest.fixture(scope="module")
def shared(pg_cluster: PgCluster, fleet_template: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Path]]:
    """One database with one running DBOS worker whose turn is scripted, for the tests
    that wait on turns (each adds homes of its own): (url, the worker's hold folder)."""
    url = copy_db(pg_cluster.libpq_url("postgres"), fleet_template)
    proc, hold = start_worker(url, tmp_path_factory.mktemp("worker"))
    try:
        yield url, hold
    finally:
        proc.terminate()
        proc.wait(30)


def test_init_creates_the_database_and_is_idempotent(pg_cluster: PgCluster) -> None:
    url = pg_cluster.libpq_url("f_init_twice")
    first = fleet(url, "init")
    assert first.exit_code == 0, first.stderr
    assert "agentd fleet add NAME GIT_URL" in first.stdout
    assert fleet(url, "init").exit_code == 0
    r = fleet(url, "status", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"homes": [], "workers": [], "dead_after_s": 30.0,
                                    "queued": 0, "running": 0}


def test_bad_or_missing_databases_are_one_line(pg_cluster: PgCluster) -> None:
    env_less = agentd("fleet", "status")
    assert "no fleet database" in one_error(env_less)
    assert "must be a PostgreSQL URL" in one_error(fleet("mysql://x/y", "status"))
    assert "must be a PostgreSQL URL" in one_error(fleet("postgresql://x/y\nz", "init"))
    gone = f"postgresql://postgres@/db?host={pg_cluster.root}/nowhere"
    for args in (("status",), ("init",), ("usage",), ("run", "a", "task"),
                 ("add", "a", "/tmp")):
        assert "cannot reach the fleet database" in one_error(fleet(gone, *args))
    pg_cluster.create_db("f_not_set_up")
    bare = pg_cluster.libpq_url("f_not_set_up")
    assert "run `agentd fleet init" in one_error(fleet(bare, "status"))


def test_add_checks_the_repository_and_refuses_duplicates(db: str, tmp_path: Path) -> None:
    remote = bare_home(tmp_path)
    r = fleet(db, "add", "alpha", str(remote))
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("added alpha: main at ")
    assert "exists already" in one_error(fleet(db, "add", "alpha", str(remote)))
    status = json.loads(fleet(db, "status", "--json").stdout)
    head = subprocess.run(["git", "-C", str(remote), "rev-parse", "main"], text=True,
                          capture_output=True, check=True).stdout.strip()
    assert [(h["name"], h["git_url"], h["head"]) for h in status["homes"]] == [
        ("alpha", str(remote), head)]

    plain = tmp_path / "plain"
    subprocess.run(["git", "init", "-q", "-b", "main", str(plain)], check=True)
    (plain / "README").write_text("no home here\n")
    subprocess.run(["git", "-C", str(plain), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(plain), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "x"], check=True)
    assert "is not an agentd home" in one_error(fleet(db, "add", "beta", str(plain)))
    assert "has no branch 'dev'" in one_error(fleet(db, "add", "beta", str(remote),
                                                    "--branch", "dev"))
    assert "bad branch name" in one_error(fleet(db, "add", "beta", str(remote), "--branch",
                                                "-x"))
    assert "cannot read" in one_error(fleet(db, "add", "beta", str(tmp_path / "missing")))
    assert "bad home name" in one_error(fleet(db, "add", "Bad/Name", str(remote)))
    pwned = tmp_path / "pwned"
    assert "not allowed" in one_error(fleet(db, "add", "beta", f"ext::sh -c touch% {pwned}"))
    assert "GIT_URL must be" in one_error(agentd("fleet", "add", "--db", db, "beta", "--",
                                                 f"--upload-pack=touch {pwned}"))
    assert not pwned.exists()
    assert [h["name"] for h in json.loads(fleet(db, "status", "--json").stdout)["homes"]] \
        == ["alpha"]


def test_run_queues_a_turn_that_status_shows(db: str, tmp_path: Path) -> None:
    fleet(db, "add", "alpha", str(bare_home(tmp_path)))
    r = fleet(db, "run", "alpha", "hello")
    assert r.exit_code == 0, r.stderr
    wid = r.stdout.strip()
    assert wid.startswith("run:alpha:")
    j = fleet(db, "run", "alpha", "again", "--json")
    assert json.loads(j.stdout)["status"] == "queued"
    info = json.loads(fleet(db, "status", "--json").stdout)
    assert info["queued"] == 2 and info["homes"][0]["queued"] == 2
    text = fleet(db, "status").stdout
    assert "alpha" in text and "queued 2" in text
    assert "no home named 'nope'" in one_error(fleet(db, "run", "nope", "x"))
    assert "bad home name" in one_error(fleet(db, "run", "../x", "x"))
    assert "no prompt" in one_error(fleet(db, "run", "alpha", input=""), code=2)


def test_run_wait_streams_the_turn_and_exits_with_its_status(
        shared: tuple[str, Path], tmp_path: Path) -> None:
    db, worker = shared
    fleet(db, "add", "alpha", str(bare_home(tmp_path)))
    ok = subprocess.run([*AGENTD, "fleet", "run", "alpha", "say:all good", "--wait",
                         "--db", db], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "all good\n"
    assert "▸ bash echo alpha" in ok.stderr and "ok: 2 step(s), commit c0ffeec0" in ok.stderr

    bad = fleet(db, "run", "alpha", "fail:the model was down", "--wait")
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines()[-1] == "error: the model was down"

    crashed = fleet(db, "run", "alpha", "crash", "--wait", "--json")
    assert crashed.exit_code == 1
    out = json.loads(crashed.stdout)
    assert out["status"] == "error" and "ERROR" in out["error"] and "crashed" in out["error"]

    piped = fleet(db, "run", "alpha", "review this", "--wait", "--json",
                  input="diff --git a b\n")
    assert piped.exit_code == 0, piped.stderr
    got = json.loads(piped.stdout)
    assert got["status"] == "ok" and got["exit_code"] == 0 and got["commit"]
    asked = [json.loads(line) for line in (worker / "requests.jsonl").read_text().splitlines()]
    last = asked[-1]
    assert last["workflow_id"] == got["workflow_id"] and last["home"] == "alpha"
    assert last["request"]["task"] == "review this\n\n<stdin>\ndiff --git a b\n</stdin>"


def test_ctrl_c_stops_waiting_not_the_turn(shared: tuple[str, Path], tmp_path: Path) -> None:
    db, worker = shared
    fleet(db, "add", "beta", str(bare_home(tmp_path)))
    err_file = tmp_path / "stderr"
    with err_file.open("w") as errs:
        proc = subprocess.Popen([*AGENTD, "fleet", "run", "beta", "hold:t1", "--wait",
                                 "--db", db], stdout=subprocess.DEVNULL, stderr=errs)
    wait_for(lambda: (worker / "t1.held").exists() and "▸ bash" in err_file.read_text(),
             120, "the turn to start and the CLI to follow it")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    err = err_file.read_text()
    assert err.strip().splitlines()[-1].startswith("error: stopped waiting; the turn goes on")
    wid = err.split("queued ", 1)[1].split()[0]
    (worker / "t1.go").write_text("")
    from agentd.fleet import engine

    client = engine.client(db)
    try:
        assert client.retrieve_workflow(wid).get_result()["text"] == "released t1"
    finally:
        client.destroy()


def test_usage_sums_the_ledger_per_home_and_fleet_wide(db: str, tmp_path: Path) -> None:
    from agentd.fleet import db as fdb

    fleet(db, "add", "alpha", str(bare_home(tmp_path, "a")))
    fleet(db, "add", "beta", str(bare_home(tmp_path, "b")))

    def row(wid: str, seq: int, home: str, cost: float | None) -> dict[str, Any]:
        return {"workflow_id": wid, "seq": seq, "home": home, "model": "m", "trigger": "cli",
                "input_tokens": 100, "output_tokens": 10, "cache_read": 0, "cache_write": 0,
                "cost": cost}

    with fdb.connect(db) as conn:
        fdb.record_usage(conn, [row("w1", 0, "alpha", 0.5), row("w1", 1, "alpha", 0.25),
                                row("w2", 0, "beta", None)])
        fdb.record_usage(conn, [row("w1", 0, "alpha", 0.5)])  # a recovered turn: once
    data = json.loads(fleet(db, "usage", "--json").stdout)
    assert data == {"homes": [
        {"home": "alpha", "calls": 2, "input_tokens": 200, "output_tokens": 20, "cost": 0.75},
        {"home": "beta", "calls": 1, "input_tokens": 100, "output_tokens": 10, "cost": None}],
        "total": {"calls": 3, "input_tokens": 300, "output_tokens": 30, "cost": 0.75}}
    one = json.loads(fleet(db, "usage", "--home", "beta", "--json").stdout)
    assert one["total"]["calls"] == 1 and one["total"]["cost"] is None
    table = fleet(db, "usage").stdout.splitlines()
    assert table[1].split() == ["alpha", "2", "200", "20", "$0.7500"]
    assert table[-1].split() == ["(fleet)", "3", "300", "30", "$0.7500"]
    assert "no home named 'gamma'" in one_error(fleet(db, "usage", "--home", "gamma"))


def test_status_shows_workers_and_which_are_dead(db: str) -> None:
    from agentd.fleet import db as fdb

    with fdb.connect(db) as conn:
        fdb.beat(conn, "w-live", "host-a", 11, 4)
        fdb.beat(conn, "w-gone", "host-b", 22, 2)
        conn.execute("UPDATE agentd_fleet.workers SET last_seen = now() - interval '5 min' "
                     "WHERE id = 'w-gone'")
        assert fdb.claim_dead(conn, "w-live", 30) == ["w-gone"]
    info = json.loads(fleet(db, "status", "--json").stdout)
    workers = {w["id"]: w for w in info["workers"]}
    assert workers["w-live"]["alive"] and workers["w-live"]["concurrency"] == 4
    assert not workers["w-gone"]["alive"] and workers["w-gone"]["recovered_by"] == "w-live"
    assert workers["w-gone"]["last_seen_s"] >= 299
    text = fleet(db, "status").stdout
    assert "w-gone" in text and "dead, turns recovered by w-live" in text
    # the rule is db.live_workers': a claimed worker stays dead however recent its last
    # beat, and one silent for dead_after exactly is no longer alive
    with fdb.connect(db) as conn:
        conn.execute("UPDATE agentd_fleet.workers SET last_seen = now() WHERE id = 'w-gone'")
        live = {w[0] for w in fdb.live_workers(conn, 30)}
    workers = {w["id"]: w for w in json.loads(fleet(db, "status", "--json").stdout)["workers"]}
    assert not workers["w-gone"]["alive"] and live == {"w-live"}
    assert fdb.alive(("w", "h", 1, 1, None, None, 30.0, None), 30.0) is False


def test_worker_refuses_bad_arguments_in_one_line(db: str, tmp_path: Path) -> None:
    assert "bad worker id" in one_error(fleet(db, "worker", "--id", "No Spaces"))
    assert "no fleet database" in one_error(agentd("fleet", "worker"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot use --cache" in one_error(fleet(db, "worker", "--id", "w",
                                                   "--cache", str(blocker / "x")))
    r = fleet(db, "worker", "--concurrency", "0")
    assert r.exit_code == 2 and "Invalid value for '--concurrency'" in r.stderr


def test_worker_refuses_a_cache_others_can_reach(db: str, tmp_path: Path) -> None:
    """The cache holds every home's mirror and running clone: `fleet worker --cache` a
    symlink, a folder others may write (they could have planted a mirror whose config
    runs a command) or another user's folder ends in one line, exit 1, and the folder is
    left as it was; a folder only others may read is made 0700 (the real CLI, its own
    process)."""
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    open_dir, theirs, readable = tmp_path / "open", tmp_path / "theirs", tmp_path / "readable"
    for d in (open_dir, theirs, readable):
        d.mkdir()
    open_dir.chmod(0o777)
    theirs.chmod(0o700)
    os.chown(theirs, 65534, 65534)
    for name, why in (("link", "a symlink"), ("open", "others may write it (mode 777)"),
                      ("theirs", "owned by uid 65534")):
        proc = subprocess.run([*AGENTD, "fleet", "worker", "--db", db, "--id", "w",
                               "--cache", str(tmp_path / name)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env=os.environ | {"PYTHONPATH": str(ROOT)})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (name, proc.stderr)
        assert lines[0].startswith("error: cannot use --cache") and why in lines[0], lines
    assert (target.stat().st_mode & 0o777, open_dir.stat().st_mode & 0o777) == (0o700, 0o777)
    assert os.listdir(target) == os.listdir(open_dir) == []
    from agentd.fleet import cachedir

    readable.chmod(0o755)
    assert cachedir.private_cache(readable) == readable.resolve()
    assert readable.stat().st_mode & 0o777 == 0o700


def test_help_imports_neither_dbos_nor_psycopg() -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom agentd.cli import cli\n"
            "CliRunner().invoke(cli, ['--help'])\n"
            "print(sorted(m for m in ('dbos', 'psycopg', 'sqlalchemy', 'agentd.fleet', "
            "'agentd.cli_fleet') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"


def cron_turns(url: str, home: str) -> dict[str, str]:
    """workflow ID -> status of the home's cron turns, from DBOS's own table."""
    from agentd.fleet import db as fdb

    with fdb.connect(url) as conn:
        rows = conn.execute("SELECT workflow_uuid, status FROM dbos.workflow_status WHERE "
                            "workflow_uuid LIKE %s", (f"cron:{home}:%",)).fetchall()
    return dict(rows)


def runs_in(remote: Path) -> list[str]:
    """The `Agentd-Run:` trailer of every commit on the home's main branch."""
    out = subprocess.run(["git", "-C", str(remote), "log", "--format=%(trailers:key=Agentd-Run,"
                          "valueonly)", "main"], check=True, capture_output=True,
                         text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_the_real_worker_runs_a_turn_that_run_wait_follows_and_cron_turns(
        db: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: `agentd fleet worker` (the real turn, git and sandbox) against the fake
    LLM, and `agentd fleet run --wait` following it to its one pushed commit. The same
    worker ticks a second home's cron job: the tick's request is one the real turn runs,
    each cron turn ending with its one commit (marked with its workflow ID)."""
    from agentd.fleet import db as fdb
    from tests.daemonkit import configure
    from tests.fakellm import FakeLLM

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(home), "-c", "user.name=t", "-c",
                               "user.email=t@t", *args], capture_output=True, text=True,
                              check=True).stdout

    with FakeLLM(auto=True) as fake:  # a bash call writing hello.txt, then "DONE"
        monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-KEYVALUE")
        configure(home, {"model": "openai:test"})
        git("commit", "-qam", "model")
        remote = tmp_path / "home.git"
        git("clone", "-q", "--bare", str(home), str(remote))
        assert fleet(db, "add", "solo", str(remote)).exit_code == 0
        (home / "cron").mkdir(exist_ok=True)
        (home / "cron" / "ping.md").write_text("---\nevery: 2s\n---\nsay pong\n")
        git("add", "-A")
        git("commit", "-qm", "a cron job")
        ticker = tmp_path / "ticker.git"
        git("clone", "-q", "--bare", str(home), str(ticker))
        assert fleet(db, "add", "ticker", str(ticker)).exit_code == 0
        with fdb.connect(db) as conn:  # tick and read the schedule each second, not minute
            fdb.set_setting(conn, "tick_every", 1)
            fdb.set_setting(conn, "refresh_every", 1)
        log = tmp_path / "worker.log"
        with log.open("w") as out:
            proc = subprocess.Popen([*AGENTD, "fleet", "worker", "--db", db, "--id", "e2e",
                                     "--concurrency", "2", "--cache", str(tmp_path / "cache")],
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: " started: " in log.read_text() or proc.poll() is not None, 180,
                     "the worker to start")
            assert proc.poll() is None, log.read_text()
            r = subprocess.run([*AGENTD, "fleet", "run", "solo", "write hello.txt", "--wait",
                                "--db", db], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, (r.stderr, log.read_text())
            assert r.stdout.strip().endswith("DONE")
            assert "▸ " in r.stderr and "echo hi > hello.txt" in r.stderr
            files = subprocess.run(["git", "-C", str(remote), "show", "--name-only",
                                    "--format=%B", "main"], capture_output=True, text=True,
                                   check=True).stdout
            wid = r.stderr.split("queued ", 1)[1].split()[0]
            assert "hello.txt" in files and wid in files  # the turn's one commit, marked
            usage = json.loads(fleet(db, "usage", "--home", "solo", "--json").stdout)
            assert usage["total"]["calls"] == 2
            info = json.loads(fleet(db, "status", "--json").stdout)
            assert [(w["id"], w["alive"]) for w in info["workers"]] == [("e2e", True)]
            solo = next(h for h in info["homes"] if h["name"] == "solo")
            assert solo["head"] == subprocess.run(
                ["git", "-C", str(remote), "rev-parse", "main"], capture_output=True,
                text=True, check=True).stdout.strip()
            wait_for(lambda: list(cron_turns(db, "ticker").values()).count("SUCCESS") >= 2,
                     120, "two real cron turns to finish")
        finally:
            proc.terminate()
            assert proc.wait(60) == 0, log.read_text()
        ran = sorted(w for w, status in cron_turns(db, "ticker").items() if status == "SUCCESS")
        committed = runs_in(ticker)
        assert set(ran) <= set(committed) and len(set(committed)) == len(committed)
        task = next(r for r in fake.requests if "cron/ping.md" in str(r.body))
        assert "say pong" in str(task.body)


def test_the_summary_names_what_a_recovery_would_not_rebuild(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`fleet run --wait` without --json prints the result's notes (a file over the caps
    left out of a step's checkpoint), terminal escapes in a file name defused."""
    from agentd.cli_fleet import _summary

    _summary({"status": "ok", "steps": 2, "commit": "ab" * 20, "cost": 0.01, "notes": [
        "big.bin (12 MB) is over [git] max_file_mb: a recovery would not rebuild it\x1b[2J"]})
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ok: 2 step(s), commit abababab, $0.0100"
    assert err[1].startswith("note: big.bin (12 MB) is over [git] max_file_mb")
    assert "\x1b" not in err[1] and len(err) == 2
