"""One line per event, to stderr (or the log file `agentd start` points stderr at).

Human lines read `2026-11-23 14:30:05 heartbeat: nothing due (3 items)`; `--json-logs` gives
one JSON object per line for journald or a log shipper. Library loggers (APScheduler,
watchdog) are routed through the same writer at WARNING, so nothing prints in another shape.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from agentd.loop import Events

if TYPE_CHECKING:
    from agentd.llm.types import ToolCall

from agentd import jsonl
from agentd.surrogates import replace_surrogates


class EventLog:
    """Callable: `log("cron", "daily: scheduled", level="info", job="daily")`."""

    def __init__(self, stream: TextIO | None = None, json_lines: bool = False):
        self.stream = stream or sys.stderr
        self.json_lines = json_lines
        self._lock = threading.Lock()  # watchdog and to_thread workers log too

    def __call__(self, event: str, msg: str, level: str = "info", **fields: Any) -> None:
        now = time.time()
        if self.json_lines:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
            row = {"ts": f"{stamp}.{int(now % 1 * 1000):03d}{time.strftime('%z')}",
                   "level": level, "event": event, "msg": msg, **fields}
            line = jsonl.dumps(row, default=str)
        else:
            tag = "" if level == "info" else f"{level}: "
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} {event}: {tag}{msg}"
            line = replace_surrogates(line.replace("\n", " ⏎ "))  # else the write fails
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal must not take the daemon down

    def error(self, event: str, msg: str, **fields: Any) -> None:
        self(event, msg, level="error", **fields)

    def warn(self, event: str, msg: str, **fields: Any) -> None:
        self(event, msg, level="warning", **fields)


class LogEvents(Events):
    """A queued turn's progress as log lines: one per tool call (its arguments come
    redacted from the turn, agentd/turn.py)."""

    def __init__(self, log: EventLog, kind: str, name: str):
        self.log, self.kind, self.name = log, kind, name

    def tool_call(self, call: ToolCall) -> None:
        from agentd.render import call_line  # not loaded by an idle daemon

        self.log(self.kind, f"{self.name}: {call_line(call, 100)}")


class _Bridge(logging.Handler):
    def __init__(self, log: EventLog):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        msg = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:  # its traceback: one line
            e = record.exc_info[1]
            why = " ".join(str(e).split())[:300]
            msg = f"{msg.rstrip(': ')}: {type(e).__name__}{': ' + why if why else ''}"
        self.log(record.name.split(".")[0], msg, level=level)


def route_library_logs(log: EventLog) -> None:
    """Send APScheduler's, watchdog's (and a fleet worker's DBOS's) warnings through `log`;
    drop their chatter."""
    for name in ("apscheduler", "watchdog", "dbos"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [_Bridge(log)]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
