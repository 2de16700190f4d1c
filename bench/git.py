"""What confined git costs a turn: prints numbers, asserts nothing. `python bench/git.py [N]`.

Medians over N runs (default 30) after a warm-up, in a fresh home, in-process:

- a plain `git status` on the home (the floor: the git binary alone, no agentd);
- the turn's start when nothing changed (`commit_manual_edits`: agentd's info files, the
  stale-lock check, one `git status`, the screen);
- the turn's end after it changed one file (`finish_turn`: status, the day-log entry, and
  one commit: stage + commit in a single git launch);

each with git in bubblewrap (the default) and with `[sandbox] mode = "off"` (the confined
environment only). Before git was confined (GitPython, unsandboxed) these were 1.2 ms and
9.7 ms on the same kind of 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from timing import median_ms  # noqa: E402

from agentd import gitexec  # noqa: E402
from agentd.loop import LoopResult  # noqa: E402
from agentd.newhome import init_home  # noqa: E402
from agentd.tools.sandbox import find_bwrap  # noqa: E402
from agentd.turn import TurnReport, TurnRequest, commit_manual_edits, finish_turn  # noqa: E402


def set_mode(home: Path, mode: str) -> None:
    """`[sandbox] mode` in the home's agentd.toml, committed like an owner's edit."""
    path = home / "agentd.toml"
    text = path.read_text().replace('\nmode = "off"\n', "\n")
    if mode == "off":
        text = text.replace("\n[sandbox]\n", '\n[sandbox]\nmode = "off"\n', 1)
    path.write_text(text)
    commit_manual_edits(home, None)


def measure(home: Path, n: int) -> tuple[float, float]:
    """(start of a turn with nothing changed, end of a turn that changed one file), ms."""
    start = median_ms(lambda: commit_manual_edits(home, None), n)
    counter = iter(range(1_000_000))

    def turn_end() -> None:
        i = next(counter)
        (home / "notes.md").write_text(f"turn {i}\n")
        report = TurnReport(f"r{i}", "openai:x", LoopResult("ok", "done", 1), 0.1, 0.0)
        finish_turn(home, TurnRequest(f"turn {i}", home), report, None)
        assert report.commit

    return start, median_ms(turn_end, n)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    scratch = Path(tempfile.mkdtemp(prefix="agentd-bench-git-"))
    home = scratch / "home"
    init_home(home)
    env = gitexec.git_env(home)
    plain = median_ms(lambda: subprocess.run(["git", "status", "--porcelain"], env=env,
                                             cwd=home, capture_output=True, check=True), n)
    rows = [("plain `git status` (no agentd, no sandbox)", plain)]
    modes = ["off"] + (["bwrap"] if find_bwrap() and os.environ.get("BENCH_NO_BWRAP") is None
                       else [])
    for mode in modes:
        set_mode(home, mode)
        start, end = measure(home, n)
        where = "git in bubblewrap" if mode == "bwrap" else 'mode = "off", confined env'
        rows += [(f"turn start, nothing changed ({where})", start),
                 (f"turn end, one file committed ({where})", end)]
    shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:7.1f} ms")


if __name__ == "__main__":
    main()
