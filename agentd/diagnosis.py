"""One finding of `agentd doctor`: apart from agentd/doctor.py so that its online half
(agentd/doctor_online.py) can make them without importing the offline checks."""

from __future__ import annotations

from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    required: bool = False  # a failed required check makes doctor exit 1
