"""Skill discovery: `skills/<name>/SKILL.md` in the Agent Skills format (YAML front matter
with `name` and `description`, then a markdown body, optional scripts beside it).

Only the index (name, description, path) goes into the prompt; the model reads a skill's
body with `read` when it needs it. Requirements may be declared as `requires: {bins: [..],
env: [..]}` or OpenClaw's `metadata: {openclaw: {requires: ...}}`; a skill whose
requirements are missing is listed as unavailable with the reason. A malformed skill is
skipped with a warning naming the file and line, never a crash; a name that breaks the
Agent Skills spec (lowercase a-z, 0-9 and single hyphens, at most 64 characters, the same
as its folder) is used but warned about, and of two folders with one `name` the first (by
folder) is used and the other named in a warning. A UTF-8 byte order mark is ignored.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentd.home import TEMPLATES
from agentd.homefs import Root
from agentd.oneline import escape, one_line

DESCRIPTION_LIMIT = 1024  # the Agent Skills spec's limit; prompt.py budgets the index
NAME_LIMIT = 64
SPEC_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
READ_LIMIT = 256 * 1024  # a SKILL.md is a page; only its front matter is parsed here
SKILLS = "skills"


@dataclass
class Skill:
    name: str
    description: str
    path: Path
    source: str = "home"  # "home", "bundled" (unchanged copy), "home, overrides bundled"
    missing: str = ""  # why it is unavailable; empty when usable
    env: tuple[str, ...] = ()  # the variables it requires (the warm path compares them)

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


def _listed(meta: dict[str, Any], key: str) -> list[str]:
    """`requires.<key>` (bins, env) as names: a list, or one name. Anything else is a
    ValueError, so the skill is skipped with a warning: the file is agent-written, and a
    `env: 5` must not break every prompt that lists skills."""
    value = _requirements(meta).get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ValueError(f"front matter: requires.{key} must be a list of names")


def _missing(meta: dict[str, Any]) -> str:
    bins = [b for b in _listed(meta, "bins") if not shutil.which(b)]
    env = [v for v in _listed(meta, "env") if not os.environ.get(v)]
    parts = ([f"missing program {', '.join(bins)}"] if bins else []) + (
        [f"missing variable {', '.join(env)}"] if env else [])
    return "; ".join(parts)


def load_skill(text: str, path: Path) -> Skill:
    """One skill from its SKILL.md's text; raises ValueError (with a line) when malformed.
    The name and description are one-lined with controls escaped: they reach every prompt."""
    meta = parse_front_matter(text.removeprefix("\ufeff"))
    if not meta:
        raise ValueError("line 1: no front matter (a '---' block with name and description)")
    desc = one_line(str(meta.get("description") or ""), DESCRIPTION_LIMIT)
    if not desc:
        raise ValueError("line 2: front matter has no description")
    name = one_line(str(meta.get("name") or path.parent.name), NAME_LIMIT)
    return Skill(name, desc, path, missing=_missing(meta),
                 env=tuple(_listed(meta, "env")))


def name_problem(skill: Skill) -> str:
    """Why a skill's name breaks the Agent Skills spec, or ""."""
    folder = skill.path.parent.name
    if len(skill.name) > NAME_LIMIT or not SPEC_NAME.fullmatch(skill.name):
        return (f"name {skill.name!r} breaks the Agent Skills spec (lowercase a-z, 0-9 and "
                "single hyphens, at most 64 characters)")
    if skill.name != folder:
        return f"name {skill.name!r} differs from its folder {folder!r} (the spec wants both equal)"
    return ""


def bundled_skills_dir() -> Path:
    return TEMPLATES / "skills"


def _read(root: Root, name: str) -> str:
    """A skill folder's SKILL.md, read through homefs: the folder and the file are the
    agent's, so a symlink (to /proc/self/environ, say) or a FIFO is refused, never read."""
    try:
        return root.read_text(f"{SKILLS}/{name}/SKILL.md", limit=READ_LIMIT)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def discover(home: Path, warn: list[str] | None = None) -> list[Skill]:
    """Skills in `<home>/skills`, sorted by name; problems are appended to `warn`.

    A symlinked skill folder or SKILL.md is skipped with a warning naming it: agentd reads
    only the home's own regular files. `source` says whether a skill is an unchanged copy of
    one bundled with agentd (`agentd init` copies them) or the home's own.
    """
    found: dict[str, Skill] = {}
    bundled = bundled_skills_dir()
    with Root(home) as root:
        try:
            entries = root.listdir(SKILLS) if root.exists(SKILLS) else []
        except OSError as e:
            entries = []
            _warn(warn, f"skills not read: {e}")
        for name, kind in sorted(entries):
            rel = f"{SKILLS}/{name}/SKILL.md"
            if kind == "link" and not name.startswith("."):
                _warn(warn, f"skipped skill {SKILLS}/{name}: it is a symlink, which agentd "
                      "does not follow; make it a real folder")
                continue
            if kind != "dir" or name.startswith("."):
                continue
            try:
                text = _read(root, name)
                skill = load_skill(text, home / rel)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                _warn(warn, f"skipped skill {rel}: {e}")
                continue
            twin = bundled / name / "SKILL.md"
            if twin.is_file():
                same = twin.read_bytes() == text.encode()
                skill.source = "bundled" if same else "home, overrides bundled"
            if problem := name_problem(skill):
                _warn(warn, f"skill {rel}: {problem}")
            if skill.name in found:
                first = found[skill.name].path.parent.name
                _warn(warn, f"skipped skill {rel}: {SKILLS}/{first}/SKILL.md has the same "
                      f"name {skill.name!r}; rename one")
                continue
            found[skill.name] = skill
    return sorted(found.values(), key=lambda s: s.name)


def _warn(warn: list[str] | None, message: str) -> None:
    """A warning, controls escaped: folder names are the agent's, and warnings reach a
    terminal and the logs as single lines."""
    if warn is not None:
        warn.append(escape(message))
