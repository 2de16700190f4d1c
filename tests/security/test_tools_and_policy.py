"""§9 attacks 12-14 (security.md), the profiles, and redaction end to end: the file tools
can't be steered outside the writable set, the model can't choose where bash runs, a
missing backend refuses, untrusted turns can't touch skills/cron/identity, and a secret in
a file never reaches the model, the transcript or the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import pytest
from attack import requires_bwrap, run_attack
from fakellm import FakeLLM

from agentd.llm.types import ToolCall
from agentd.tools import ToolContext, ToolResult
from agentd.tools import sandbox as sb
from agentd.tools.dispatch import SPECS, run_tool

KEY = "sk-test-KEYVALUE"  # the fake fixture's OPENAI_API_KEY


@requires_bwrap
def test_12_file_tool_traversal(fake: FakeLLM, home: Path, workdir: Path,
                                tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("original\n")
    os.link(victim, workdir / "hard")  # a hard link planted from outside (bash can't: EXDEV)
    a = run_attack(
        fake, home, workdir,
        {"name": "read", "arguments": {"path": "../../../../../../etc/passwd"}},
        {"name": "read", "arguments": {"path": "/etc/shadow"}},
        "ln -s /etc/passwd pw; ln -s ../victim.txt up; echo planted",
        {"name": "read", "arguments": {"path": "pw"}},
        {"name": "write", "arguments": {"path": "up", "content": "pwned"}},
        {"name": "edit", "arguments": {"path": "hard", "old_text": "original",
                                       "new_text": "pwned"}},
        {"name": "write", "arguments": {"path": "a\u0000b", "content": "x"}},
        {"name": "read", "arguments": {"path": "~/.ssh/id_rsa"}})
    # The hard-linked name is edited by rename: the name gets the new bytes, the victim
    # (the other name, outside) keeps its own.
    assert a.errors == [True, True, False, True, True, False, True, True]
    assert "outside the home" in a.results[0] and "outside the home" in a.results[1]
    assert "pw is a symlink to /etc/passwd" in a.results[3]
    assert "leads outside" in a.results[4] and a.results[5].startswith("edited")
    assert "NUL byte" in a.results[6] and "~ is not expanded" in a.results[7]
    assert "root:" not in a.seen and victim.read_text() == "original\n"
    assert (workdir / "hard").read_text() == "pwned\n" and os.stat(victim).st_nlink == 1


def test_13_the_model_cannot_choose_the_workdir(fake: FakeLLM, home: Path,
                                                workdir: Path) -> None:
    bash = next(s for s in SPECS if s.name == "bash")
    assert set(bash.parameters["properties"]) == {"command", "timeout"}
    a = run_attack(fake, home, workdir,
                   {"name": "bash", "arguments": {"command": "pwd", "cwd": "/"}},
                   {"name": "bash", "arguments": {"command": "pwd", "workdir": "/etc"}})
    assert a.errors == [True, True]
    assert "bash has no argument 'cwd'" in a.results[0]
    assert "bash has no argument 'workdir'" in a.results[1]


def test_14_missing_backend_refuses(fake: FakeLLM, home: Path, workdir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sb, "find_bwrap", lambda: None)
    a = run_attack(fake, home, workdir, "touch ran")
    assert a.errors == [True] and "bash refused to run" in a.results[0]
    assert "apt-get install bubblewrap" in a.results[0]
    assert not (workdir / "ran").exists()


def _ctx(home: Path, workdir: Path, profile: str) -> ToolContext:
    """The runtime gives an untrusted turn its scratch folder; here, one in the test's tmp."""
    scratch = workdir.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    return ToolContext(home=home, workdir=workdir, profile=profile, scratch=scratch)


def test_a_missing_scratch_is_created_private() -> None:
    ctx = ToolContext(home=Path("/nonexistent"), workdir=Path("/nonexistent"),
                      profile="untrusted")
    with contextlib.suppress(FileNotFoundError):  # the outbox of a home that isn't there
        sb.ensure_scratch(ctx)
    assert ctx.scratch is not None and ctx.scratch.is_dir()
    try:
        assert ctx.scratch.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(ctx.scratch)


def _call(ctx: ToolContext, name: str, **args: str) -> ToolResult:
    return asyncio.run(run_tool(ctx, ToolCall("x", name, args)))


@requires_bwrap
def test_untrusted_profile_writes_only_outbox_and_scratch(home: Path, workdir: Path) -> None:
    ctx = _ctx(home, workdir, "untrusted")
    soul = (home / "memory" / "SOUL.md").read_text()
    r = _call(ctx, "bash", command=(
        f"cd {home}; echo evil >> memory/SOUL.md; mkdir -p skills/evil cron; "
        "echo '* * * * *' > cron/evil.md; touch skills/x; touch {w}/w; "
        "echo answer > outbox/reply.md && echo OUTBOX-OK; "
        "echo tmp > ~/scratch.txt && echo SCRATCH-OK; pwd; echo END").format(w=workdir))
    assert r.content.count("Read-only file system") >= 4, r.content
    assert "OUTBOX-OK" in r.content and "SCRATCH-OK" in r.content and "END" in r.content
    assert ctx.scratch is not None and (ctx.scratch / "scratch.txt").read_text() == "tmp\n"
    assert (home / "outbox" / "reply.md").read_text() == "answer\n"
    assert (home / "memory" / "SOUL.md").read_text() == soul
    assert not (home / "skills" / "evil").exists() and not (home / "cron" / "evil.md").exists()
    assert not (workdir / "w").exists()
    for path in (f"{home}/skills/new/SKILL.md", f"{home}/cron/job.md",
                 f"{home}/memory/SOUL.md", f"{workdir}/notes.md"):
        w = _call(ctx, "write", path=path, content="x")
        assert w.is_error and "read-only in this turn (profile untrusted)" in w.content, path
    e = _call(ctx, "edit", path=f"{home}/memory/SOUL.md", old_text=soul[:20], new_text="x")
    assert e.is_error and (home / "memory" / "SOUL.md").read_text() == soul
    ok = _call(ctx, "write", path=f"{home}/outbox/answer.md", content="fine")
    assert not ok.is_error and (home / "outbox" / "answer.md").read_text() == "fine"


@requires_bwrap
def test_untrusted_outbox_symlink_is_refused(home: Path, workdir: Path, tmp_path: Path) -> None:
    shutil.rmtree(home / "outbox", ignore_errors=True)
    (home / "outbox").symlink_to(tmp_path)
    r = _call(_ctx(home, workdir, "untrusted"), "bash", command="touch outbox/x")
    assert r.is_error and "must be a real folder" in r.content
    assert not (tmp_path / "x").exists()


@requires_bwrap
def test_readonly_profile_writes_nothing(home: Path, workdir: Path) -> None:
    ctx = _ctx(home, workdir, "readonly")
    r = _call(ctx, "bash", command=f"touch {home}/outbox/x {workdir}/y; echo t > /tmp/ok && "
                                   "cat /tmp/ok; ls / >/dev/null && echo READ-OK")
    assert r.content.count("Read-only file system") == 2 and "t\nREAD-OK" in r.content
    assert not (home / "outbox" / "x").exists() and not (workdir / "y").exists()
    w = _call(ctx, "write", path=f"{home}/outbox/x", content="x")
    assert w.is_error and "nowhere but bash's private /tmp" in w.content
    assert not _call(ctx, "read", path=f"{home}/memory/SOUL.md").is_error


def test_unknown_profile_refuses(home: Path, workdir: Path) -> None:
    ctx = _ctx(home, workdir, "yolo")
    assert "unknown sandbox profile 'yolo'" in _call(ctx, "bash", command="true").content
    assert "unknown sandbox profile" in _call(ctx, "write", path="x", content="x").content


@requires_bwrap
def test_secrets_in_files_are_redacted_everywhere(fake: FakeLLM, home: Path,
                                                  workdir: Path) -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    (workdir / ".env").write_text(f"OPENAI_API_KEY={KEY}\nGH=ghp_{'a1B2' * 9}\n{pem}\n")
    a = run_attack(fake, home, workdir, "cat .env",
                   {"name": "read", "arguments": {"path": ".env"}},
                   "grep -o 'sk-[A-Za-z-]*' .env | rev | rev")
    for text in a.results:
        assert KEY not in text and "[REDACTED:OPENAI_API_KEY]" in text
    assert "[REDACTED:github-token]" in a.results[0] and "[REDACTED:private-key]" in a.results[1]
    assert all(KEY.encode() not in q.raw for q in fake.requests)  # request bodies
    assert "MIIEowIBAAKCAQEA" not in a.session and KEY not in a.session
    assert KEY not in a.cli.stdout and KEY not in a.cli.stderr
