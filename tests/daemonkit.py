"""Helpers for the daemon tests: a real `agentd daemon` subprocess against the fake LLM,
and waits that poll for an outcome with a deadline (never a fixed sleep)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

AGENTD = [sys.executable, "-m", "agentd"]


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def configure(home: Path, top: dict[str, str] | None = None,
              **tables: dict[str, Any]) -> None:
    """Set keys in agentd.toml: top-level ones first, the rest under their table (appended
    at the end unless a live `[table]` line exists: the default file's are commented)."""
    text = (home / "agentd.toml").read_text()
    lines = "".join(f"{k} = {_toml(v)}\n" for k, v in (top or {}).items())
    text = lines + text
    for table, values in tables.items():
        body = "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
        header = f"\n[{table}]\n"
        text = text.replace(header, header + body, 1) if header in text else (
            text + header + body)
    (home / "agentd.toml").write_text(text)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_home(home: Path, **heartbeat: Any) -> Path:
    """A home whose model is the fake server's, with a slow heartbeat unless told."""
    configure(home, {"model": "openai:test"}, heartbeat={"every": "1h", **heartbeat})
    return home


def git(home: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(home), *args], capture_output=True, text=True,
                          check=True).stdout


class Daemon:
    """`agentd daemon --home H` as a subprocess; its stderr goes to a file we can poll."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None):
        self.home = home
        self.log_path = home.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([*AGENTD, "daemon", "--home", str(home), *args],
                                     stdout=subprocess.DEVNULL, stderr=self._log,
                                     env=env or dict(os.environ))

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log))

    def wait_log(self, pattern: str, timeout: float = 10.0, n: int = 1) -> str:
        """Wait until `pattern` (a regex) has appeared `n` times in the log."""
        def seen() -> bool:
            if self.proc.poll() is not None and self.count(pattern) < n:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before "
                                     f"{pattern!r}:\n{self.log}")
            return self.count(pattern) >= n
        try:
            wait_for(seen, timeout, repr(pattern))
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- daemon log ---\n{self.log}") from None
        return self.log

    def ready(self) -> Daemon:
        self.wait_log(r"daemon: started")
        return self

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def model_requests(fake: Any) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST"]


def last_user_text(request: Any) -> str:
    """The last user message of an OpenAI-protocol request body."""
    msgs = [m for m in request.body["messages"] if m["role"] == "user"]
    content = msgs[-1]["content"]
    return content if isinstance(content, str) else " ".join(
        c.get("text", "") for c in content)


def uncommitted(home: Path) -> list[str]:
    """`git status` of the home, minus the day log (a turn that changed nothing else leaves
    its day-log entry for the next commit, by design of agentd.turn)."""
    lines = git(home, "status", "--porcelain", "--untracked-files=all").splitlines()
    return [x for x in lines if "memory/daily/" not in x]


def commit_settings(home: Path) -> None:
    """Commit the test's agentd.toml changes, as a user would have before starting."""
    git(home, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "test settings")


def request_threads() -> set[object]:
    """The fake servers' request-handler threads alive now (any instance)."""
    import threading

    return {t for t in threading.enumerate() if "process_request" in t.name}


def settle_fake(before: set[object], timeout: float = 10.0) -> None:
    """Wait until the request threads started since `before` have ended: a reply scripted
    with a delay keeps its handler thread (and socket) alive after the daemon that asked is
    gone, and a later test counting this process's file descriptors would see it close."""
    wait_for(lambda: not (request_threads() - before), timeout,
             "the fake server's delayed replies")
