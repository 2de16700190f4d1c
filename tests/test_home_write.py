"""home.atomic_write, kept for runtime-private files (`.agentd/`, unit files): it never
keeps a set-id bit and never writes through a symlink at the name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agentd.home import atomic_write


def test_set_id_and_sticky_bits_are_not_kept(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("{}")
    os.chmod(target, 0o6750 | stat.S_ISVTX)
    atomic_write(target, "{}\n")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert target.read_text() == "{}\n"


def test_a_symlink_at_the_name_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.chmod(victim, 0o4700)
    link = tmp_path / "d" / "state.json"
    link.parent.mkdir()
    link.symlink_to(victim)
    atomic_write(link, "mine")
    assert victim.read_text() == "keep" and not link.is_symlink()
    assert link.read_text() == "mine"
    assert not os.stat(link).st_mode & stat.S_ISUID  # the link's target's mode not copied
    assert sorted(p.name for p in link.parent.iterdir()) == ["state.json"]
