"""A worker process for tests/test_fleet_worker.py: the real `worker.main`, running the
stand-in turn (tests/fleet_faketurn.py) in place of agentd.fleet.turnflow.
argv: DB_URL WORKER_ID CONCURRENCY CACHE."""

from __future__ import annotations

import sys
from pathlib import Path

from agentd.fleet import worker
from agentd.jobs.log import EventLog
from tests import fleet_faketurn

sys.modules["agentd.fleet.turnflow"] = fleet_faketurn
url, worker_id, concurrency, cache = sys.argv[1:5]
sys.exit(worker.main(url, worker_id, int(concurrency), Path(cache), EventLog()))
