"""Making a home: `agentd init PATH`, and ~/.agentd the first time a turn needs one (only a
turn: a command that merely reads a home says there is none instead of making one).

Apart from agentd/home.py (the layout, which everything reads) because making a home
needs git (agentd/history.py), and nothing that only reads a home should.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agentd.config import CONFIG_NAME, DEFAULT_CONFIG
from agentd.errors import AgentdError
from agentd.home import (
    DEFAULT_HOME,
    RUNTIME,
    TEMPLATES,
    Home,
    atomic_write,
    is_home,
    locate_home,
)

GITIGNORE = f"{RUNTIME}/\n.env*\n*.pem\n__pycache__/\n"
HOME_DIRS = ("memory/daily", "skills", "cron", "inbox", "outbox")


def bundled_dir(name: str) -> Path:
    """The package's `templates/memory` or `templates/skills`: what `init` copies."""
    return TEMPLATES / name


NO_HOME = (f"no agentd home here, in a parent folder or at {DEFAULT_HOME}: make one with "
           f"`agentd init PATH` (or `agentd init {DEFAULT_HOME}`), or pass --home PATH")


def find_home(explicit: str | None, cwd: Path, create: bool = False) -> tuple[Path, str | None]:
    """Pick the home as `locate_home` does. With `create` (a turn), ~/.agentd is made on
    first use; without it (commands that only read or control a home), no home is an
    error, so looking around never leaves a ~/.agentd behind. Returns (home,
    notice-or-None)."""
    home = locate_home(explicit, cwd)
    if home is not None and not is_home(home):
        src = "--home" if explicit else "$AGENTD_HOME"
        raise AgentdError(f"{home} ({src}) is not an agentd home: run `agentd init {home}`")
    if home is not None:
        return home, None
    if not create:
        raise AgentdError(NO_HOME)
    home = Path(DEFAULT_HOME).expanduser().resolve()
    init_home(home)
    return home, f"created a new home at {home} (edit {home / CONFIG_NAME} to configure it)"


def init_home(path: Path) -> bool:
    """Create a home at `path`. Returns False (and changes nothing) if one is already there.

    Refuses a non-empty folder that is not a home, so `init` never mixes the agent's state
    into an unrelated project.
    """
    from agentd import history  # git only when a home is made: finding one stays cheap

    path = path.expanduser().resolve()
    if is_home(path):
        return False
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise AgentdError(f"{path} is not empty and is not an agentd home: "
                          "choose a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    for d in HOME_DIRS:
        (path / d).mkdir(parents=True, exist_ok=True)
    for template in sorted(bundled_dir("memory").glob("*.md")):
        shutil.copy2(template, path / "memory" / template.name)
    for skill_md in sorted(bundled_dir("skills").glob("*/SKILL.md")):
        shutil.copytree(skill_md.parent, path / "skills" / skill_md.parent.name)
    for d in HOME_DIRS:
        (path / d / ".gitkeep").touch()
    atomic_write(Home(path).config, DEFAULT_CONFIG)
    atomic_write(path / ".gitignore", GITIGNORE)
    history.init_repo(path, "agentd init: a new home")
    return True
