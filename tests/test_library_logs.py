"""route_library_logs: a library's warnings reach our log as one line each, an
exception's type and message included (DBOS logs a failed background workflow with
exc_info; its traceback used to vanish, leaving "Exception encountered…:" and nothing)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from agentd.jobs.log import EventLog, route_library_logs


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    """The libraries' loggers are process-wide: put them back for the tests after this."""
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in ("apscheduler", "watchdog",
             "dbos") for lg in [logging.getLogger(n)]}
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def test_a_library_exception_is_one_line_with_its_type_and_message(
        capsys: pytest.CaptureFixture[str]) -> None:
    route_library_logs(EventLog(json_lines=True))
    lib = logging.getLogger("dbos._core")
    lib.info("chatter")  # dropped
    try:
        raise ConnectionError("connection is bad:\n  no such file")
    except ConnectionError:
        lib.error("Exception encountered in background workflow:", exc_info=True)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "error"
    assert lines[0]["msg"] == ("Exception encountered in background workflow: "
                               "ConnectionError: connection is bad: no such file")
