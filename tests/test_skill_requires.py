"""A skill's `requires` block is agent-written front matter: one of the wrong shape
(`env: 5`) skips that skill with a one-line warning instead of breaking every prompt and
`agentd skills`; a single name (`env: FOO`) is that one variable, not its letters."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import agentd
from fakellm import FakeLLM


def _skill(home: Path, name: str, requires: str) -> None:
    folder = home / "skills" / name
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: does {name}\n"
                                     f"requires:\n{requires}---\nbody\n")


def test_a_malformed_requires_block_skips_only_that_skill(home: Path, workdir: Path,
                                                          fake: FakeLLM) -> None:
    _skill(home, "numbers", "  env: 5\n")
    _skill(home, "bins-map", "  bins: {a: b}\n")
    _skill(home, "one-var", "  env: AGENTD_TEST_UNSET_VAR\n")
    r = agentd("skills", "--home", str(home))
    assert r.exit_code == 0, r.stderr
    warnings = r.stderr.splitlines()
    assert ("warning: skipped skill skills/numbers/SKILL.md: front matter: requires.env "
            "must be a list of names") in warnings
    assert ("warning: skipped skill skills/bins-map/SKILL.md: front matter: requires.bins "
            "must be a list of names") in warnings
    assert "missing variable AGENTD_TEST_UNSET_VAR" in " ".join(r.stdout.split())
    fake.push({"text": "fine"})
    r = agentd("run", "--json", "--home", str(home), "--workdir", str(workdir),
               "--model", "openai:test", "go")
    assert r.exit_code == 0 and json.loads(r.stdout)["text"] == "fine", r.stderr
    system = json.dumps(fake.requests[-1].body)
    assert "does one-var" in system and "does numbers" not in system
