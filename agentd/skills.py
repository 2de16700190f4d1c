"""Skill discovery: `skills/<name>/SKILL.md` in the Agent Skills format (YAML front matter
with `name` and `description`, then a markdown body, optional scripts beside it).

Only the index (name, description, path) goes into the prompt; the model reads a skill's
body with `read` when it needs it. Requirements may be declared as `requires: {bins: [..],
env: [..]}` or OpenClaw's `metadata: {openclaw: {requires: ...}}`; a skill whose
requirements are missing is listed as unavailable with the reason. A malformed skill is
skipped with a warning naming the file and line, never a crash.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DESCRIPTION_LIMIT = 200


@dataclass
class Skill:
    name: str
    description: str
    path: Path
    source: str = "home"  # "home", "bundled" (unchanged copy), "home, overrides bundled"
    missing: str = ""  # why it is unavailable; empty when usable

    @property
    def available(self) -> bool:
        return not self.missing


def parse_front_matter(text: str) -> dict[str, Any]:
    """The YAML mapping between a leading `---` line and the next `---` line ({} if none).

    Raises ValueError with the file line of the problem.
    """
    import yaml

    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        raise ValueError("line 1: front matter is not closed by a '---' line")
    try:
        data = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{line}front matter is not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ValueError("line 2: front matter is not a mapping of key: value")
    return data


def _requirements(meta: dict[str, Any]) -> dict[str, Any]:
    req = meta.get("requires")
    if req is None and isinstance(meta.get("metadata"), dict):
        oc = meta["metadata"].get("openclaw")
        req = oc.get("requires") if isinstance(oc, dict) else None
    return req if isinstance(req, dict) else {}


def _missing(meta: dict[str, Any]) -> str:
    req = _requirements(meta)
    bins = [str(b) for b in req.get("bins") or [] if not shutil.which(str(b))]
    env = [str(v) for v in req.get("env") or [] if not os.environ.get(str(v))]
    parts = ([f"missing program {', '.join(bins)}"] if bins else []) + (
        [f"missing variable {', '.join(env)}"] if env else [])
    return "; ".join(parts)


def load_skill(skill_md: Path) -> Skill:
    """One skill from its SKILL.md; raises ValueError (with a line) when malformed."""
    try:
        text = skill_md.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    meta = parse_front_matter(text)
    if not meta:
        raise ValueError("line 1: no front matter (a '---' block with name and description)")
    desc = " ".join(str(meta.get("description") or "").split())
    if not desc:
        raise ValueError("line 2: front matter has no description")
    if len(desc) > DESCRIPTION_LIMIT:
        desc = desc[: DESCRIPTION_LIMIT - 1] + "…"
    return Skill(str(meta.get("name") or skill_md.parent.name), desc, skill_md,
                 missing=_missing(meta))


def bundled_skills_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "skills"


def discover(home: Path, warn: list[str] | None = None) -> list[Skill]:
    """Skills in `<home>/skills`, sorted by name; problems are appended to `warn`.

    `source` says whether a skill is an unchanged copy of one bundled with agentd
    (`agentd init` copies them) or the home's own.
    """
    found: dict[str, Skill] = {}
    bundled = bundled_skills_dir()
    for skill_md in sorted((home / "skills").glob("*/SKILL.md")):
        try:
            skill = load_skill(skill_md)
        except (OSError, ValueError) as e:
            if warn is not None:
                warn.append(f"skipped skill {skill_md}: {e}")
            continue
        twin = bundled / skill_md.parent.name / "SKILL.md"
        if twin.is_file():
            same = twin.read_bytes() == skill_md.read_bytes()
            skill.source = "bundled" if same else "home, overrides bundled"
        found[skill.name] = skill
    return sorted(found.values(), key=lambda s: s.name)
