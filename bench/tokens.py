"""Token benchmark: what agentd sends to a model. Prints numbers, asserts nothing.

`python bench/tokens.py` (or `make bench-tokens`):
- the fixed prompt overhead: system prompt + tool schemas of a fresh home, as sent in the
  first request of a trivial task (characters / 4; also o200k tokens when tiktoken and its
  encoding are available offline);
- a fixed suite of scripted multi-step tasks, each run as a real turn (real tools, real
  files) against the fake LLM server with its honest prompt-cache model (cache=True), on
  both wire protocols: prompt tokens sent over the whole task, output tokens, and the
  share of prompt tokens read from the cache. Anthropic reads at the explicit
  breakpoints agentd sets; OpenAI at the longest common prefix (>= 1,024 tokens);
- the system prompt with 0, 20 and 200 skills (descriptions 204 to 1,024 characters, as
  in public skill folders): its size with the budgeted index, and what listing every
  skill would cost. `python bench/tokens.py skills` prints only this part.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fakellm import FakeLLM  # noqa: E402

from agentd.config import load_settings  # noqa: E402
from agentd.loop import Events  # noqa: E402
from agentd.newhome import init_home  # noqa: E402
from agentd.prompt import build_system_prompt  # noqa: E402
from agentd.turn import TurnRequest, run_turn  # noqa: E402

MODELS = {"anthropic": "anthropic:claude-sonnet-5-5", "openai": "openai:gpt-5.4-mini"}
NOTES = "\n".join(f"- note {i}: the deploy checklist item number {i} says to run the tests"
                  for i in range(60))


def bash(command: str) -> dict[str, Any]:
    return {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]}


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def suite(wd: Path) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(name, task, scripted replies): a fixed set of tasks, from trivial to ten steps."""
    notes = str(wd / "notes.md")
    return [
        ("answer, no tools (1 step)", "What is 2 + 2?", [{"text": "4"}]),
        ("one shell command (2 steps)", "Create hello.txt containing hi",
         [bash("echo hi > hello.txt"), {"text": "Created hello.txt."}]),
        ("read, edit, check (4 steps)", "In notes.md, change item 7 to say 'run the linter'",
         [call("read", path=notes),
          call("edit", path=notes, old_text="number 7 says to run the tests",
               new_text="number 7 says to run the linter"),
          bash("grep -n 'item number 7' notes.md"),
          {"text": "Item 7 now says to run the linter."}]),
        ("investigate (10 steps)", "Find out what is in this folder and summarise it",
         [bash("ls -la"), call("read", path=notes), bash("wc -l notes.md"),
          bash("grep -c tests notes.md"), bash("head -3 notes.md"), bash("tail -3 notes.md"),
          bash("sort notes.md | uniq | wc -l"), bash("du -sh ."), bash("date +%Y"),
          {"text": "A notes file with 60 checklist items, all about running the tests."}]),
    ]


def o200k(text: str) -> int | None:
    """o200k tokens of `text`, when a tokenizer is installed: bpe-openai (which ships the
    encoding, so it works offline) or tiktoken (which must download it). Neither is a
    dependency of agentd; install one beside it to get this figure."""
    for module in ("bpe_openai", "tiktoken"):
        try:
            enc = __import__(module).get_encoding("o200k_base")
            return len(enc.encode(text))
        except Exception:
            continue
    return None


async def run_task(home: Path, wd: Path, protocol: str, task: str,
                   script: list[dict[str, Any]]) -> dict[str, Any]:
    with FakeLLM(*script, cache=True) as fake:
        os.environ["ANTHROPIC_BASE_URL"], os.environ["OPENAI_BASE_URL"] = (
            fake.anthropic_url, fake.openai_url)
        settings = load_settings(home)
        settings.sandbox.mode = "off"  # fixed, harmless commands; no bubblewrap needed
        req = TurnRequest(task, wd, model=MODELS[protocol])
        report = await run_turn(home, settings, req, Events())
        assert report.ok, report.result.error
        errors = [c for c in report.tool_calls if c["is_error"]]
        assert not errors, errors
        bodies = [q.body for q in fake.requests if q.method == "POST"]
    u = report.result.usage
    prompt = u.input + u.cache_read + u.cache_write
    return {"steps": report.result.steps, "prompt": prompt, "output": u.output,
            "cache_read": u.cache_read, "cache_write": u.cache_write,
            "hit": u.cache_read / prompt if prompt else 0.0, "cost": report.cost,
            "first": bodies[0]}


def fixed_overhead(first: dict[str, Any]) -> tuple[int, int | None, int | None]:
    """chars/4 and o200k of system + tools, and o200k of the whole first request."""
    system = first["messages"][0]["content"]
    tools = json.dumps(first["tools"])
    whole = tools + "".join(m["content"] for m in first["messages"])
    return (len(system) + len(tools)) // 4, o200k(system + tools), o200k(whole)


def add_skills(home: Path, n: int) -> None:
    """n skill folders with descriptions of 204 to 1,024 characters (the real spread)."""
    words = ("Use this skill to prepare, check and file the monthly supplier statements; "
             "do not use it for one-off invoices or payroll. ") * 12
    for i in range(n):
        d = home / "skills" / f"skill-{i:03d}"
        d.mkdir(parents=True)
        size = 204 + (i * 97) % 821
        (d / "SKILL.md").write_text(f"---\nname: skill-{i:03d}\ndescription: {words[:size]}"
                                    "\n---\nBody.\n")


def skills_scaling(scratch: Path) -> None:
    """The system prompt's size against the number of skills (no model call)."""
    print("system prompt by number of skills (bundled skills removed; chars, ~tokens = /4):")
    for n in (0, 20, 200):
        home = scratch / f"skills-{n}"
        init_home(home)
        shutil.rmtree(home / "skills")
        add_skills(home, n)
        task = "File the monthly supplier statements for skill-007"
        budget = load_settings(home).skills.index_chars
        size = len(build_system_prompt(home, home, task=task))
        unbudgeted = len(build_system_prompt(home, home, task=task, index_chars=10**9))
        print(f"  {n:>3} skills: {size:>6,} chars (~{size // 4:,} tokens); listing every "
              f"skill: {unbudgeted:,} chars; index budget {budget:,}")


def main() -> None:
    if sys.argv[1:] == ["skills"]:
        skills_scaling(Path(tempfile.mkdtemp(prefix="agentd-bench-tokens-")))
        return
    scratch = Path(tempfile.mkdtemp(prefix="agentd-bench-tokens-"))
    os.environ.update({"HOME": str(scratch), "ANTHROPIC_API_KEY": "bench",
                       "OPENAI_API_KEY": "bench"})
    rows: list[tuple[str, str, dict[str, Any]]] = []
    overhead: tuple[int, int | None, int | None] | None = None
    for protocol in ("anthropic", "openai"):
        home = scratch / protocol / "home"
        init_home(home)
        for i, (name, task, script) in enumerate(suite(scratch)):
            wd = scratch / protocol / f"w{i}"
            wd.mkdir(parents=True)
            (wd / "notes.md").write_text(NOTES + "\n")
            script = json.loads(json.dumps(script).replace(str(scratch / "notes.md"),
                                                           str(wd / "notes.md")))
            r = asyncio.run(run_task(home, wd, protocol, task, script))
            if protocol == "openai" and overhead is None:
                overhead = fixed_overhead(r["first"])
            rows.append((protocol, name, r))
    assert overhead is not None
    skills_scaling(scratch)
    chars4, tik, whole = overhead
    print(f"fixed prompt overhead (system + tools, fresh home): {chars4:,} tokens (chars/4)"
          + (f", {tik:,} o200k tokens; the whole first request of the trivial task "
             f"{whole:,} o200k" if tik is not None and whole is not None
             else ", o200k: no tokenizer installed (pip install bpe-openai)")
          + "; target <= 1,500")
    head = ("protocol", "task", "steps", "prompt sent", "cache read", "cache write", "output",
            "hit", "cost (USD)")
    print(f"{head[0]:<10} {head[1]:<28} {head[2]:>5} {head[3]:>11} {head[4]:>10} "
          f"{head[5]:>11} {head[6]:>6} {head[7]:>5} {head[8]:>10}")
    totals: dict[str, list[int]] = {}
    for protocol, name, r in rows:
        t = totals.setdefault(protocol, [0, 0])
        t[0] += r["prompt"]
        t[1] += r["cache_read"]
        print(f"{protocol:<10} {name:<28} {r['steps']:>5} {r['prompt']:>11,} "
              f"{r['cache_read']:>10,} {r['cache_write']:>11,} {r['output']:>6,} "
              f"{r['hit']:>5.0%} {r['cost']:>10.5f}")
    for protocol, (prompt, read) in totals.items():
        print(f"{protocol}: whole suite {prompt:,} prompt tokens, cache-hit share "
              f"{read / prompt:.0%}")


if __name__ == "__main__":
    main()
