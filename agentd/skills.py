"""Skill discovery: `skills/<name>/SKILL.md` with YAML front matter (name, description).

Only the index (name, description, path) goes into the prompt; the model reads a skill's
body with `read` when it needs it. A malformed skill is skipped with a warning, never a
crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Skill:
    name: str
    description: str
    path: Path


def parse_front_matter(text: str) -> dict[str, object]:
    """The YAML mapping between a leading `---` line and the next `---` line ({} if none)."""
    import yaml

    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        raise ValueError("front matter is not closed by a '---' line")
    data = yaml.safe_load(text[3:end]) or {}
    if not isinstance(data, dict):
        raise ValueError("front matter is not a mapping of key: value")
    return data


def discover(home: Path, warn: list[str] | None = None) -> list[Skill]:
    """Skills in `<home>/skills`, sorted by name; problems are appended to `warn`."""
    found: list[Skill] = []
    for skill_md in sorted((home / "skills").glob("*/SKILL.md")):
        try:
            meta = parse_front_matter(skill_md.read_text(encoding="utf-8"))
            name = str(meta.get("name") or skill_md.parent.name)
            desc = " ".join(str(meta.get("description") or "").split())
            if not desc:
                raise ValueError("front matter has no description")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            if warn is not None:
                warn.append(f"skipped skill {skill_md}: {e}")
            continue
        except Exception as e:  # yaml.YAMLError without importing yaml up front
            if warn is not None:
                warn.append(f"skipped skill {skill_md}: {str(e).splitlines()[0]}")
            continue
        found.append(Skill(name, desc, skill_md))
    return found
