"""Attacking a fleet worker through real fleet turns: one real worker process (DBOS on
pgkit's PostgreSQL, the turn workflow), local bare repositories as the homes' remotes, the
real sandbox, and the fake LLM scripted to make the agent run bash. A trusted turn (what
`fleet run` queues) and a webhook turn (the request `fleet serve` queues: profile
"untrusted") try to reach the worker's cache (the mirrors and the clones of every home it
serves), the worker's secrets, and the host through what they leave in the home; the
owner's pushes are hostile too. Each test asserts the host is unharmed and nothing leaked.

The worker's cache sits where an operator's `--cache /srv/agentd` would: in a folder every
user can search (not under /tmp, /root or /home, which the sandbox masks anyway), so what
keeps it from the agent is agentd's doing, not the test's layout.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakellm import FakeLLM

from agentd import gitexec
from agentd.fleet import db, engine, enqueue, schedule, workspace
from agentd.homefs import Root
from agentd.turn import TurnRequest
from tests.fleetfake import copy_db
from tests.pgkit import PgCluster, requires_postgres

pytestmark = requires_postgres

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-fleet-WORKERKEY-5c1e"  # the worker's provider key
DB_PASSWORD = "FLEET-DB-PASSWORD-91ad"  # in the worker's AGENTD_FLEET_DB
BETA_SECRET = "BETA-HOME-SECRET-33f0"  # in the other home's repository only
HOST_SECRET = "HOST-ONLY-SECRET-e2b7"  # a root-only file on the worker's host
PWNED = "FLEET-PWNED"  # what a hook or filter would create

WORKER = """\
import sys
from pathlib import Path
from agentd.fleet import engine, turnflow
url, cache = sys.argv[1:3]
turnflow.configure(url, Path(cache))
engine.launch(url, "w1", 2, poll=0.05, workflows=("agentd.fleet.turnflow",))
print("ready", flush=True)
sys.stdin.read()
"""


def ours(fake: FakeLLM, *more: Any) -> list[Any]:
    """The operator's fleet setting `endpoints`: the fake LLM, for the worker's key."""
    return [{"url": fake.anthropic_url, "key_env": "ANTHROPIC_API_KEY"}, *more]


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_AUTHOR_NAME": "owner",
            "GIT_AUTHOR_EMAIL": "o@example.com", "GIT_COMMITTER_NAME": "owner",
            "GIT_COMMITTER_EMAIL": "o@example.com"}
    proc = subprocess.run(["git", *args], cwd=cwd, env=base | (env or {}),
                          capture_output=True)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr.decode()}"
    return proc.stdout.decode().strip()


def sync(work: Path) -> None:
    """The owner's work folder at the remote's head (the turns moved it)."""
    git(work, "fetch", "-q", "origin", "main")
    git(work, "reset", "-q", "--hard", "FETCH_HEAD")


def bash(command: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results an Anthropic request carries, in order."""
    out = []
    for m in body["messages"]:
        for block in m["content"] if isinstance(m["content"], list) else []:
            if block.get("type") == "tool_result":
                content = block["content"]
                out.append(content if isinstance(content, str)
                           else "".join(c.get("text", "") for c in content))
    return out


class Fleet:
    """Two homes (`alpha`, the attacker, and `beta`, the victim) served by one worker."""

    def __init__(self, url: str, fake: FakeLLM, tmp: Path, template: Path):
        self.tmp, self.fake, self.url = tmp, fake, url
        # Where an operator puts a cache: a folder everyone may search, outside the masks.
        self.outer = Path(tempfile.mkdtemp(prefix="agentd-fleet-redteam-", dir="/var/cache"))
        self.outer.chmod(0o755)
        self.cache = self.outer / "cache"
        secrets = tmp / "host"
        secrets.mkdir()
        self.host_secret = secrets / "secret.txt"
        self.host_secret.write_text(HOST_SECRET + "\n")
        self.host_secret.chmod(0o600)
        self.remotes: dict[str, Path] = {}
        with db.connect(self.url) as conn:
            db.init_schema(conn)
            db.set_setting(conn, "endpoints", ours(fake))  # the operator's
        for name in ("alpha", "beta"):
            self.add_home(name, template)
        (self.tmp / "beta-work" / "secret.txt").write_text(BETA_SECRET + "\n")
        self.push("beta", "a secret")
        self.client = engine.client(self.url)
        self.log = tmp / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_",
                                                                       "OPENAI_"))}
        env |= {"PYTHONPATH": str(ROOT), "ANTHROPIC_API_KEY": KEY,
                "AGENTD_FLEET_DB": f"postgresql://agentd:{DB_PASSWORD}@db.example/fleet"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, self.url, str(self.cache)], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == b"ready\n", self.log.read_text(errors="replace")[-3000:]
        result, _, _ = self.turn("beta")  # beta's mirror (with its secret) is in the cache
        assert result["status"] == "ok", result

    def add_home(self, name: str, template: Path) -> None:
        work = self.tmp / f"{name}-work"
        shutil.copytree(template, work, symlinks=True)
        text = (work / "agentd.toml").read_text()
        text = text.replace("[providers.anthropic]\nmax_retries = 1\n",
                            f'[providers.anthropic]\nmax_retries = 0\n'
                            f'base_url = "{self.fake.anthropic_url}"\n')
        (work / "agentd.toml").write_text(text)
        git(work, "commit", "-qam", "the fake LLM")
        remote = self.tmp / f"{name}.git"
        git(self.tmp, "clone", "-q", "--bare", str(work), str(remote))
        git(work, "remote", "add", "origin", str(remote))
        self.remotes[name] = remote
        with db.connect(self.url) as conn:
            db.add_home(conn, name, str(remote))

    def push(self, name: str, message: str) -> None:
        """The owner commits what is in the home's work folder and pushes it (synced
        with `sync` before the change)."""
        work = self.tmp / f"{name}-work"
        git(work, "add", "-A")
        git(work, "commit", "-qm", message)
        git(work, "push", "-q", "origin", "HEAD:main")

    def turn(self, home: str, *calls: str, untrusted: bool = False,
             text: str = "done") -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
        """One turn of `home` running `calls` (bash commands, one step each): its result,
        what the model was shown of each call, and the stream's events."""
        self.fake.push(*(bash(c) for c in calls), {"text": text})
        before = len(self.fake.requests)
        if untrusted:  # what fleet serve queues for a signed webhook
            req = TurnRequest("attack", Path("."), "webhook:attack", profile="untrusted",
                              title="Webhook: attack", model="anthropic:fake-model")
        else:  # what `fleet run` queues
            req = TurnRequest("attack", Path("."), model="anthropic:fake-model")
        wid = enqueue.via_client(self.client, home, req.to_json(), enqueue.run_id(home))
        events: list[dict[str, Any]] = []
        result: dict[str, Any] = {}
        for event in self.client.read_stream(wid, "out", polling_interval_sec=0.05,
                                             timeout_seconds=120):
            if event.get("kind") == "end":
                result = {k: v for k, v in event.items() if k != "kind"}
                break
            events.append(event)
        assert result, f"the stream of {wid} closed without an end: {events}"
        posts = [q for q in self.fake.requests[before:] if q.method == "POST"]
        seen = tool_results(posts[-1].body) if posts else []
        return result, seen, events

    def head(self, home: str) -> str:
        return git(self.remotes[home], "rev-parse", "main")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.client.destroy()
        shutil.rmtree(self.outer, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(pg_cluster: PgCluster, fleet_template: str,
          tmp_path_factory: pytest.TempPathFactory, home_template: Path) -> Iterator[Fleet]:
    with FakeLLM() as fake:  # the database: a copy of the session's set-up one (fast)
        url = copy_db(pg_cluster.libpq_url("postgres"), fleet_template)
        f = Fleet(url, fake, tmp_path_factory.mktemp("redteam"), home_template)
        try:
            yield f
        finally:
            f.close()


def leaked(fleet: Fleet, *texts: str) -> list[str]:
    """Which secrets appear in `texts`, the worker's log, or the homes' remotes."""
    logs = fleet.log.read_text(errors="replace")
    history = git(fleet.remotes["alpha"], "log", "-p", "--all", "--format=%B")
    found = []
    for secret in (KEY, DB_PASSWORD, BETA_SECRET, HOST_SECRET, "WORKERKEY"):
        for where, text in (("seen", "\n".join(texts)), ("log", logs),
                            ("alpha's history", history)):
            if secret in text:
                found.append(f"{secret} in {where}")
    return found


@pytest.mark.parametrize("untrusted", [False, True], ids=["fleet-run", "webhook"])
def test_the_cache_and_the_workers_secrets_are_out_of_reach(fleet: Fleet,
                                                            untrusted: bool) -> None:
    """The worker's cache holds every home's mirror and the clones of the turns running
    now: a turn of one home must not read another's (nor its own mirror), nor the
    worker's environment, command line or files."""
    c = fleet.cache
    assert (workspace.mirror_path(c, "beta") / "HEAD").is_file()
    calls = [
        f"ls -la {c} {c}/turns {fleet.outer} 2>&1; echo listed",
        f"git --git-dir={c}/beta.git log -p main 2>&1 | head -50; "
        f"grep -ra {BETA_SECRET[:10]} {c} 2>&1 | head; echo grepped",
        f"cat {fleet.host_secret} 2>&1; cat /proc/1/environ /proc/*/cmdline 2>&1 | tr '\\0' ' '"
        "; env; echo env-done",
        f"ls -la {c.parent}/ /proc/$PPID/root/ 2>&1 | head -30; echo done",
    ]
    result, seen, events = fleet.turn("alpha", *calls, untrusted=untrusted,
                                      text=f"finished; {KEY}")
    assert result["status"] == "ok", result
    assert len(seen) == len(calls), seen
    assert "listed" in seen[0] and "env-done" in seen[2]
    stream = [str(e) for e in events] + [str(result)]
    assert not leaked(fleet, *seen, *stream), leaked(fleet, *seen, *stream)
    assert "beta.git" not in seen[0] and "beta.git" not in seen[3], seen


def test_planted_files_in_the_home_harm_nothing(fleet: Fleet) -> None:
    """Symlinks out (to the cache, a host secret, /etc), a FIFO, a set-id file, hard
    links, a nested repository and a gitfile pointing at another home's mirror, a
    .gitattributes with filter and diff drivers, names that are pathspec magic or reserved
    to git, a big file: the turn ends with one commit, pushed, and nothing of the host is
    read, run or changed; the next turn (and the tick's read of the home) cope."""
    c = fleet.cache
    pwned = fleet.outer / PWNED
    calls = [
        f"ln -s {fleet.host_secret} secret-link; ln -s {c} cache-link; "
        f"ln -s {c}/beta.git beta-link; ln -s /etc/shadow shadow; echo linked",
        "mkfifo fifo; cp /bin/true suid; chmod 6755 suid; ln suid hard; echo planted",
        f"mkdir -p nested sub && git -C nested init -q && echo x > nested/x && "
        f"printf 'gitdir: {c}/beta.git\\n' > sub/.git; echo nested",
        f"printf '* filter=evil diff=evil merge=evil\\n*.txt text eol=crlf\\n' > .gitattributes;"
        f" mkdir -p hooks .githooks; printf '#!/bin/sh\\ntouch {pwned}\\n' > hooks/post-commit;"
        " chmod +x hooks/post-commit; echo attrs",
        "for n in ':(glob)*' ':!x' ':(top)' '-rf' '.GIT' 'git~1'; do mkdir -p \"./$n\" "
        "&& echo data > \"./$n/f\"; done; echo names",
        "head -c 5000000 /dev/urandom > big.bin; echo big",
        "mkdir -p cron && ln -sf /etc/passwd cron/evil.toml && ln -sf /dev/zero HEARTBEAT.md;"
        " echo cron",
    ]
    before = fleet.head("alpha")
    result, seen, _ = fleet.turn("alpha", *calls)
    assert result["status"] == "ok", (result, seen)
    assert [s.split()[-1] if s.split() else "" for s in seen][:2] == ["linked", "planted"]
    assert not pwned.exists()
    assert fleet.host_secret.read_text() == HOST_SECRET + "\n"
    assert stat.S_IMODE(fleet.host_secret.stat().st_mode) == 0o600
    head = fleet.head("alpha")
    assert head == result["commit"] and git(fleet.remotes["alpha"], "rev-parse",
                                            "main~1") == before
    tree = git(fleet.remotes["alpha"], "ls-tree", "-r", "--full-tree", head) + "\n"
    for link in ("secret-link", "beta-link", "shadow", "cron/evil.toml"):
        assert "120000 blob " in tree.split(f"\t{link}\n")[0].rsplit("\n", 1)[-1]
    assert "\tfifo" not in tree
    assert not leaked(fleet, *seen)
    # The mirror of beta is as it was: nothing wrote it through the gitfile.
    assert git(fleet.remotes["beta"], "rev-parse", "main") == git(
        workspace.mirror_path(c, "beta"), "rev-parse", "main")
    # The tick reads the pushed home (cron/, HEARTBEAT.md) without following a link.
    dest = fleet.tmp / "tick-read"
    workspace.checkout(c, "alpha", head, dest)
    read = schedule.read(dest)
    assert read["jobs"] == {} and "root:" not in str(read)
    # A tree git's fsck refuses (a `.gitmodules` that is a folder): the turn ends with
    # a one-line error, nothing pushed, nothing run.
    head = fleet.head("alpha")
    result, seen, _ = fleet.turn(
        "alpha", "mkdir -p .gitmodules && echo x > .gitmodules/f; echo folder")
    assert result["status"] == "error" and "\n" not in result["error"], result
    assert fleet.head("alpha") == head and not pwned.exists()
    # And the next turn runs on the home as it was.
    result, seen, _ = fleet.turn("alpha", "cat secret-link shadow 2>&1; ls; echo next")
    assert result["status"] == "ok", result
    assert HOST_SECRET not in seen[0] and "next" in seen[0] and ".gitmodules" not in seen[0]


def test_a_commit_git_refuses_fails_at_once_with_gits_reason(fleet: Fleet) -> None:
    """A turn whose tree git's fsck refuses (a `.gitmodules` that is a folder; the home's
    remote checks objects too, receive.fsckObjects) is refused the same way every time:
    its publish is tried once, not retried, and the turn's one-line error is git's own
    refusal line; nothing is pushed."""
    remote = fleet.remotes["alpha"]
    git(remote, "config", "receive.fsckObjects", "true")
    head = fleet.head("alpha")
    tried = fleet.log.read_text(errors="replace").count("publish failed")
    try:
        result, _, _ = fleet.turn(
            "alpha", "mkdir -p .gitmodules && echo x > .gitmodules/f; echo folder")
        assert result["status"] == "error" and "\n" not in result["error"], result
        assert "refused the turn's commit: error: object " in result["error"], result
        assert "gitmodulesBlob" in result["error"], result
        assert fleet.head("alpha") == head
        assert fleet.log.read_text(errors="replace").count("publish failed") == tried + 1
    finally:
        git(remote, "config", "--unset", "receive.fsckObjects")


def test_an_owners_hostile_push_runs_nothing_and_reads_nothing(fleet: Fleet) -> None:
    """The remote is hostile too: a pushed `.agentd/` of symlinks (the usage ledger to a
    host secret, the carried state to /dev/zero), a .gitmodules, a submodule gitlink,
    hook-looking trees (`.git/hooks`, `.GIT`, `git~1`) made with plumbing: the mirror
    fetch and the checkout run no hook, carry.save stores no host file in the database,
    and the turn ends with a one-line result."""
    work = fleet.tmp / "alpha-work"
    sync(work)
    start = fleet.head("alpha")
    try:
        hostile_pushes(fleet, work)
    finally:  # the home as it was, for the next test (its owner's fetch parses .gitmodules)
        git(fleet.remotes["alpha"], "update-ref", "refs/heads/main", start)
        git(work, "reset", "-q", "--hard", start)


def hostile_pushes(fleet: Fleet, work: Path) -> None:
    (work / ".agentd").mkdir(exist_ok=True)
    (work / ".agentd" / "usage.jsonl").symlink_to(fleet.host_secret)
    (work / ".agentd" / "daemon").mkdir(exist_ok=True)
    (work / ".agentd" / "daemon" / "cron.json").symlink_to("/dev/zero")
    (work / ".gitmodules").write_text(
        f'[submodule "s"]\n\tpath = s\n\turl = ext::sh -c touch% {fleet.outer / PWNED}\n'
        f'[submodule "t"]\n\tpath = t\n\turl = {fleet.remotes["beta"]}\n\tupdate = !touch'
        f' {fleet.outer / PWNED}\n')
    (work / ".gitattributes").write_text("* filter=lfs diff=evil merge=evil\n")
    git(work, "add", "-f", ".agentd", ".gitmodules", ".gitattributes")
    beta_head = git(fleet.remotes["beta"], "rev-parse", "main")
    git(work, "update-index", "--add", "--cacheinfo", f"160000,{beta_head},s")
    git(work, "update-index", "--add", "--cacheinfo", f"160000,{beta_head},t")
    git(work, "commit", "-qm", "hostile runtime files")
    git(work, "push", "-q", "origin", "HEAD:main")
    result, seen, _ = fleet.turn("alpha", "ls -la .agentd .agentd/daemon 2>&1; echo ok")
    print("owner-push turn:", result, seen)
    assert "\n" not in (result["error"] or ""), result
    assert not (fleet.outer / PWNED).exists()
    with db.connect(fleet.url) as conn:
        rows = conn.execute("select path, data from agentd_fleet.state").fetchall()
    assert not any(HOST_SECRET.encode() in bytes(data) for _, data in rows), rows
    assert not leaked(fleet, *seen, str(result))

    # Plumbing: a commit whose tree holds a `.git/hooks/post-checkout` (and the same under
    # `.GIT` and `git~1`), which porcelain refuses to make.
    pwned = fleet.outer / PWNED
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=work, check=True,
                          input=f"#!/bin/sh\ntouch {pwned}\n".encode(),
                          capture_output=True).stdout.decode().strip()
    hooks = mktree(work, f"100755 blob {blob}\tpost-checkout\n")
    dotgit = mktree(work, f"040000 tree {hooks}\thooks\n")
    base_tree = git(work, "rev-parse", "HEAD^{tree}")
    entries = git(work, "ls-tree", base_tree)
    for name in (".git", ".GIT", "git~1"):
        tree = mktree(work, entries + f"\n040000 tree {dotgit}\t{name}\n")
        commit = git(work, "commit-tree", tree, "-p", "HEAD", "-m", f"hostile {name}")
        subprocess.run(["git", "push", "-q", "origin", f"{commit}:main"], cwd=work,
                       capture_output=True)  # the owner's remote may refuse it: fine
        result, _, _ = fleet.turn("alpha", "echo hi")
        assert "\n" not in (result["error"] or ""), result
        assert not pwned.exists(), name
        git(work, "push", "-q", "-f", "origin", "HEAD:main")  # back to a sane head


def mktree(work: Path, entries: str) -> str:
    return subprocess.run(["git", "mktree", "--missing"], cwd=work, check=True,
                          input=entries.encode(), capture_output=True).stdout.decode().strip()


@pytest.mark.parametrize("table", [
    'mode = "off"', 'network = "full"', 'uid = "postgres"\ngid = "postgres"',
    'key_env = "AGENTD_FLEET_DB"', "memory_mb = 0", "processes = 0", "processes = 1000000",
    "tmp_size_mb = 0", "timeout = 86400.0"],
    ids=["sandbox-off", "network-full", "another-uid", "key-from-the-workers-env",
         "memory-unlimited", "processes-unlimited", "processes-huge", "tmpfs-unbounded",
         "a-day-per-command"])
def test_a_home_cannot_loosen_the_workers_sandbox(fleet: Fleet, table: str) -> None:
    """A home's agentd.toml is its owner's, and the owner is not the worker's operator:
    a `[sandbox]` that turns the sandbox off (the agent on the worker's host, with its
    keys and database URL), opens the host's network (its loopback: the fleet's
    PostgreSQL), runs commands as another host user, or lifts a resource limit past the
    fleet's (0: none; the worker's memory, processes and RAM-backed /tmp are every
    home's), or a provider whose key_env names
    a variable of the worker that is no API key (its database URL, sent to the home's
    base_url), is refused, in one line, before the model is called."""
    work = fleet.tmp / "alpha-work"
    sync(work)
    config = work / "agentd.toml"
    original = config.read_text()
    if table.startswith("key_env"):  # the worker's DB URL sent as the provider's key
        assert "max_retries = 0\n" in original
        config.write_text(original.replace("max_retries = 0\n", f"max_retries = 0\n{table}\n"))
    else:
        config.write_text(original + f"\n[sandbox]\n{table}\n")
    fleet.push("alpha", "loosen the sandbox")
    try:
        before = len(fleet.fake.requests)
        result, seen, _ = fleet.turn(
            "alpha", f"tr '\\0' '\\n' < /proc/self/environ; ls -la {fleet.cache}; id; "
            f"cat {fleet.host_secret}; echo done")
        assert result["status"] == "error" and "\n" not in result["error"], (result, seen)
        assert "sandbox" in result["error"] or "key_env" in result["error"], result
        assert len(fleet.fake.requests) == before  # refused before the first model call
        assert not any(DB_PASSWORD in str(q.headers) for q in fleet.fake.requests)
        assert not leaked(fleet, *seen, str(result))
    finally:
        fleet.fake._script.clear()  # the scripted replies the refused turn left unused
        sync(work)
        config.write_text(original)
        fleet.push("alpha", "the sandbox as it was")


def fleet_set(fleet: Fleet, *args: str) -> Any:
    """`agentd fleet set ARGS` on the test's fleet, through the real CLI."""
    from click.testing import CliRunner

    from agentd.cli import cli

    return CliRunner().invoke(cli, ["fleet", "set", *args, "--db", fleet.url])


def test_a_home_may_tighten_its_limits_under_the_fleets(fleet: Fleet) -> None:
    """The limits a fleet turn's commands run under: the home's own where it tightens
    one, the operator's `sandbox_limits` where it leaves one at agentd's default, and a
    home may go up to (not past) a ceiling the operator raised; what bash sees is what
    agentd enforces (RLIMIT_AS, RLIMIT_CPU, RLIMIT_NOFILE)."""
    out = fleet_set(fleet, "sandbox_limits", '{"memory_mb": 4096, "open_files": 512}')
    assert out.exit_code == 0, out.output
    work = fleet.tmp / "alpha-work"
    sync(work)
    config = work / "agentd.toml"
    original = config.read_text()
    config.write_text(original + "\n[sandbox]\nmemory_mb = 3072\ncpu_seconds = 60\n")
    fleet.push("alpha", "tighter limits (and more memory, as the operator allows)")
    try:
        result, seen, _ = fleet.turn("alpha", "ulimit -v; ulimit -t; ulimit -n; echo limits")
        assert result["status"] == "ok", (result, seen)
        assert seen[0].split() == [str(3072 * 1024), "60", "512", "limits"], seen
        out = fleet_set(fleet, "sandbox_limits", '{"memory_mb": 2048}')
        assert out.exit_code == 0, out.output
        before = len(fleet.fake.requests)
        result, seen, _ = fleet.turn("alpha", "echo hi")
        assert result["status"] == "error" and "\n" not in result["error"], result
        assert "sandbox.memory_mb = 3072" in result["error"], result
        assert "sandbox_limits" in result["error"] and len(fleet.fake.requests) == before
    finally:
        fleet.fake._script.clear()
        fleet_set(fleet, "sandbox_limits", "{}")
        sync(work)
        config.write_text(original)
        fleet.push("alpha", "the limits as they were")


def point_at(fleet: Fleet, base_url: str, extra: str = "") -> str:
    """alpha's agentd.toml, its anthropic provider's base_url set to `base_url` (and
    `extra` tables appended), pushed by its owner; the file as it was, for `restore`."""
    work = fleet.tmp / "alpha-work"
    sync(work)
    config = work / "agentd.toml"
    original = config.read_text()
    line = f'base_url = "{fleet.fake.anthropic_url}"\n'
    assert line in original
    config.write_text(original.replace(line, f"base_url = {base_url!r}\n") + extra)
    fleet.push("alpha", "another endpoint")
    return original


def restore(fleet: Fleet, original: str) -> None:
    work = fleet.tmp / "alpha-work"
    fleet.fake._script.clear()  # the scripted replies a refused turn left unused
    sync(work)
    (work / "agentd.toml").write_text(original)
    fleet.push("alpha", "the endpoint as it was")


@pytest.mark.parametrize("url", [
    "{evil}", "{evil}/v1", "{ours}@{evil_host}", "{ours}:@{evil_host}",
    "http://127.0.0.1.nip.io:{ours_port}", "http://localhost:{ours_port}", "{ours_https}",
    "{ours}/../v1"],
    ids=["another-server", "its-path", "userinfo", "userinfo-colon", "host-suffix",
         "same-host-by-name", "another-scheme", "dot-segments"])
def test_a_home_cannot_send_the_workers_key_elsewhere(fleet: Fleet, url: str) -> None:
    """The worker's provider key goes only to an endpoint the operator allows (the
    providers' defaults, or the fleet setting `endpoints`): a home whose base_url names
    another server, or dresses one up as the listed one (a user@ part, a longer host, the
    same port by another name, another scheme), ends its turn in one line naming the
    setting, before any model call; the attacker's server receives nothing."""
    with FakeLLM() as evil:
        evil_host = evil.anthropic_url.removeprefix("http://")
        ours = fleet.fake.anthropic_url
        url = url.format(evil=evil.anthropic_url, evil_host=evil_host,
                         ours_port=ours.rpartition(":")[2], ours=ours,
                         ours_https=ours.replace("http://", "https://"))
        original = point_at(fleet, url)
        try:
            before = len(fleet.fake.requests)
            result, seen, _ = fleet.turn("alpha", "echo hi")
            assert result["status"] == "error" and "\n" not in result["error"], result
            assert "endpoints" in result["error"] or "base_url" in result["error"], result
            assert evil.requests == []
            assert len(fleet.fake.requests) == before
            assert not leaked(fleet, *seen, str(result))
        finally:
            restore(fleet, original)


def test_a_keyless_provider_cannot_aim_the_worker_at_its_loopback(fleet: Fleet) -> None:
    """A provider without a key still makes the worker's host POST to its base_url: one
    pointing at the worker's loopback (here a listener standing in for the fleet's
    PostgreSQL or bridge) is refused like a keyed one, even when the turn's model is
    another provider's (a fallback, a heartbeat model could reach it)."""
    with FakeLLM() as evil:
        extra = (f'\n[providers.lab]\nprotocol = "openai"\nbase_url = '
                 f'"{evil.openai_url}"\n')
        original = point_at(fleet, fleet.fake.anthropic_url, extra)
        try:
            result, _, _ = fleet.turn("alpha", "echo hi")
            assert result["status"] == "error" and "providers.lab" in result["error"], result
            assert evil.requests == []
        finally:
            restore(fleet, original)


def test_a_listed_endpoint_is_called_and_unlisting_it_closes_it(fleet: Fleet) -> None:
    """The operator lists a second server for the worker's key with `agentd fleet set
    endpoints` (a path prefix: `/` covers the SDK's /v1/messages): the home's turn runs
    there, with the worker's key; set back, the next turn is refused, with nothing sent."""
    with FakeLLM() as second:
        listed = ours(fleet.fake, {"url": f"{second.anthropic_url}/",
                                   "key_env": "ANTHROPIC_API_KEY"})
        out = fleet_set(fleet, "endpoints", json.dumps(listed))
        assert out.exit_code == 0, out.output
        original = point_at(fleet, second.anthropic_url)
        try:
            second.push({"text": "from the second"})
            result, _, _ = fleet.turn("alpha")
            fleet.fake._script.clear()  # the turn ran on the second server
            assert result["status"] == "ok" and result["text"] == "from the second", result
            assert [KEY in str(q.headers) for q in second.requests] == [True]
            out = fleet_set(fleet, "endpoints", json.dumps(ours(fleet.fake)))
            assert out.exit_code == 0, out.output
            result, _, _ = fleet.turn("alpha")
            assert result["status"] == "error" and "endpoints" in result["error"], result
            assert len(second.requests) == 1
        finally:
            fleet_set(fleet, "endpoints", json.dumps(ours(fleet.fake)))
            restore(fleet, original)


@pytest.mark.parametrize("entry", [
    "{url}", {"url": "{url}", "key_env": "OTHER_API_KEY"}],
    ids=["listed-for-keyless-providers", "listed-for-another-key"])
def test_a_home_cannot_send_the_workers_key_to_another_allowed_endpoint(
        fleet: Fleet, entry: Any) -> None:
    """An endpoint the operator allows is not allowed for every key: a server listed
    plain (for keyless providers, like the ollama preset) or for another key variable
    does not receive the worker's $ANTHROPIC_API_KEY, though a home points its anthropic
    provider there; the turn ends in one line naming the key, before any model call,
    and the attacker's server receives nothing."""
    with FakeLLM() as evil:
        listed = json.loads(json.dumps(entry).replace("{url}", evil.anthropic_url))
        out = fleet_set(fleet, "endpoints", json.dumps(ours(fleet.fake, listed)))
        assert out.exit_code == 0, out.output
        original = point_at(fleet, evil.anthropic_url)
        try:
            before = len(fleet.fake.requests)
            result, seen, _ = fleet.turn("alpha", "echo hi")
            assert result["status"] == "error" and "\n" not in result["error"], result
            assert "$ANTHROPIC_API_KEY is not sent" in result["error"], result
            assert evil.requests == [] and len(fleet.fake.requests) == before
            assert not leaked(fleet, *seen, str(result))
        finally:
            fleet_set(fleet, "endpoints", json.dumps(ours(fleet.fake)))
            restore(fleet, original)


@pytest.mark.parametrize("args", [
    ("endpoints", '["https://api.openai.com@evil.example/v1"]'),
    ("endpoints", '"https://llm.example.com/v1"'), ("endpoints", "[not json"),
    ("trust_home_sandbox", '"yes"'), ("dead_after", "0"), ("no_such", "1"),
    ("sandbox_limits", '{"memory_mb": 0}'), ("sandbox_limits", '{"processes": 1.5}'),
    ("sandbox_limits", '{"swap_mb": 1}'), ("sandbox_limits", '[4096]'),
    ("endpoints", '[{"url": "https://llm.example.com/v1"}]'),
    ("endpoints", '[{"url": "https://llm.example.com/v1", "key_env": "A B"}]'),
    ("endpoints", '[{"url": "https://x@llm.example.com", "key_env": "LLM_API_KEY"}]')],
    ids=["userinfo", "not-a-list", "not-json", "not-a-bool", "not-positive", "unknown",
         "limit-zero", "limit-not-whole", "limit-unknown", "limits-not-an-object",
         "entry-without-key", "entry-bad-key", "entry-userinfo"])
def test_fleet_set_refuses_a_bad_value_in_one_line(fleet: Fleet, args: tuple[str, str]) -> None:
    from click.testing import CliRunner

    from agentd.cli import cli

    with db.connect(fleet.url) as conn:
        before = db.settings(conn)
    out = CliRunner().invoke(cli, ["fleet", "set", *args, "--db", fleet.url])
    assert out.exit_code != 0 and isinstance(out.exception, SystemExit), out
    assert len(out.output.strip().splitlines()) == 1 and "Traceback" not in out.output
    with db.connect(fleet.url) as conn:
        assert db.settings(conn) == before


@pytest.mark.parametrize(("base_url", "ok"), [
    (None, True), ("https://api.openai.com/v1", True), ("https://api.openai.com/v1/", True),
    ("https://llm.internal/team/v1", True), ("http://[::1]:8080/v1", True),
    ("https://api.anthropic.com", False), ("http://localhost:11434/v1", False),
    ("https://keyless.internal/v1", False),
    ("https://api.openai.com@evil.example/v1", False), ("https://evil.example\\@api.openai.com",
                                                        False),
    ("https://api.openai.com.evil.example/v1", False), ("http://api.openai.com/v1", False),
    ("https://api.openai.com:8443/v1", False), ("https://api.openai.com/v10", False),
    ("https://api.openai.com/v1/../../evil", False), ("https://api.openai.com/%2e%2e/x", False),
    ("https://api.openai.com/v1?x=1", False), ("https://api%2eopenai.com/v1", False),
    ("https://llm.internal/team", False), ("https://llm.internal/teams/v1", False),
    ("http://[::1]:8081/v1", False), (" https://api.openai.com/v1", False),
    ("file:///etc/passwd", False), ("https://api.openai.com:0/v1", False)])
def test_the_endpoint_rule(base_url: str | None, ok: bool) -> None:
    """endpoints.check on its own, for a provider with $OPENAI_API_KEY: its own default
    and the prefixes listed for it pass, after normalising case, the default port and a
    trailing slash; another provider's default, the keyless ollama preset, a URL listed
    for keyless providers and every lookalike are refused in one line."""
    from agentd.config.settings import Endpoint
    from agentd.errors import AgentdError
    from agentd.fleet import endpoints

    providers = {"x": Endpoint("openai", base_url, "OPENAI_API_KEY")}
    listed = [{"url": "https://llm.internal/team/v1", "key_env": "OPENAI_API_KEY"},
              {"url": "http://[::1]:8080/v1", "key_env": "OPENAI_API_KEY"},
              "https://keyless.internal/v1"]
    if ok:
        endpoints.check(providers, listed)
    else:
        with pytest.raises(AgentdError) as e:
            endpoints.check(providers, listed)
        assert "\n" not in str(e.value) and str(e.value).startswith("providers.x")


@pytest.mark.parametrize(("protocol", "base_url", "key_env", "ok"), [
    ("anthropic", None, "ANTHROPIC_API_KEY", True), ("openai", None, "OPENAI_API_KEY", True),
    ("anthropic", None, "OPENAI_API_KEY", False), ("openai", None, "ANTHROPIC_API_KEY", False),
    ("openai", "http://localhost:11434/v1", None, True),
    ("openai", "http://localhost:11434/v1", "ANTHROPIC_API_KEY", False),
    ("openai", "https://keyless.internal/v1", None, True),
    ("openai", "https://llm.internal/v1", None, True),
    ("openai", "https://llm.internal/v1", "LLM_API_KEY", True),
    ("openai", "https://llm.internal/v1", "ANTHROPIC_API_KEY", False),
    ("anthropic", "https://api.openai.com/v1", "ANTHROPIC_API_KEY", False)])
def test_each_key_goes_only_to_its_own_endpoints(protocol: str, base_url: str | None,
                                                 key_env: str | None, ok: bool) -> None:
    """The key binding on its own: a key goes to its provider's default (a provider
    without a base_url calls its protocol's), or to an operator entry naming it; a
    keyless provider may call any allowed URL."""
    from agentd.config.settings import Endpoint
    from agentd.errors import AgentdError
    from agentd.fleet import endpoints

    providers = {"x": Endpoint(protocol, base_url, key_env)}
    listed = ["https://keyless.internal/v1",
              {"url": "https://llm.internal/v1", "key_env": "LLM_API_KEY"}]
    if ok:
        endpoints.check(providers, listed)
    else:
        with pytest.raises(AgentdError, match="is not sent to"):
            endpoints.check(providers, listed)


def test_fleet_a_symlinked_agentd_toml_loosens_nothing(fleet: Fleet, tmp_path: Path) -> None:
    """The owner commits `agentd.toml -> notes/evil.toml`, the target a tracked file that
    turns the sandbox off. The worker refuses the turn in one line before the model is
    called, and a checkout of that head (what the worker's git on the clone reads) gives
    the strict defaults to gitexec, as the fleet's own check (homefs) refuses it."""
    work = fleet.tmp / "alpha-work"
    sync(work)
    config = work / "agentd.toml"
    original = config.read_text()
    (work / "notes").mkdir(exist_ok=True)
    (work / "notes" / "evil.toml").write_text(original + '\n[sandbox]\nmode = "off"\n')
    config.unlink()
    config.symlink_to("notes/evil.toml")
    fleet.push("alpha", "settings by link")
    try:
        checkout = tmp_path / "checkout"
        git(tmp_path, "clone", "-q", str(fleet.remotes["alpha"]), str(checkout))
        assert (checkout / "agentd.toml").is_symlink()
        with Root(checkout) as root:
            _, problem = schedule.settings_of(root)
        assert "symlink" in problem
        assert gitexec.home_settings(checkout).sandbox.mode == "bwrap"
        assert gitexec.bwrap_for(checkout) is not None
        before = len(fleet.fake.requests)
        result, seen, _ = fleet.turn("alpha", f"cat {fleet.host_secret}; id")
        assert result["status"] == "error" and "\n" not in result["error"], result
        assert "symlink" in result["error"], result
        assert len(fleet.fake.requests) == before  # refused before the first model call
        assert not leaked(fleet, *seen, str(result))
    finally:
        fleet.fake._script.clear()  # the scripted replies the refused turn left unused
        sync(work)
        (work / "agentd.toml").unlink()
        (work / "agentd.toml").write_text(original)
        (work / "notes" / "evil.toml").unlink()
        fleet.push("alpha", "settings as they were")
