"""The bridge's bookkeeping under `.agentd/bridge/`: delivery ids already seen, and runs.

Both are append-only JSON-lines files held in memory as dicts, reloaded at start and
rewritten (compacted) when mostly stale: appending a line costs microseconds on the event
loop, where a database commit per webhook would cost a disk flush. A crash loses at most
the lines the OS had not written yet. Nothing here is what the agent knows (that lives
in git); it is runtime state, git-ignored with the rest of `.agentd/`.

- `SeenIds`: `webhook-id`s, Telegram update_ids and Slack event_ids, with the run each
  started; kept `dedupe_ttl` (48 h) and at most MAX_SEEN (oldest dropped first), so a
  repeat within that time gets 200 and no second turn.
- `Runs`: the runs started by webhooks, Telegram and Slack (`GET /runs/{id}`); status rows
  in runs.jsonl, each finished run's result in runs/<id>.json; a chat reply's `delivery`
  (agentd/bridge/delivery.py) is a field of its run, and one still `retrying` when the
  process stopped is `failed` at the next start. A run still `queued` when
  the process stopped is queued again at the next start: its sender got a 2xx and will
  not send it again.
- `lock`: `.agentd/bridge/bridge.lock`, held while a bridge serves the home, since two
  would share (and compact) these files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import Any

from agentd import jsonl, state
from agentd.errors import AgentdError
from agentd.home import atomic_write, open_private, private_dir

MAX_SEEN = 200_000
MAX_RUNS = 10_000
RUN_TTL = 7 * 86400
RESULT_CHARS = 100_000


class _Lines:
    """An append-only JSONL file (agentd.jsonl lines), compacted by rewriting the live
    rows."""

    def __init__(self, path: Path):
        self.path = path
        private_dir(path.parent)
        self.rows = 0

    def load(self) -> list[dict[str, Any]]:
        out = []
        try:
            with self.path.open("rb") as f:
                for line in f:  # binary: split at b"\n" only
                    try:
                        row = jsonl.loads(line)
                    except ValueError:
                        continue  # a torn last line after a crash
                    if isinstance(row, dict):
                        out.append(row)
        except FileNotFoundError:
            pass
        self.rows = len(out)
        return out

    def append(self, row: dict[str, Any]) -> None:
        """One row, through agentd.jsonl's confined append (nothing planted at the name in
        `.agentd/`, writable by bash with the sandbox off, is written through)."""
        jsonl.append(self.path, row)
        self.rows += 1

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file with `rows` (atomic_write: an exclusive temp file, so a link
        planted at a temp name is never written through)."""
        atomic_write(self.path, "".join(jsonl.dumps(row) + "\n" for row in rows),
                     durable=False)
        self.rows = len(rows)

    def close(self) -> None:
        """Nothing is held open between rows; kept for the callers' symmetry."""


class SeenIds:
    def __init__(self, folder: Path, ttl: float):
        self.ttl = ttl
        self.file = _Lines(folder / "seen.jsonl")
        self.ids: dict[str, tuple[float, str]] = {}
        now = time.time()
        for row in self.file.load():
            if now - row.get("t", 0) < ttl and "k" in row:
                if row.get("run") is None:
                    self.ids.pop(row["k"], None)  # forgotten
                else:
                    self.ids[row["k"]] = (row["t"], row["run"])
        self._compact()

    def get(self, key: str) -> str | None:
        hit = self.ids.get(key)
        if hit is None or time.time() - hit[0] >= self.ttl:
            return None
        return hit[1]

    def add(self, key: str, run: str) -> None:
        t = round(time.time(), 3)
        self.ids[key] = (t, run)
        self.file.append({"k": key, "t": t, "run": run})
        while len(self.ids) > MAX_SEEN:
            del self.ids[next(iter(self.ids))]
        if self.file.rows > 2 * len(self.ids) + 10_000:
            self._compact()

    def forget(self, key: str) -> None:
        """The delivery was not accepted after all (queue full): a retry must run it."""
        if self.ids.pop(key, None) is not None:
            self.file.append({"k": key, "t": round(time.time(), 3), "run": None})

    def _compact(self) -> None:
        now = time.time()
        self.ids = {k: v for k, v in self.ids.items() if now - v[0] < self.ttl}
        self.file.rewrite([{"k": k, "t": t, "run": r} for k, (t, r) in self.ids.items()])


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(6)


class Runs:
    def __init__(self, folder: Path):
        self.folder = folder / "runs"
        private_dir(self.folder)
        self.file = _Lines(folder / "runs.jsonl")
        self.runs: dict[str, dict[str, Any]] = {}
        now = time.time()
        for row in self.file.load():
            rid = row.get("id")
            if isinstance(rid, str):
                self.runs.setdefault(rid, {}).update(row)
        self.runs = {k: v for k, v in self.runs.items()
                     if now - v.get("created", 0) < RUN_TTL and v.get("status") != "refused"}
        for run in self.runs.values():
            if run.get("status") != "queued":
                run.pop("spec", None)
            d = run.get("delivery")
            if isinstance(d, dict) and d.get("state") == "retrying":  # the process stopped
                run["delivery"] = {**d, "state": "failed", "ts": round(now, 3),
                                   "error": "agentd stopped before the reply was sent "
                                            "(it was retrying)"}
        self._compact()
        for old in self.folder.glob("*.json"):
            if old.stem not in self.runs:
                old.unlink(missing_ok=True)

    def new(self, kind: str, name: str, spec: dict[str, Any]) -> str:
        rid = new_run_id()
        row = {"id": rid, "kind": kind, "name": name, "status": "queued",
               "created": round(time.time(), 3), "spec": spec}
        self.runs[rid] = row
        self.file.append(row)
        while len(self.runs) > MAX_RUNS:
            del self.runs[next(iter(self.runs))]
        if self.file.rows > 3 * len(self.runs) + 1_000:
            self._compact()
        return rid

    def update(self, rid: str, **fields: Any) -> None:
        run = self.runs.get(rid)
        if run is None:
            return
        if fields.get("status") not in (None, "queued"):
            run.pop("spec", None)  # the task is no longer needed once it ran
        result = fields.pop("result", None)
        if result is not None:
            atomic_write(self.folder / f"{rid}.json",
                         jsonl.dumps({"result": result[:RESULT_CHARS]}), durable=False)
        run.update(fields)
        self.file.append({"id": rid, **fields})

    def get(self, rid: str) -> dict[str, Any] | None:
        run = self.runs.get(rid)
        if run is None:
            return None
        out = {k: v for k, v in run.items() if k != "spec"}
        with contextlib.suppress(OSError, ValueError):
            out.update(jsonl.loads((self.folder / f"{rid}.json").read_bytes()))
        return out

    def pending(self) -> list[dict[str, Any]]:
        """Runs a stopped process accepted but never started, oldest first."""
        return [r for r in self.runs.values() if r.get("status") == "queued" and "spec" in r]

    def _compact(self) -> None:
        self.file.rewrite(list(self.runs.values()))

    def close(self) -> None:
        self.file.close()


def recent_deliveries(folder: Path, n: int) -> list[dict[str, Any]]:
    """The latest `n` chat reply deliveries (`{"run", "state", "platform", "chat",
    "attempts", "ts", "error"?}`), oldest first, for `agentd status`: read from the end of
    runs.jsonl only (the last 64 KiB), so status stays quick whatever the file's size."""
    found: dict[str, dict[str, Any]] = {}
    for row in state.tail_lines(folder / "runs.jsonl", 400):
        d = row.get("delivery")
        if isinstance(d, dict) and isinstance(row.get("id"), str):
            found.pop(row["id"], None)  # the latest state, at its latest place
            found[row["id"]] = {"run": row["id"], **d,
                                "ts": d["ts"] if isinstance(d.get("ts"), float | int) else 0,
                                "attempts": d["attempts"] if isinstance(
                                    d.get("attempts"), int) else 0}
    return list(found.values())[-n:]


def lock(path: Path) -> int:
    """One bridge per home: two would share (and compact) the same delivery ids and runs."""
    fd = open_private(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentdError("bridge: another agentd process already serves this home's bridge "
                          "(the daemon with [bridge] enabled, or agentd serve)") from None
    return fd
