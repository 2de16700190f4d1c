"""DBOS configured one way for every fleet process (workers, the CLI, the bridge).

Why pin the application version: DBOS recovers a workflow only on executors of the same
application version, which by default is a hash of the workflow code. Workers of one agentd
release must recover each other's turns even when their installs differ in a byte, so the
version is agentd's own plus the fleet's schema version.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agentd import __version__

if TYPE_CHECKING:
    from dbos import DBOSClient, Queue

APP = "agentd-fleet"
QUEUE = "turns"
SCHEMA_VERSION = 1
WORKFLOW_MODULES = ("agentd.fleet.turnflow", "agentd.fleet.tick")  # register before launch


def application_version() -> str:
    """What every worker of this release says it runs (see the module doc)."""
    return f"agentd-{__version__}-fleet{SCHEMA_VERSION}"


def sqlalchemy_url(url: str) -> str:
    """What SQLAlchemy/DBOS need from what a person types: `postgresql://…` (libpq form)
    becomes `postgresql+psycopg://…`; sqlite URLs (unit tests) pass through."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def libpq_url(url: str) -> str:
    """The libpq form of a URL (psycopg.connect, psql)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def config(url: str, executor_id: str) -> dict[str, Any]:
    """DBOS's config for one process: no admin server (a worker opens no port), and
    notifications and stream reads polled every 50 ms where LISTEN/NOTIFY is not used."""
    return {"name": APP, "system_database_url": sqlalchemy_url(url),
            "executor_id": executor_id, "application_version": application_version(),
            "run_admin_server": False, "notification_listener_polling_interval_sec": 0.05,
            "log_level": "WARNING"}  # the worker routes DBOS's warnings to its EventLog


def _lost_connection(ctx: Any) -> None:
    """SQLAlchemy's handle_error hook: a psycopg OperationalError without an SQLSTATE
    means the server never answered (its socket is gone, the connection broke), so mark
    it a disconnect.

    Why: DBOS retries its own database writes (a step's checkpoint, a stream write, a
    workflow's outcome) only for the connection errors it recognises by their text or
    SQLSTATE, and while PostgreSQL restarts psycopg 3 can say "connection is bad: …
    failed: No such file or directory" (the server's socket gone, no SQLSTATE), which
    it does not recognise. The write raised out of the turn, and DBOS recorded the turn as ERROR
    (or, when the outcome write failed the same way, left it PENDING with its thread
    gone): a turn lost. A disconnect is what DBOS does retry (with a backoff, until the
    database is back), and SQLAlchemy then also drops the pool's dead connections."""
    import psycopg

    e = ctx.original_exception
    if isinstance(e, psycopg.OperationalError) and e.sqlstate is None:
        ctx.is_disconnect = True


def retry_lost_connections() -> None:
    """Install `_lost_connection` on every SQLAlchemy engine of this process (DBOS's);
    idempotent."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "handle_error", _lost_connection):
        event.listen(Engine, "handle_error", _lost_connection)


def launch(url: str, executor_id: str, concurrency: int, *, poll: float = 0.1,
           workflows: tuple[str, ...] = WORKFLOW_MODULES) -> Queue:
    """Configure DBOS, import the modules that register workflows, launch (which also
    recovers this executor's own unfinished turns), and declare the turn queue: a process
    that does this is a worker and dequeues up to `concurrency` turns at once."""
    from dbos import DBOS

    retry_lost_connections()
    DBOS(config=config(url, executor_id))  # type: ignore[arg-type]
    for module in workflows:
        importlib.import_module(module)
    DBOS.launch()
    return DBOS.register_queue(QUEUE, partition_concurrency=1,
                               worker_concurrency=concurrency, polling_interval_sec=poll)


def client(url: str) -> DBOSClient:
    """For processes that enqueue and read but never run turns (`fleet run`, `status`)."""
    from dbos import DBOSClient

    return DBOSClient(system_database_url=sqlalchemy_url(url))
