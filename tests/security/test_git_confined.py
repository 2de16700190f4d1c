"""git on a hostile tree (issue 10, "git confined" and the git side of "strangers kept
apart"): every attack is planted by the model's own bash commands through the real loop and
real bubblewrap, from a trusted CLI turn and, where the untrusted profile can reach, from an
untrusted (webhook-like) turn that may write only `outbox/`; then the turn's own commit
runs. After each: no planted program ran, what was held back is named in the commit body
and the day log, and the home still commits the next turn.

Filters write their marker into `<home>/.git/` as well as the host's tmp: inside git's
sandbox only `.git` is writable, so a filter that ran confined would still be seen."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from attack import MODEL, requires_bwrap, run_attack, set_sandbox
from fakellm import FakeLLM

from agentd import gitexec
from agentd.config import load_settings
from agentd.loop import Events
from agentd.turn import TurnReport, TurnRequest, run_turn

KEY = "sk-test-KEYVALUE"  # the fake fixture's OPENAI_API_KEY: the secret scan knows it


def git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout


def tracked(home: Path) -> set[str]:
    out = subprocess.run(["git", "-C", str(home), "ls-files", "-z"], capture_output=True,
                         check=True).stdout
    return {p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p}


def body(home: Path) -> str:
    """The last turn's commit message (not a later commit holding only day-log lines)."""
    return git(home, "log", "-1", "--format=%B", "--invert-grep",
               "--grep=^Agentd-Changes: day log only$")


def day_log(home: Path) -> str:
    return (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()


def untrusted_turn(fake: FakeLLM, home: Path, workdir: Path, *commands: str) -> TurnReport:
    """A turn on strangers' text, as the daemon runs an inbox or webhook turn: bash can
    write only `<home>/outbox/` (and a scratch folder)."""
    fake.push(*({"tool_calls": [{"name": "bash", "arguments": {"command": c}}]}
                for c in commands), {"text": "done"})
    req = TurnRequest("a stranger's event", workdir, trigger="hook:test", model=MODEL,
                      profile="untrusted")
    report = asyncio.run(run_turn(home, load_settings(home), req, Events()))
    assert report.ok, report.result
    return report


def still_commits(fake: FakeLLM, home: Path, workdir: Path) -> None:
    """The next (trusted) turn commits as usual."""
    head = git(home, "rev-parse", "HEAD")
    run_attack(fake, home, workdir, f"echo again > {home}/again.md")
    assert git(home, "rev-parse", "HEAD") != head and "again.md" in tracked(home)


def filter_cmd(home: Path, tmp: Path) -> str:
    """A filter command that leaves markers wherever it could write, then passes data on."""
    return f"touch {home}/.git/FILTER_RAN {tmp}/FILTER_RAN; cat"


def filter_ran(home: Path, tmp: Path) -> bool:
    return (home / ".git" / "FILTER_RAN").exists() or (tmp / "FILTER_RAN").exists()


def nested_repo(where: str, cmd: str) -> str:
    """bash that makes `where` a nested repository with one commit (so the landed code
    staged it as a gitlink), then gives it a clean filter running `cmd` (its own config and
    attributes) and a changed file that any `git status` inside it must filter to compare."""
    return (f"mkdir -p {where} && cd {where} && git init -q . && echo data > a.txt && "
            "git add -A && git -c user.name=a -c user.email=a@a commit -qm nested && "
            f"git config filter.x.clean '{cmd}' && git config filter.x.required true && "
            "echo '* filter=x' > .gitattributes && echo changed > a.txt && "
            "git read-tree HEAD && echo PLANTED")  # no stat data: a status must hash a.txt


@requires_bwrap
@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_nested_repository_is_never_entered(fake: FakeLLM, home: Path, workdir: Path,
                                            tmp_path: Path, mode: str) -> None:
    if mode == "off":  # git still runs with the confined environment
        set_sandbox(home, mode="off")
        git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "off")
    cmd = filter_cmd(home, tmp_path)
    a = run_attack(fake, home, workdir,
                   nested_repo(f"{home}/outbox/x", cmd),
                   f"mkdir -p {home}/notes/y && echo 'gitdir: ../../outbox/x/.git' > "
                   f"{home}/notes/y/.git && echo z > {home}/notes/y/z.txt && "
                   f"echo '* filter=x' > {home}/.gitattributes && echo ok > {home}/ok.md")
    assert "PLANTED" in a.results[0]
    assert not filter_ran(home, tmp_path)
    assert {"ok.md", ".gitattributes"} <= tracked(home)
    assert not [p for p in tracked(home) if p.startswith(("outbox/x", "notes/y"))]
    assert "160000" not in git(home, "ls-files", "-s")  # no gitlink staged
    note = "Not committed (a nested git repository): notes/y/, outbox/x/"
    assert note in body(home) and note in day_log(home)
    still_commits(fake, home, workdir)
    assert not filter_ran(home, tmp_path)


@requires_bwrap
def test_the_marker_would_show_a_filter_that_ran(home: Path, tmp_path: Path) -> None:
    """Control for the test above: the landed code's way (stage the nested repo as a gitlink,
    then a plain `git status`) runs the nested repo's filter, and the marker shows it."""
    subprocess.run(["bash", "-c", nested_repo(f"{home}/outbox/x", filter_cmd(home, tmp_path))],
                   check=True, capture_output=True)
    git(home, "add", "outbox/x")
    git(home, "status")
    assert filter_ran(home, tmp_path)


@requires_bwrap
def test_untrusted_turn_nested_repository_in_outbox(fake: FakeLLM, home: Path, workdir: Path,
                                                    tmp_path: Path) -> None:
    report = untrusted_turn(fake, home, workdir,
                            nested_repo(f"{home}/outbox/evil", filter_cmd(home, tmp_path)),
                            f"echo answer > {home}/outbox/answer.md")
    assert not filter_ran(home, tmp_path)
    assert report.held == {"outbox/evil/": "a nested git repository"}
    assert "outbox/answer.md" in tracked(home)
    assert not [p for p in tracked(home) if p.startswith("outbox/evil")]
    assert ('Not committed (a nested git repository) (named by the untrusted turn): '
            '"outbox/evil/"') in day_log(home)
    untrusted_turn(fake, home, workdir, f"echo more > {home}/outbox/more.md")
    assert "outbox/more.md" in tracked(home) and not filter_ran(home, tmp_path)


@requires_bwrap
def test_a_tracked_gitlink_is_never_recursed_into(fake: FakeLLM, home: Path, workdir: Path,
                                                  tmp_path: Path) -> None:
    """A home where the landed code already committed a gitlink: changing the nested repo's
    files never makes git look inside it (that is where its filter would run)."""
    subprocess.run(["bash", "-c", nested_repo(f"{home}/outbox/x", filter_cmd(home, tmp_path))],
                   check=True, capture_output=True)
    git(home, "add", "outbox/x")
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "old gitlink")
    run_attack(fake, home, workdir, f"echo changed > {home}/outbox/x/a.txt; "
                                    f"echo new > {home}/outbox/x/b.txt; echo ok > {home}/k.md")
    assert not filter_ran(home, tmp_path)
    assert "k.md" in tracked(home)


@requires_bwrap
def test_owner_filters_never_run_on_agent_files(fake: FakeLLM, home: Path, workdir: Path,
                                                tmp_path: Path) -> None:
    """A filter the owner defined (git-lfs, say) is never applied to what the agent wrote,
    whatever its `.gitattributes` (plain or through a macro) asks for."""
    git(home, "config", "filter.x.clean", filter_cmd(home, tmp_path))
    git(home, "config", "diff.x.textconv", filter_cmd(home, tmp_path))
    run_attack(fake, home, workdir,
               f"printf '[attr]m filter=x diff=x\\n* filter=x diff=x\\n*.md m\\n' > "
               f"{home}/.gitattributes; echo hello > {home}/a.md; echo b > {home}/b.txt")
    assert {"a.md", "b.txt", ".gitattributes"} <= tracked(home)
    assert git(home, "show", "HEAD:a.md") == "hello\n"
    assert not filter_ran(home, tmp_path)


@requires_bwrap
def test_weakened_attributes_filter_runs_but_confined(fake: FakeLLM, home: Path,
                                                      workdir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without agentd's `.git/info/attributes` block the owner's filter does run on agent
    files (so the test above guards something), and then it runs inside git's sandbox: no
    capabilities, no network, nothing writable but `.git`."""
    monkeypatch.setattr(gitexec, "ATTRIBUTES_MARK", "# weakened")
    (home / ".git" / "info" / "attributes").write_text("# weakened\n")
    report = home / ".git" / "filter-report"
    probe = (f"grep CapEff /proc/self/status > {report}; cat /proc/net/dev >> {report}; "
             f"touch {home}/pwned /etc/pwned {tmp_path}/pwned 2>>{report}; cat")
    git(home, "config", "filter.x.clean", probe)
    run_attack(fake, home, workdir, f"echo '* filter=x' > {home}/.gitattributes; "
                                    f"echo hello > {home}/a.md")
    text = report.read_text()
    assert "CapEff:\t0000000000000000" in text
    assert "lo:" in text and "eth" not in text and "ens" not in text
    assert text.count("Read-only file system") >= 1
    assert not (home / "pwned").exists() and not Path("/etc/pwned").exists()
    assert not (tmp_path / "pwned").exists()


NAMES = {  # planted name -> committed (True) or held back
    "outbox/.GIT": False, "git~1": False, "GIT~1": False, ".git ": False, ".git.": False,
    ".git::$INDEX_ALLOCATION": False, ":(nosuchmagic)x": True, ":(glob)x*": True,
    "new\nline": True, "-dash": True, "--dashdash": True, "bad\udcff": True,
}


def _touch_all(home: Path, names: list[str]) -> str:
    """bash that creates each name under `home`, spelled with $'…' quoting."""
    def quoted(name: str) -> str:
        raw = name.encode("utf-8", "surrogateescape")
        return "$'" + "".join(f"\\x{b:02x}" for b in raw) + "'"
    return f"cd {home} && touch -- " + " ".join(quoted(n) for n in names) + " && echo MADE"


@requires_bwrap
def test_names_git_refuses_are_held_back_never_fatal(fake: FakeLLM, home: Path,
                                                     workdir: Path) -> None:
    a = run_attack(fake, home, workdir, _touch_all(home, list(NAMES)),
                   f"cd {home} && ln -s /etc/passwd .gitmodules && touch 'x\\.git' && "
                   "echo ok > fine.md")
    assert "MADE" in a.results[0]
    files = tracked(home)
    for name, committed in NAMES.items():
        assert (name in files) == committed, name
    assert "fine.md" in files and ".gitmodules" not in files and "x\\.git" not in files
    msg = body(home)
    assert ("Not committed (a path git refuses): " in msg and "outbox/.GIT" in msg
            and "git~1" in msg and ".gitmodules" in msg)
    assert "- new\\nline" in msg and "- bad\\udcff" in msg  # committed, shown escaped
    log = day_log(home)
    assert "outbox/.GIT" in log and ".gitmodules" in log and "new\nline" not in log
    # `x\.git` (an NTFS spelling) is left to git, which refuses it at commit time: found by
    # adding in halves, named in the commit body, and then in the day log
    assert "Not committed (a path git refuses): x\\.git" in msg
    assert "- Not committed (a path git refuses): x\\.git" in day_log(home)
    still_commits(fake, home, workdir)


@requires_bwrap
def test_untrusted_turn_refused_names_in_outbox(fake: FakeLLM, home: Path,
                                                workdir: Path) -> None:
    names = ["outbox/.GIT", "outbox/git~1", "outbox/:(nosuchmagic)x", "outbox/new\nline",
             "outbox/.git "]
    report = untrusted_turn(fake, home, workdir, _touch_all(home, names),
                            f"echo hi > {home}/outbox/answer.md")
    files = tracked(home)
    assert {"outbox/answer.md", "outbox/:(nosuchmagic)x", "outbox/new\nline"} <= files
    assert report.held == {"outbox/.GIT": "a path git refuses",
                           "outbox/git~1": "a path git refuses",
                           "outbox/.git ": "a path git refuses"}
    untrusted_turn(fake, home, workdir, f"echo more > {home}/outbox/more.md")
    assert "outbox/more.md" in tracked(home)


def _glob_attack(fake: FakeLLM, home: Path, workdir: Path) -> None:
    run_attack(fake, home, workdir,
               f"cd {home} && echo 'token = {KEY}' > creds.md && touch ':(glob)**' && "
               "echo plain > plain.md")


@requires_bwrap
def test_pathspec_magic_name_cannot_commit_a_held_back_secret(fake: FakeLLM, home: Path,
                                                              workdir: Path) -> None:
    _glob_attack(fake, home, workdir)
    files = tracked(home)
    assert "creds.md" not in files and {":(glob)**", "plain.md"} <= files
    assert KEY not in git(home, "log", "-p", "--all")
    assert "Not committed (secrets found): creds.md" in body(home)


@requires_bwrap
def test_weakened_literal_pathspecs_commit_the_secret(fake: FakeLLM, home: Path,
                                                      workdir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GIT_LITERAL_PATHSPECS the same attack commits the held-back secret: the
    test above guards something."""
    monkeypatch.delitem(gitexec.ENV, "GIT_LITERAL_PATHSPECS")
    _glob_attack(fake, home, workdir)
    assert "creds.md" in tracked(home)


@requires_bwrap
def test_a_git_killed_mid_commit_leaves_no_stuck_home(fake: FakeLLM, home: Path,
                                                      workdir: Path) -> None:
    """kill -9 of a git holding `.git/index.lock` (a `git add` stuck in its fsmonitor
    hook); the next turn, whatever triggered it, clears the stale lock and commits."""
    (home / "manual.md").write_text("typed by hand\n")
    proc = subprocess.Popen(["git", "-C", str(home), "-c", "core.fsmonitor=sleep 600 #",
                             "add", "manual.md"],
                            start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = home / ".git" / "index.lock"
    deadline = time.monotonic() + 10
    while not lock.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "git never took the lock"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    old = time.time() - 60  # as if agentd restarts a minute later
    os.utime(lock, (old, old))
    run_attack(fake, home, workdir, f"echo later > {home}/later.md")
    assert not lock.exists()
    assert {"manual.md", "later.md"} <= tracked(home)


@requires_bwrap
def test_rewritten_gitignore_commits_no_runtime_files(fake: FakeLLM, home: Path,
                                                      workdir: Path) -> None:
    """A `.gitignore` negating everything (a home made before agentd kept its own
    `.git/info/exclude` block, too) still commits no transcript, ledger, inbox file, .env
    or key file."""
    exclude = home / ".git" / "info" / "exclude"
    exclude.write_text("# git's template only\n")
    (home / "inbox" / "from-stranger.md").write_text("strangers' text\n")
    run_attack(fake, home, workdir,
               f"cd {home} && printf '!*\\n!.agentd/\\n!.agentd/**\\n!.env*\\n!*.pem\\n' > "
               ".gitignore && echo KEY=1 > .env && echo k > id.pem && echo n > note.md")
    files = tracked(home)
    assert ".gitignore" in files and "note.md" in files
    assert not [p for p in files if p.startswith((".agentd", "inbox/from"))]
    assert ".env" not in files and "id.pem" not in files
    assert "Not committed (private by name: .env*, *.pem): .env, id.pem" in body(home)
    assert "/.agentd/" in exclude.read_text()  # given back at the turn
    still_commits(fake, home, workdir)
    assert not [p for p in tracked(home) if p.startswith(".agentd")]


def _set_git_limits(home: Path, **limits: int) -> None:
    path = home / "agentd.toml"
    lines = "".join(f"{k} = {v}\n" for k, v in limits.items())
    path.write_text(path.read_text().replace("\n# [git]\n", f"\n[git]\n{lines}", 1))
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "limits")


@requires_bwrap
def test_big_files_are_never_committed(fake: FakeLLM, home: Path, workdir: Path) -> None:
    _set_git_limits(home, max_file_mb=1, max_commit_mb=3)
    run_attack(fake, home, workdir,
               f"cd {home} && head -c 2M /dev/zero > big.bin && for i in 1 2 3 4; do "
               "head -c 900K /dev/zero > part$i.bin; done && echo small > small.md")
    files = tracked(home)
    assert "big.bin" not in files and "small.md" in files
    assert {"part1.bin", "part2.bin", "part3.bin"} <= files and "part4.bin" not in files
    msg = body(home)
    assert "Not committed (over the 1 MB file limit): big.bin" in msg
    assert "Not committed (over the 3 MB limit per commit): part4.bin" in msg
    assert "big.bin" in day_log(home)
    still_commits(fake, home, workdir)  # and part4.bin rides along now
    assert "part4.bin" in tracked(home)


@requires_bwrap
def test_untrusted_turn_cannot_bloat_history(fake: FakeLLM, home: Path,
                                             workdir: Path) -> None:
    """git's default limits hold on their own: with the untrusted disk quota off, one
    untrusted turn writing 92 MB into outbox/ commits at most `max_commit_mb`, and no file
    over `max_file_mb`."""
    with (home / "agentd.toml").open("a") as f:
        f.write("\n[quota]\nuntrusted_outbox_mb = 0\nuntrusted_outbox_files = 0\n")
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "quota off")
    report = untrusted_turn(fake, home, workdir,
                            f"cd {home}/outbox && head -c 20M /dev/zero > huge.bin && "
                            "for i in $(seq 1 8); do head -c 9M /dev/zero > p$i.bin; done")
    sizes = git(home, "ls-tree", "-r", "-l", "HEAD", "outbox").split()
    committed = sum(int(s) for s in sizes[3::5])
    assert committed <= 50 * 2**20
    assert report.held["outbox/huge.bin"] == "over the 10 MB file limit"
    assert "over the 50 MB limit per commit" in report.held.values()


@requires_bwrap
def test_unreadable_and_odd_files_are_held_back(fake: FakeLLM, home: Path,
                                                workdir: Path) -> None:
    """git has no CAP_DAC_OVERRIDE in its sandbox: a file the agent made unreadable is held
    back with a note, never fatal; a FIFO never hangs the commit."""
    run_attack(fake, home, workdir,
               f"cd {home} && echo s > locked.md && chmod 000 locked.md && mkdir shut && "
               "echo x > shut/in.md && chmod 000 shut && mkfifo pipe && echo ok > fine.md")
    files = tracked(home)
    assert "fine.md" in files and "pipe" not in files
    assert "locked.md" not in files and "shut/in.md" not in files
    assert "Not committed (unreadable): locked.md, shut/" in body(home)
    still_commits(fake, home, workdir)
