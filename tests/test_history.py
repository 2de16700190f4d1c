"""Git as the agent's memory: one commit per turn with trailers, manual edits apart, hooks
that never run, secrets that never get committed, history, show, undo, and no leaks."""

from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import agentd, json_out, requires_bwrap
from daemonkit import wait_for
from fakellm import FakeLLM

from agentd import gitexec, history
from agentd.errors import AgentdError


def git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout


def turn(fake: FakeLLM, home: Path, workdir: Path, task: str, *calls: dict,
         model: str = "openai:gpt-5.4") -> dict:
    if calls:
        fake.push({"tool_calls": list(calls)})
    fake.push({"text": "done"})
    r = agentd("run", "--json", "--home", str(home), "-C", str(workdir), "-m", model, task)
    return json_out(r)


def write(path: str, content: str) -> dict:
    return {"name": "write", "arguments": {"path": path, "content": content}}


def test_a_turn_that_changes_the_home_is_one_commit(fake: FakeLLM, home: Path,
                                                    workdir: Path) -> None:
    before = git(home, "rev-list", "--count", "HEAD")
    out = turn(fake, home, workdir, "remember the deploy day\nit is Friday",
               write(str(home / "memory/MEMORY.md"), "# Memory\n- deploys on Friday\n"))
    assert int(git(home, "rev-list", "--count", "HEAD")) == int(before) + 1
    msg = git(home, "log", "-1", "--format=%B")
    assert msg.splitlines()[0] == "remember the deploy day"
    assert "- memory/MEMORY.md" in msg
    assert f"- memory/daily/{datetime.now():%Y-%m-%d}.md" in msg  # the day log rides along
    assert f"Agentd-Run: {out['run_id']}" in msg
    assert "Agentd-Model: openai:gpt-5.4" in msg and "Agentd-Trigger: cli" in msg
    assert git(home, "status", "--porcelain") == ""


def test_long_task_subject_is_cut_to_72(fake: FakeLLM, home: Path, workdir: Path) -> None:
    turn(fake, home, workdir, "x" * 200, write(str(home / "notes.md"), "n\n"))
    subject = git(home, "log", "-1", "--format=%s").strip()
    assert len(subject) == 72 and subject.endswith("…")


def test_a_turn_that_changes_nothing_commits_only_its_day_log(fake: FakeLLM, home: Path,
                                                              workdir: Path) -> None:
    before = git(home, "rev-parse", "HEAD").strip()
    turn(fake, home, workdir, "just answer")
    turn(fake, home, workdir, "write in the workdir only", write("scratch.txt", "x"))
    today = f"memory/daily/{datetime.now():%Y-%m-%d}.md"
    # one commit each, holding the day log alone
    assert git(home, "log", "--format=format:commit", "--name-only", f"{before}..HEAD").split() == [
        "commit", today, "commit", today]
    assert "Agentd-Changes: day log only" in git(home, "log", "-1", "--format=%B")
    assert git(home, "status", "--porcelain") == ""
    day_log = (home / today).read_text()
    assert day_log.count("\n## ") == 2 and "- Task: just answer" in day_log
    assert "- Outcome: ok, 1 step: done" in day_log


def test_manual_edits_are_committed_first_and_apart(fake: FakeLLM, home: Path,
                                                    workdir: Path) -> None:
    (home / "memory/USER.md").write_text("# User\nName: Ada\n")
    turn(fake, home, workdir, "note a thing", write(str(home / "notes.md"), "thing\n"))
    subjects = git(home, "log", "-2", "--format=%s").splitlines()
    assert subjects == ["note a thing", "Manual edits"]
    manual = git(home, "log", "-1", "--skip=1", "--format=%B --stat")
    assert "Agentd-Trigger: manual" in manual and "memory/USER.md" in manual
    assert "notes.md" not in manual


def test_planted_hooks_never_run(fake: FakeLLM, home: Path, workdir: Path,
                                 tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "commit-msg", "post-commit", "prepare-commit-msg"):
        h = home / ".git/hooks" / hook
        h.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        h.chmod(0o755)
    (home / "memory/USER.md").write_text("manual\n")  # a manual-edit commit too
    turn(fake, home, workdir, "write", write(str(home / "a.md"), "a\n"))
    history.undo(home, None, "undo-run")
    assert len(git(home, "log", "--format=%s").splitlines()) >= 4
    assert not marker.exists()


def test_the_agent_cannot_plant_a_hook(fake: FakeLLM, home: Path, workdir: Path) -> None:
    out = turn(fake, home, workdir, "plant",
               {"name": "bash", "arguments": {"command": f"echo 'touch /tmp/x' > "
                                                         f"{home}/.git/hooks/post-commit"}},
               write(str(home / ".git/hooks/pre-commit"), "#!/bin/sh\n"))
    assert [c["is_error"] for c in out["tool_calls"]] == [True, True]
    assert not (home / ".git/hooks/post-commit").exists()
    assert not (home / ".git/hooks/pre-commit").exists()


def test_secret_scan_holds_a_file_back(home: Path) -> None:
    (home / "ok.md").write_text("fine\n")
    (home / "leak.md").write_text("key: sk-live-abcdef123456\n")
    changes = history.pending(home, lambda text: ["OPENAI_API_KEY"] if "sk-live" in text
                              else [])
    assert changes.files == ["ok.md"] and changes.blocked == {"leak.md": ["OPENAI_API_KEY"]}
    sha = history.commit(home, changes.files, "turn", {"Agentd-Run": "r1"})
    assert sha and "leak.md" not in git(home, "show", "--stat", sha)
    assert (home / "leak.md").exists()  # kept on disk
    assert git(home, "status", "--porcelain").strip() == "?? leak.md"


def test_history_show_and_undo(fake: FakeLLM, home: Path, workdir: Path) -> None:
    out1 = turn(fake, home, workdir, "first fact", write(str(home / "memory/MEMORY.md"),
                                                           "# Memory\n- one\n"))
    out2 = turn(fake, home, workdir, "add notes", write(str(home / "notes.md"), "n\n"))
    r = agentd("history", "--home", str(home), "-n", "5")
    assert r.exit_code == 0
    assert out1["run_id"] in r.stdout and out2["run_id"] in r.stdout
    assert "add notes" in " ".join(r.stdout.split()) and " cli " in r.stdout
    shown = agentd("show", out1["run_id"], "--home", str(home))
    assert "+- one" in shown.stdout and "memory/MEMORY.md" in shown.stdout
    undone = agentd("undo", "--home", str(home))  # the last agent turn: add notes
    assert undone.exit_code == 0 and "undone: add notes" in undone.stdout
    assert not (home / "notes.md").exists()
    assert "- one" in (home / "memory/MEMORY.md").read_text()
    assert "Agentd-Trigger: undo" in git(home, "log", "-1", "--format=%B")
    again = agentd("undo", out1["run_id"], "--home", str(home))
    assert again.exit_code == 0 and "- one" not in (home / "memory/MEMORY.md").read_text()


def test_undo_conflict_changes_nothing(fake: FakeLLM, home: Path, workdir: Path) -> None:
    mem = str(home / "memory/MEMORY.md")
    out1 = turn(fake, home, workdir, "v1", write(mem, "# Memory\n- v1\n"))
    turn(fake, home, workdir, "v2", write(mem, "# Memory\n- v2\n"))
    head = git(home, "rev-parse", "HEAD")
    r = agentd("undo", out1["run_id"], "--home", str(home))
    assert r.exit_code == 2 and "later changes touch the same lines" in r.stderr
    assert "nothing changed" in r.stderr and "Traceback" not in r.stderr
    assert git(home, "rev-parse", "HEAD") == head
    assert git(home, "status", "--porcelain") == ""
    assert (home / "memory/MEMORY.md").read_text() == "# Memory\n- v2\n"


@pytest.mark.parametrize("args,needle", [(["show", "nope"], "no run or commit 'nope'"),
                                         (["undo"], "no agent turn to undo")])
def test_history_commands_bad_input(home: Path, args: list[str], needle: str) -> None:
    r = agentd(*args, "--home", str(home))
    assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_undo_refuses_with_uncommitted_changes(fake: FakeLLM, home: Path,
                                               workdir: Path) -> None:
    turn(fake, home, workdir, "w", write(str(home / "a.md"), "a\n"))
    (home / "b.md").write_text("hand edit\n")
    r = agentd("undo", "--home", str(home))
    assert r.exit_code == 2 and "uncommitted changes" in r.stderr
    assert (home / "a.md").exists() and (home / "b.md").exists()


def test_a_home_that_is_not_a_git_repository(home: Path, workdir: Path, fake: FakeLLM) -> None:
    subprocess.run(["rm", "-rf", str(home / ".git")], check=True)
    r = agentd("history", "--home", str(home))
    assert r.exit_code == 2 and "not a git repository" in r.stderr


def _fds_and_children() -> tuple[int, int]:
    fds = len(os.listdir("/proc/self/fd"))
    children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True,
                              text=True).stdout.split()
    return fds, len(children)


def test_soak_200_commits_leak_nothing(home: Path) -> None:
    """200 turns' worth of status + commit in one process: no stray git process, no fd."""
    history.pending(home)  # warm up imports
    fds0, kids0 = _fds_and_children()
    for i in range(200):
        (home / "notes.md").write_text(f"turn {i}\n")
        changes = history.pending(home)
        assert history.commit(home, changes.files, f"turn {i}", {"Agentd-Run": f"r{i}"})
    fds1, kids1 = _fds_and_children()
    assert (fds1, kids1) == (fds0, kids0)
    assert re.fullmatch(r"\d+\n", git(home, "rev-list", "--count", "HEAD"))
    assert int(git(home, "rev-list", "--count", "HEAD")) >= 201


def test_undo_after_a_turn_that_changed_nothing(fake: FakeLLM, home: Path,
                                                workdir: Path) -> None:
    """The day log left uncommitted by a no-change turn does not block undo, and undo never
    erases day-log entries."""
    turn(fake, home, workdir, "note", write(str(home / "n.md"), "x\n"))
    turn(fake, home, workdir, "just answer")
    log_before = (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()
    r = agentd("undo", "--home", str(home))
    assert r.exit_code == 0, r.stderr
    assert not (home / "n.md").exists()
    assert (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text() == log_before


def test_a_secret_written_by_the_agent_is_not_committed(fake: FakeLLM, home: Path,
                                                        workdir: Path) -> None:
    key = os.environ["OPENAI_API_KEY"]
    out = turn(fake, home, workdir, "save config",
               write(str(home / "creds.md"), f"token = {key}\n"),
               write(str(home / "plain.md"), "nothing secret\n"))
    assert (home / "creds.md").read_text() == f"token = {key}\n"  # kept on disk
    tracked = git(home, "ls-files")
    assert "plain.md" in tracked and "creds.md" not in tracked
    assert "Not committed (secrets found): creds.md" in git(home, "log", "-1", "--format=%B")
    day_log = (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()
    assert "Not committed (secrets found): creds.md" in day_log
    transcript = Path(out["session"]).read_text()
    assert key not in transcript and "[REDACTED:OPENAI_API_KEY]" in transcript
    assert key not in git(home, "log", "-p", "--all")


def test_a_key_in_the_task_never_reaches_the_day_log_or_git(fake: FakeLLM, home: Path,
                                                             workdir: Path) -> None:
    key = os.environ["OPENAI_API_KEY"]
    turn(fake, home, workdir, f"use token {key} to note it", write(str(home / "n.md"), "x\n"))
    day_log = (home / f"memory/daily/{datetime.now():%Y-%m-%d}.md").read_text()
    assert key not in day_log and "[REDACTED:OPENAI_API_KEY]" in day_log
    assert key not in git(home, "log", "-p", "--all")


# --- git confined: the environment, the sandbox's command line, locks, names -------------

def test_git_env_is_built_from_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GIT_EXTERNAL_DIFF", "GIT_DIR", "GIT_INDEX_FILE", "GIT_CONFIG_PARAMETERS",
                "GIT_SSH_COMMAND", "GIT_ASKPASS", "EDITOR", "OPENAI_API_KEY"):
        monkeypatch.setenv(var, "/tmp/evil")
    env = gitexec.git_env(home)
    count = int(env["GIT_CONFIG_COUNT"])
    config = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(count)}
    assert {k: v for k, v in env.items() if not k.startswith("GIT_CONFIG_")} == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent", "LC_ALL": "C",
        "LANG": "C", "GIT_ATTR_NOSYSTEM": "1", "GIT_LITERAL_PATHSPECS": "1",
        "GIT_TERMINAL_PROMPT": "0", "GIT_PROTOCOL_FROM_USER": "0", "GIT_ALLOW_PROTOCOL": "",
        "GIT_PAGER": "cat", "PAGER": "cat", "GIT_AUTHOR_NAME": "agentd",
        "GIT_AUTHOR_EMAIL": "agentd@localhost", "GIT_COMMITTER_NAME": "agentd",
        "GIT_COMMITTER_EMAIL": "agentd@localhost", "GIT_DIR": f"{home}/.git",
        "GIT_WORK_TREE": str(home)}
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert {"core.hooksPath": "/dev/null", "core.fsmonitor": "false",
            "core.attributesFile": "/dev/null", "core.protectNTFS": "true",
            "core.protectHFS": "true", "submodule.recurse": "false",
            "diff.ignoreSubmodules": "all", "status.submoduleSummary": "false",
            "protocol.allow": "never", "commit.gpgSign": "false"}.items() <= config.items()
    assert "diff.external" not in config  # unset, and diff/show/log pass --no-ext-diff


def test_git_argv_binds_only_dot_git_writable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"GIT_DIR": f"{home}/.git"}
    argv = gitexec.git_argv(home, ["git", "status"], bwrap="/usr/bin/bwrap", seccomp_fd=7,
                            env=env)
    h, g = str(home), f"{home}/.git"
    size = ["--size", str(16 * 1024 * 1024)]
    assert argv == [
        "/usr/bin/bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
        "--setenv", "GIT_DIR", g,
        "--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev",
        *size, "--tmpfs", "/dev/shm", "--proc", "/proc",
        *size, "--tmpfs", "/home", *size, "--tmpfs", "/root", *size, "--tmpfs", "/run",
        *size, "--tmpfs", "/var/tmp", *size, "--tmpfs", "/tmp",
        "--ro-bind", h, h, "--bind", g, g, "--seccomp", "7", "--chdir", h, "--",
        "git", "status"]
    assert "--share-net" not in argv


@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=requires_bwrap), "off"])
def test_git_reads_no_config_but_the_homes_and_ours(home: Path, mode: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether sandboxed or not: a ~/.gitconfig, an XDG config and the environment's
    GIT_CONFIG_PARAMETERS are never read; our -c settings outrank the home's own."""
    if mode == "off":
        text = (home / "agentd.toml").read_text().replace("\n# [sandbox]\n",
                                                          '\n[sandbox]\nmode = "off"\n')
        (home / "agentd.toml").write_text(text)
    user_home = Path(os.environ["HOME"])
    (user_home / ".gitconfig").write_text("[core]\n\thooksPath = /evil\n[user]\n\tname = x\n")
    (user_home / ".config/git").mkdir(parents=True)
    (user_home / ".config/git/config").write_text("[diff]\n\texternal = /evil\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user_home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.fsmonitor'='/evil'")
    git(home, "config", "core.hooksPath", "/home-evil")
    assert (gitexec.bwrap_for(home) is None) == (mode == "off")
    out = gitexec.run(home, "config", "--list", "--show-scope").text()
    assert "/evil" not in out and "global" not in out and "system" not in out
    assert "command\tcore.hookspath=/dev/null" in out
    value = gitexec.run(home, "config", "core.hooksPath").text()
    assert value == "/dev/null\n"


def test_an_include_in_git_config_is_refused(home: Path) -> None:
    with (home / ".git/config").open("a") as f:
        f.write('[includeIf "gitdir:/"]\n\tpath = ../outbox/evil.cfg\n')
    with pytest.raises(AgentdError, match=r"includes other config files"):
        history.pending(home)


def test_a_live_gits_lock_is_left_alone(home: Path) -> None:
    lock = home / ".git" / "index.lock"
    lock.write_text("")
    old = time.time() - 600
    os.utime(lock, (old, old))
    live = subprocess.Popen(["git", "hash-object", "--stdin"], cwd=home,
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:  # seen running first (/proc shows it): the check below is about agentd, not a race
        wait_for(lambda: gitexec.git_running_in(home), 10, "the live git in /proc")
        assert live.poll() is None
        assert history.clear_stale_locks(home) == [] and lock.exists()
    finally:
        live.communicate(b"")
    (home / ".git/refs/heads/main.lock").write_text("")
    os.utime(home / ".git/refs/heads/main.lock", (old, old))
    assert history.clear_stale_locks(home) == ["index.lock", "refs/heads/main.lock"]
    assert not lock.exists()


def test_display_escapes_what_could_forge_a_line() -> None:
    assert history.display("a\nAgentd-Run: x") == "a\\nAgentd-Run: x"
    assert history.display("bad\udcff\x1b[31m") == "bad\\udcff\\x1b[31m"
    assert history.display("ünï cødé -x :(glob)**") == "ünï cødé -x :(glob)**"
    assert history.subject_line("\x1b]0;owned\x07 task") == "\\x1b]0;owned\\x07 task"


def test_held_back_files_stay_out_of_undo(home: Path) -> None:
    """Files held back stay untracked on disk; they neither block nor join an undo."""
    (home / "git~1").write_text("x\n")
    (home / "n.md").write_text("note\n")
    changes = history.pending(home)
    assert changes.files == ["n.md"] and changes.held == {"git~1": "a path git refuses"}
    history.commit(home, changes.files, "note", {"Agentd-Run": "r1"},
                   "\n".join(changes.notes()))
    assert "Not committed (a path git refuses): git~1" in git(home, "log", "-1")
    _sha, subject = history.undo(home, "r1", "undo-1")
    assert subject == "note" and not (home / "n.md").exists() and (home / "git~1").exists()
    assert git(home, "status", "--porcelain", "--untracked-files=all") == "?? git~1\n"


def test_paths_git_refuses_are_found_in_halves_within_a_budget(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names only git knows it refuses (NTFS spellings with a backslash) are found by adding
    halves; past the budget of git launches a failing group is held back whole."""
    bad = [f"d{i}\\.git" for i in range(20)]
    for name in [*bad, "good.md"]:
        (home / name).write_text("x\n")
    changes = history.pending(home)
    assert set(changes.files) == {*bad, "good.md"}  # the screen leaves these to git
    held: dict[str, str] = {}
    assert history.commit(home, changes.files, "t", {}, held=held)
    assert held == dict.fromkeys(bad, "a path git refuses")
    assert "good.md" in git(home, "ls-files")
    monkeypatch.setattr(history, "BISECT_RUNS", 2)
    (home / "good2.md").write_text("y\n")
    held = {}
    history.commit(home, [*bad, "good2.md"], "t2", {}, held=held)
    assert set(bad) <= set(held)


def test_undo_writes_the_worktree_itself(home: Path) -> None:
    """git only writes .git; undo brings files back through homefs: content, the executable
    bit and symlinks, owned by the sandbox uid when agentd is root (so bash can change
    them), and never over a file that is on disk but not committed."""
    (home / "tool.sh").write_text("#!/bin/sh\n")
    (home / "tool.sh").chmod(0o755)
    (home / "link").symlink_to("tool.sh")
    (home / "data.bin").write_bytes(b"\0small")
    history.commit(home, ["tool.sh", "link", "data.bin"], "add", {"Agentd-Run": "r1"})
    for name in ("tool.sh", "link", "data.bin"):
        (home / name).unlink()
    history.commit(home, ["tool.sh", "link", "data.bin"], "remove", {"Agentd-Run": "r2"})
    history.undo(home, "r2", "u1")
    assert (home / "tool.sh").read_text() == "#!/bin/sh\n"
    assert (home / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert os.readlink(home / "link") == "tool.sh"
    assert (home / "data.bin").read_bytes() == b"\0small"
    if os.geteuid() == 0:
        assert (home / "tool.sh").stat().st_uid == 65534
    assert git(home, "status", "--porcelain") == ""
    history.undo(home, "r1", "u2")  # the files go again
    assert not (home / "tool.sh").exists() and not (home / "link").is_symlink()
    text = (home / "agentd.toml").read_text().replace("\n# [git]\n", "\n[git]\nmax_file_mb = 1\n")
    (home / "agentd.toml").write_text(text)
    history.commit(home, ["agentd.toml"], "limits", {})
    (home / "data.bin").write_bytes(b"\0" * (2 << 20))  # held back: over the limit
    with pytest.raises(AgentdError, match=r"data.bin would be overwritten"):
        history.undo(home, "u2", "u3")
    assert (home / "data.bin").stat().st_size == 2 << 20
