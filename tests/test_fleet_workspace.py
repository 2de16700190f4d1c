"""Git travelling with the turn (agentd.fleet.workspace) and runtime state travelling with
the home (agentd.fleet.carry): real git, local bare repositories as the homes' remotes, the
real sandbox, real PostgreSQL (tests/pgkit.py) for carry."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentd import history
from agentd.budget import Budget
from agentd.config import BudgetSettings, Price
from agentd.errors import AgentdError
from agentd.fleet import carry, db, snapshot
from agentd.fleet import workspace as ws
from agentd.home import Home
from agentd.llm.types import Usage
from agentd.usage import Ledger
from tests.hostile import SECRET, bounded, plant, secret_file
from tests.pgkit import PgCluster, requires_postgres

OWNER = {"GIT_AUTHOR_NAME": "owner", "GIT_AUTHOR_EMAIL": "owner@example.com",
         "GIT_COMMITTER_NAME": "owner", "GIT_COMMITTER_EMAIL": "owner@example.com"}


def git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), **OWNER}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          capture_output=True).stdout.decode().strip()


@pytest.fixture
def remote(home: Path, tmp_path: Path) -> Path:
    """The home's remote: a bare repository holding the template home."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(home), str(bare))
    return bare


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def fresh(cache: Path, remote: Path, dest: Path) -> tuple[Path, str]:
    """A turn's start: the mirror synced, a clone at the branch's head."""
    base = ws.sync_mirror(cache, "h1", str(remote), "main")
    return ws.checkout(cache, "h1", base, dest), base


def turn_commit(clone: Path, marker: str, subject: str = "a turn") -> str:
    """What agentd.turn's finish_turn does in the clone: one commit with the run trailer."""
    files = history.pending(clone).files
    sha = history.commit(clone, files, subject, {"Agentd-Run": marker})
    assert sha
    return sha


def owner_push(tmp_path: Path, remote: Path, name: str, text: str) -> str:
    """The owner pushes a commit of their own meanwhile."""
    work = tmp_path / f"owner-{name}"
    if not work.exists():
        git(tmp_path, "clone", "-q", str(remote), str(work))
    git(work, "pull", "-q", "--ff-only")
    (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-qm", f"owner: {name}")
    git(work, "push", "-q", "origin", "HEAD:main")
    return git(work, "rev-parse", "HEAD")


def log(remote: Path, ref: str = "main") -> list[str]:
    return git(remote, "log", "--format=%s", ref).splitlines()


def with_marker(remote: Path, marker: str, ref: str = "main") -> list[str]:
    return git(remote, "log", "--format=%H", "--fixed-strings",
               f"--grep=Agentd-Run: {marker}", ref).splitlines()


def test_checkout_is_the_branch_head_and_the_mirror_follows_the_remote(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    clone, base = fresh(cache, remote, tmp_path / "c1")
    assert base == git(remote, "rev-parse", "main")
    assert (clone / "agentd.toml").is_file() and (clone / "memory").is_dir()
    assert history.pending(clone).files == []  # a clean tree at the base
    assert git(clone, "rev-parse", "HEAD") == base
    moved = owner_push(tmp_path, remote, "news.md", "x\n")
    mirror = ws.mirror_path(cache, "h1")
    (mirror / "refs" / "heads" / "main.lock").write_text("")  # a fetch killed with its worker
    assert ws.sync_mirror(cache, "h1", str(remote), "main") == moved
    with pytest.raises(AgentdError, match="no branch"):
        ws.sync_mirror(cache, "h1", str(remote), "nope")
    for bad in ("ext::sh -c touch% /tmp/pwned", "-uhack"):
        with pytest.raises(AgentdError):
            ws.sync_mirror(cache, "h1", bad, "main")


def test_patches_replay_binary_files_deletions_modes_and_symlinks(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    clone, base = fresh(cache, remote, tmp_path / "c1")
    first = ws.tree_of(clone)
    (clone / "data").mkdir()
    (clone / "data" / "blob.bin").write_bytes(bytes(range(256)) * 64 + b"\0\xff")
    (clone / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (clone / "run.sh").chmod(0o755)
    (clone / "out").symlink_to("/etc/passwd")  # stored as the link, never followed
    (clone / "memory" / "MEMORY.md").unlink()
    (clone / ":(glob)*").write_text("pathspec magic is a name\n")
    step1 = ws.diff(clone, first)
    second = ws.tree_of(clone)
    (clone / "data" / "blob.bin").write_bytes(b"\x00\x01changed")
    (clone / "run.sh").chmod(0o644)
    snap = ws.snapshot(clone, second)
    third, step2 = snap.tree, snap.patch
    assert step2 == ws.diff(clone, second) and third == ws.tree_of(clone) and not snap.held
    assert ws.diff(clone, third) == b""
    (clone / "data" / "blob.bin").unlink()
    (clone / "data").rmdir()
    (clone / "data").write_text("a folder became a file\n")
    (clone / "run.sh").unlink()
    (clone / "run.sh").mkdir()
    (clone / "run.sh" / "inside").write_text("and a file a folder\n")
    odd = os.fsencode(clone) + b"/new\nline\ttab \xff.md"
    os.close(os.open(odd, os.O_CREAT | os.O_WRONLY, 0o644))
    step3 = ws.diff(clone, third)

    replay = ws.checkout(cache, "h1", base, tmp_path / "c2")
    ws.apply(replay, step1)
    assert ws.tree_of(replay) == second
    ws.apply(replay, step2)
    assert ws.tree_of(replay) == third
    assert (replay / "data" / "blob.bin").read_bytes() == b"\x00\x01changed"
    assert not (replay / "memory" / "MEMORY.md").exists()
    assert os.readlink(replay / "out") == "/etc/passwd"
    assert not stat.S_IMODE(os.lstat(replay / "run.sh").st_mode) & 0o111
    ws.apply(replay, step3)
    assert ws.tree_of(replay) == ws.tree_of(clone)
    assert (replay / "data").read_text() == "a folder became a file\n"
    assert (replay / "run.sh" / "inside").is_file()
    assert os.path.exists(os.fsencode(replay) + b"/new\nline\ttab \xff.md")
    assert (replay / ":(glob)*").read_text() == "pathspec magic is a name\n"
    with pytest.raises(AgentdError, match="does not apply"):
        ws.apply(replay, step1)  # a patch on the wrong tree changes nothing
    assert ws.tree_of(replay) == ws.tree_of(clone)


def test_snapshots_leave_out_runtime_ignored_and_unreadable_files(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    clone, _ = fresh(cache, remote, tmp_path / "c1")
    before = ws.tree_of(clone)
    (clone / ".agentd").mkdir(exist_ok=True)
    (clone / ".agentd" / "usage.jsonl").write_text("{}\n")
    (clone / ".env").write_text("KEY=1\n")
    assert ws.tree_of(clone) == before
    (clone / "locked.md").write_text("unreadable to sandboxed git\n")
    (clone / "locked.md").chmod(0)
    (clone / "new.md").write_text("new\n")
    patch = ws.diff(clone, before)  # skipped (as commits hold it back), not fatal
    assert b"new.md" in patch and b"locked.md" not in patch
    lock = next((clone / ".git").glob("index")).with_name("agentd-snap-x.index.lock")
    lock.write_text("")  # a stale lock is no reason to snapshot nothing: it fails loudly
    with pytest.raises(AgentdError, match="cannot snapshot"):
        snapshot._snapshot(clone, before, token="x")


def test_a_steps_patch_is_capped_as_a_commit_and_still_replays(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    """A file over the per-file cap (1 MiB here), or past the per-step cap, is left out
    before git reads it and named; the tree and the patch agree without it, so a replay
    elsewhere (where the file never was) gives the recorded tree."""
    caps = snapshot.Caps(1 << 20, 3 << 20)
    clone, base = fresh(cache, remote, tmp_path / "c1")
    before = ws.tree_of(clone, caps)
    (clone / "big.bin").write_bytes(os.urandom((1 << 20) + 1))  # incompressible
    for name in ("a1", "a2", "a3"):  # with the next, 3 MiB in all: the step's cap
        (clone / name).write_bytes(name.encode() * (1 << 19))
    (clone / "a3").write_bytes(b"3" * ((1 << 20) - 32))
    (clone / ":(glob)*").write_bytes(b"g" * 32)  # as magic, it would add big.bin too
    (clone / "z small.txt").write_text("past the step's cap\n")
    (clone / "memory" / "MEMORY.md").unlink()  # a deletion is never held back
    snap = ws.snapshot(clone, before, caps)
    assert snap.held == {"big.bin": "over the 1 MB file limit",
                         "z small.txt": "over the 3 MB limit per step"}
    assert b"big.bin" not in snap.patch and b"z small.txt" not in snap.patch
    assert b"diff --git a/:(glob)* " in snap.patch
    assert len(snap.patch) < (3 << 20) * 2
    objects = git(clone, "count-objects", "-v")
    assert int(objects.split("size: ")[1].split()[0]) < 1024  # KiB: big.bin never hashed
    replay = ws.checkout(cache, "h1", base, tmp_path / "c2")
    ws.apply(replay, snap.patch)
    assert ws.tree_of(replay, caps) == snap.tree and not (replay / "big.bin").exists()
    assert not (replay / "memory" / "MEMORY.md").exists()
    assert (replay / "a3").read_bytes() == (clone / "a3").read_bytes()
    # the next step's cap counts what was written since: a file an earlier step's patch
    # carried is never dropped (here 2 MiB more, earlier in path order than a1-a3), and
    # what the step cap held back fits now
    (clone / "0a").write_bytes(b"0" * (1 << 20))
    (clone / "0b").write_bytes(b"1" * (1 << 20))
    later = ws.snapshot(clone, snap.tree, caps)
    assert b"diff --git a/a2 " not in later.patch and b"z small.txt" in later.patch
    assert later.held == {"big.bin": "over the 1 MB file limit"}
    ws.apply(replay, later.patch)
    assert ws.tree_of(replay, caps) == later.tree and (replay / "a3").is_file()
    same = ws.snapshot(clone, later.tree, caps)  # a step that wrote nothing
    assert same.tree == later.tree and same.patch == b"" and same.held == later.held


def test_publish_fast_forward_then_once_only(remote: Path, cache: Path,
                                            tmp_path: Path) -> None:
    clone, base = fresh(cache, remote, tmp_path / "c1")
    (clone / "notes.md").write_text("turn one\n")
    sha = turn_commit(clone, "run:h1:one")
    done = ws.publish(cache, "h1", str(remote), "main", clone, base, "run:h1:one")
    assert (done.commit, done.head, done.conflict, done.repeated) == (sha, sha, False, False)
    assert git(remote, "rev-parse", "main") == sha
    # the worker died after the push; the turn is recovered in a fresh clone at the same
    # base and makes its commit again (another sha): nothing is pushed twice
    again = ws.checkout(cache, "h1", base, tmp_path / "c2")
    (again / "notes.md").write_text("turn one\n")
    turn_commit(again, "run:h1:one")
    twice = ws.publish(cache, "h1", str(remote), "main", again, base, "run:h1:one")
    assert (twice.commit, twice.repeated) == (sha, True)
    assert with_marker(remote, "run:h1:one") == [sha]


def test_publish_rebases_onto_the_owners_push_and_keeps_both(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    clone, base = fresh(cache, remote, tmp_path / "c1")
    (clone / "notes.md").write_text("from the turn\n")
    turn_commit(clone, "run:h1:two", "the turn")
    owner = owner_push(tmp_path, remote, "owner.md", "from the owner\n")
    done = ws.publish(cache, "h1", str(remote), "main", clone, base, "run:h1:two")
    assert not done.conflict and done.commit == git(remote, "rev-parse", "main")
    assert git(remote, "rev-parse", "main^") == owner  # on top of the owner's: no force
    assert log(remote)[:2] == ["the turn", "owner: owner.md"]
    assert git(remote, "show", "main:notes.md") == "from the turn"
    assert git(remote, "show", "main:owner.md") == "from the owner"
    assert "Agentd-Run: run:h1:two" in git(remote, "log", "-1", "--format=%B", "main")


@pytest.mark.parametrize("races", [1, ws.ATTEMPTS])
def test_a_push_that_loses_a_race_is_retried_then_set_aside(
        remote: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        races: int) -> None:
    """The owner pushes between our fetch and our push (the remote rejects ours as not a
    fast-forward): fetch, rebase, push again; a branch that never stops moving sets the
    turn aside after ATTEMPTS tries rather than loop or force."""
    clone, base = fresh(cache, remote, tmp_path / "c1")
    (clone / "notes.md").write_text("the turn\n")
    sha = turn_commit(clone, "run:h1:race", "the turn")
    real, pushes = ws._push, []

    def racing(mirror: Path, url: str, commit: str, ref: str) -> bool:
        if ref.endswith("/main") and len(pushes) < races:
            pushes.append(owner_push(tmp_path, remote, f"o{len(pushes)}.md", "x\n"))
        return real(mirror, url, commit, ref)

    monkeypatch.setattr(ws, "_push", racing)
    done = ws.publish(cache, "h1", str(remote), "main", clone, base, "run:h1:race")
    if races < ws.ATTEMPTS:
        assert (done.conflict, done.attempts) == (False, 2)
        assert git(remote, "rev-parse", "main^") == pushes[-1]
        assert log(remote)[0] == "the turn"
    else:
        assert done.conflict and "kept moving" in done.note and done.commit == sha
        assert git(remote, "rev-parse", "main") == pushes[-1]
        assert git(remote, "rev-parse", done.ref) == sha


def test_a_conflict_goes_to_a_side_branch_and_nothing_is_lost(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    clone, base = fresh(cache, remote, tmp_path / "c1")
    (clone / "clash.md").write_text("the turn's line\n")
    sha = turn_commit(clone, "run:h1:three", "the turn")
    owner = owner_push(tmp_path, remote, "clash.md", "the owner's line\n")
    done = ws.publish(cache, "h1", str(remote), "main", clone, base, "run:h1:three")
    assert done.conflict and done.ref == "refs/heads/agentd/conflicts/run-h1-three"
    assert done.commit == sha and "merge it by hand" in done.note
    assert git(remote, "rev-parse", "main") == owner  # the owner's push stands
    assert git(remote, "show", f"{done.ref}:clash.md") == "the turn's line"
    again = ws.publish(cache, "h1", str(remote), "main", clone, base, "run:h1:three")
    assert (again.commit, again.conflict) == (sha, True)


def test_several_commits_of_a_turn_are_pushed_as_one(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    clone, base = fresh(cache, remote, tmp_path / "c1")
    (clone / "manual.md").write_text("edited by hand\n")
    history.commit(clone, ["manual.md"], "Manual edits", {"Agentd-Trigger": "manual"})
    (clone / "notes.md").write_text("the turn\n")
    turn_commit(clone, "run:h1:four", "the turn")
    done = ws.publish(cache, "h1", str(remote), "main", clone, base, "run:h1:four")
    assert git(remote, "rev-parse", "main^") == base
    assert log(remote)[0] == "the turn"
    assert {"manual.md", "notes.md"} <= set(git(remote, "ls-tree", "--name-only",
                                                "main").split())
    assert done.commit == git(remote, "rev-parse", "main")


def test_hostile_clone_content_runs_and_hangs_nothing(remote: Path, cache: Path,
                                                      tmp_path: Path) -> None:
    """Hooks and command-running config in the clone's .git (as if the agent had reached
    it), a nested repository with its own, a FIFO and pathspec-magic names: none of it
    runs on the host or hangs a snapshot, a replay or the push."""
    clone, base = fresh(cache, remote, tmp_path / "c1")
    ran = tmp_path / "ran"
    ran.mkdir()
    script = f"#!/bin/sh\ntouch {ran}/$(basename $0)\ntouch {clone}/.git/ran-$(basename $0)\n"
    for hooks in (clone / ".git" / "hooks", clone / "nested" / ".git" / "hooks"):
        hooks.mkdir(parents=True, exist_ok=True)
        for name in ("pre-commit", "post-commit", "reference-transaction", "pre-push",
                     "post-checkout", "fsmonitor"):
            (hooks / name).write_text(script)
            (hooks / name).chmod(0o755)
    git(clone / "nested", "init", "-q")
    (clone / "nested" / "inner.md").write_text("nested\n")
    for cfg in (clone / ".git" / "config", clone / "nested" / ".git" / "config"):
        with cfg.open("a") as f:
            f.write(f"[core]\n\tfsmonitor = {clone}/.git/hooks/fsmonitor\n"
                    f"\tsshCommand = {clone}/.git/hooks/pre-push\n"
                    f"\thooksPath = {clone}/.git/hooks\n")
    before = ws.tree_of(clone)
    fifo = clone / "pipe"
    os.mkfifo(fifo)
    (clone / ":(glob)**").write_text("magic\n")
    (clone / "-rf").write_text("dash\n")
    for sub, gitdir in (("sub1", "gitdir: /etc\n"), ("sub2", "")):
        (clone / sub).mkdir()
        if gitdir:
            (clone / sub / ".git").write_text(gitdir)
        else:
            (clone / sub / ".git").symlink_to("../.git")  # the clone's own repository
    patch = bounded(lambda: ws.diff(clone, before), [fifo])
    assert b"nested" not in patch and b"pipe" not in patch and b"/.git" not in patch
    replay = ws.checkout(cache, "h1", base, tmp_path / "c2")
    bounded(lambda: ws.apply(replay, patch))
    assert (replay / ":(glob)**").read_text() == "magic\n"
    assert (replay / "-rf").read_text() == "dash\n"
    assert not (replay / "nested").exists() and not (replay / "pipe").exists()
    fifo.unlink()
    turn_commit(clone, "run:h1:five")
    done = bounded(lambda: ws.publish(cache, "h1", str(remote), "main", clone, base,
                                      "run:h1:five"))
    assert not done.conflict
    assert list(ran.iterdir()) == []
    assert not [p for p in (clone / ".git").iterdir() if p.name.startswith("ran-")]
    assert "nested" not in git(remote, "ls-tree", "--name-only", "main").split()


# --- carry: runtime state between the clone and the fleet database -------------------------

@pytest.fixture
def conn(pg_cluster: PgCluster) -> Iterator[Any]:
    c = db.connect(pg_cluster.libpq_url())
    db.init_schema(c)
    yield c
    c.close()


def book(clone: Path, run: str, *costs: int) -> None:
    """The turn's model calls, booked by the real ledger writer (agentd.usage.Ledger)."""
    ledger = Ledger(Home(clone).ledger, run, "chat:c1", {"t:m": Price(1e6, 0.0)})
    for n in costs:
        ledger.record("t:m", Usage(input=n, output=1))


def spent(clone: Path) -> float:
    """What the turn's budget check sees as spent this month (agentd.budget)."""
    return Budget(BudgetSettings(monthly_usd=100.0), Home(clone).ledger, "chat:c1",
                  {}).spent()[1]


@requires_postgres
def test_carry_moves_the_transcript_state_and_ledger_once(
        conn: Any, remote: Path, cache: Path, tmp_path: Path) -> None:
    request = {"task": "hi", "session": "chat-c1"}
    first, _ = fresh(cache, remote, tmp_path / "c1")
    carry.restore(conn, "h1", first, request)
    assert spent(first) == 0
    Home(first).session("chat-c1").write_text('{"role": "user"}\n')
    (Home(first).daemon / "cron.json").write_text('{"daily": 1}\n')
    book(first, "r1", 2, 3)
    assert carry.save(conn, "h1", first, "run:h1:a") == []
    assert carry.save(conn, "h1", first, "run:h1:a") == []  # saved again: booked once
    assert db.usage_totals(conn, "h1") == [("h1", 2, 5, 2, 5.0)]

    # the next turn of the home, on another worker: the chat goes on, budgets hold
    second, _ = fresh(cache, remote, tmp_path / "c2")
    carry.restore(conn, "h1", second, request)
    assert Home(second).session("chat-c1").read_text() == '{"role": "user"}\n'
    assert (Home(second).daemon / "cron.json").read_text() == '{"daily": 1}\n'
    assert spent(second) == 5.0
    book(second, "r2", 4)
    carry.save(conn, "h1", second, "run:h1:b")
    # recovered after a crash: the replayed calls are booked again, under the same keys
    third, _ = fresh(cache, remote, tmp_path / "c3")
    carry.restore(conn, "h1", third, request)
    assert spent(third) == 9.0
    book(third, "r2", 4)
    carry.save(conn, "h1", third, "run:h1:b")
    assert db.usage_totals(conn, "h1") == [("h1", 3, 9, 3, 9.0)]
    other, _ = fresh(cache, remote, tmp_path / "c4")
    carry.restore(conn, "h2", other, {"task": "x", "session": "../../etc"})
    assert spent(other) == 0  # another home's spend is its own


@requires_postgres
def test_a_turn_run_again_after_its_save_starts_from_what_it_started_from(
        conn: Any, remote: Path, cache: Path, tmp_path: Path) -> None:
    """The window between `save` writing the database and the turn's end (a worker killed
    there): the turn runs again from a fresh clone, and its restore must not hand it its
    own messages (appended again, they would be in the chat twice) or its own spend."""
    chat, new = {"task": "hi", "session": "chat-c1"}, {"task": "hi", "session": "new-1"}
    first, _ = fresh(cache, remote, tmp_path / "c1")
    carry.restore(conn, "h1", first, chat, "run:h1:a")
    Home(first).session("chat-c1").write_text("earlier turn\n")
    book(first, "run:h1:a", 2)
    carry.save(conn, "h1", first, "run:h1:a")

    def turn(dest: str, request: dict[str, str], wid: str, others: float) -> Path:
        clone, _ = fresh(cache, remote, tmp_path / dest)
        carry.restore(conn, "h1", clone, request, wid)
        assert spent(clone) == others  # the other turns' spend, never this one's own
        path = Home(clone).session(request["session"])
        with path.open("a") as f:
            f.write(f"{wid} asks\n{wid} answers\n")
        book(clone, wid, 3)
        carry.save(conn, "h1", clone, wid)
        return path

    for n in range(3):  # the first run, then two runs again after its save
        turn(f"b{n}", chat, "run:h1:b", 2.0)
        assert db.load_state(conn, "h1", ["sessions/chat-c1.jsonl"]) == {
            "sessions/chat-c1.jsonl": b"earlier turn\nrun:h1:b asks\nrun:h1:b answers\n"}
    for n in range(2):  # the home's next turn, in a chat it began: none before it
        turn(f"n{n}", new, "run:h1:n", 5.0)
        assert db.load_state(conn, "h1", ["sessions/new-1.jsonl"]) == {
            "sessions/new-1.jsonl": b"run:h1:n asks\nrun:h1:n answers\n"}
    assert db.usage_totals(conn, "h1") == [("h1", 3, 8, 3, 8.0)]
    # the next turn (another workflow) gets everything, its own transcript restored whole
    last, _ = fresh(cache, remote, tmp_path / "c4")
    carry.restore(conn, "h1", last, chat, "run:h1:c")
    assert Home(last).session("chat-c1").read_text().count("answers") == 1
    assert spent(last) == 8.0


def test_a_replayed_heartbeat_step_writes_its_items_times_back(
        remote: Path, cache: Path, tmp_path: Path) -> None:
    """The heartbeat step saves when each due item ran into .agentd/ (not in a patch);
    replayed, the step does not run, so its checkpoint carries the file and it is written
    back: a recovered heartbeat forgetting it would run the same items again."""
    from agentd.fleet import turnflow  # its import registers the DBOS workflow

    clone, _ = fresh(cache, remote, tmp_path / "c1")
    beat = Home(clone).daemon / "heartbeat.json"
    state = '{"check the inbox": {"run": 1796000000.0}}'
    assert turnflow._beat(clone, {"task": "do it", "state": state}) == "do it"
    assert beat.read_text() == state
    assert turnflow._beat(clone, {"task": None, "state": None}) is None
    assert beat.read_text() == state  # no file then: nothing written
    assert turnflow._beat(clone, "an older agentd's checkpoint") == (
        "an older agentd's checkpoint")


@requires_postgres
def test_carry_reads_hostile_runtime_files_safely(conn: Any, remote: Path, cache: Path,
                                                  tmp_path: Path) -> None:
    clone, _ = fresh(cache, remote, tmp_path / "c1")
    carry.restore(conn, "h1", clone, {"task": "hi", "session": "chat-c1"})
    secret = secret_file(tmp_path / "outside")
    plant(Home(clone).session("chat-c1"), "symlink", secret)
    fifo = Home(clone).daemon / "cron.json"
    plant(fifo, "fifo", secret)
    (Home(clone).daemon / "heartbeat.json").write_bytes(b"x" * (carry.STATE_CAP + 1))
    notes = bounded(lambda: carry.save(conn, "h1", clone, "run:h1:x"), [fifo])
    assert len(notes) == 3 and "over 1 MiB" in " ".join(notes)
    assert list(db.load_state(conn, "h1")) == [carry.SAVED]  # no file, only who saved
    assert SECRET not in str(db.load_state(conn, "h1"))
