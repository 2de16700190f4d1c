"""agentd.jsonl.append when two processes start the same file at once (the CLI and the
daemon booking their first model call in a fresh home's usage ledger): the one that loses
the race to create it appends to the file the other made, and no row is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agentd import jsonl
from agentd.homefs import root as homefs_root


def test_the_loser_of_the_race_to_create_appends(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".agentd/usage.jsonl"
    real = homefs_root.lstat_at
    raced = []

    def other_process_first(dfd: int, name: str) -> os.stat_result | None:
        if not raced:  # between our look and our create, another writer creates the file
            raced.append(name)
            jsonl_row = (json.dumps({"by": "other"}) + "\n").encode()
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
            os.write(fd, jsonl_row)
            os.close(fd)
            return None
        return real(dfd, name)

    monkeypatch.setattr(homefs_root, "lstat_at", other_process_first)
    jsonl.append(path, {"by": "us"})
    assert raced == ["usage.jsonl"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"by": "other"}, {"by": "us"}]
