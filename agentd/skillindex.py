"""The skills index of the system prompt, held to a character budget whatever the number of
skills.

When every skill fits, the index lists them all by name and is the same for every task, so
prompt.py keeps it with the stable part of the prompt (prompt caching). When they do not
fit, it holds the skills most relevant to the turn's task, ranked by BM25 over name and
description (lexical, no dependency), then a line saying how many more exist and how to
list them; that version varies by task, so prompt.py puts it after the stable part.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

from agentd.oneline import escape
from agentd.skills import Skill

HEADER = "# Skills (read the SKILL.md before using one)"
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def bm25(query: str, docs: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each doc for the query's words."""
    bags = [Counter(words(d)) for d in docs]
    if not bags:
        return []
    avg = sum(sum(bag.values()) for bag in bags) / len(bags) or 1.0
    df = Counter(w for bag in bags for w in bag)
    n = len(bags)
    terms = set(words(query))
    scores = []
    for bag in bags:
        size, score = sum(bag.values()), 0.0
        for t in terms & bag.keys():
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            tf = bag[t]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * size / avg))
        scores.append(score)
    return scores


def line(skill: Skill, home: Path) -> str:
    rel = escape(str(skill.path.relative_to(home)))
    return (f"- {skill.name}: {skill.description} ({rel})"
            + ("" if skill.available else f" [unavailable: {skill.missing}]"))


def build_index(skills: list[Skill], home: Path, task: str, budget: int) -> tuple[str, bool]:
    """(the index section, whether it was ranked for `task`). All skills by name when they
    fit in `budget` characters; else the most relevant that fit, and a line for the rest."""
    lines = [line(s, home) for s in skills]
    if len(HEADER) + sum(len(x) + 1 for x in lines) <= budget:
        return "\n".join([HEADER, *lines]), False
    scores = bm25(task, [f"{s.name.replace('-', ' ')} {s.description}" for s in skills])
    order = sorted(range(len(skills)), key=lambda i: (-scores[i], skills[i].name))
    room = budget - len(HEADER) - len(_more(len(skills), len(skills))) - 2
    shown: list[str] = []
    for i in order:
        if len(lines[i]) + 1 <= room:
            shown.append(lines[i])
            room -= len(lines[i]) + 1
    return "\n".join([HEADER, *shown, _more(len(skills) - len(shown), len(skills))]), True


def _more(hidden: int, total: int) -> str:
    return (f"({hidden} more skills of {total} not shown: those above were picked for this "
            "task. List them all with `ls skills/` (or `agentd skills`); each skills/<name>/"
            "SKILL.md starts with its description.)")
