"""Git for the home, via GitPython: one repository, commits that never run hooks.

GitPython keeps `git cat-file` helpers alive while a Repo is open and is not thread-safe,
so every operation opens the repository, works, and closes it again.
"""

from __future__ import annotations

from pathlib import Path

AUTHOR_NAME = "agentd"
AUTHOR_EMAIL = "agentd@localhost"


def init_repo(path: Path, message: str) -> str:
    """`git init` plus a first commit of everything not ignored. Returns the commit sha."""
    from git import Actor, Repo

    actor = Actor(AUTHOR_NAME, AUTHOR_EMAIL)
    with Repo.init(path, initial_branch="main") as repo:
        repo.git.add("-A")
        # skip_hooks: a hook planted in .git/hooks must never run on the host.
        commit = repo.index.commit(message, author=actor, committer=actor, skip_hooks=True)
        return commit.hexsha
