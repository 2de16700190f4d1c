"""What `agentd status` and `agentd cron` show, from files only (no connection to the
daemon): the pid lock says whether it runs, `.agentd/daemon/status.json` (rewritten by
the daemon on every change) what it is doing, `runs.jsonl` and `cron.json` the last
results, the bridge's runs.jsonl the latest chat replies' delivery states, and
`.agentd/usage.jsonl` today's tokens and cost.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd import state
from agentd.bridge.store import recent_deliveries
from agentd.budget import money
from agentd.daemon import cron, crontab, service
from agentd.home import Home
from agentd.homefs import Root

if TYPE_CHECKING:
    from agentd.config import Settings

CHUNK = 64 * 1024


def status_path(home: Path) -> Path:
    return Home(home).daemon_status


def usage_today(home: Path, now: float | None = None) -> dict[str, Any]:
    """Model calls, tokens and cost since local midnight, reading the ledger backwards
    (it only grows, so today's rows are at its end)."""
    now = now or time.time()
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0,
                                                   microsecond=0).timestamp()
    total: dict[str, Any] = {"calls": 0, "input": 0, "output": 0, "cache_read": 0,
                             "cache_write": 0, "cost": 0.0, "unpriced": 0}
    path = Home(home).ledger
    try:
        f = path.open("rb")
    except OSError:
        return total
    with f:
        end = f.seek(0, 2)
        tail = b""
        while end > 0:
            start = max(0, end - CHUNK)
            f.seek(start)
            block = f.read(end - start) + tail
            lines = block.split(b"\n")
            tail, lines = (lines[0], lines[1:]) if start > 0 else (b"", lines)
            older = False
            for line in reversed(lines):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict) or float(row.get("ts") or 0) < midnight:
                    older = True
                    break
                total["calls"] += 1
                for k in ("input", "output", "cache_read", "cache_write"):
                    total[k] += int(row.get(k) or 0)
                if row.get("cost") is None:
                    total["unpriced"] += 1
                else:
                    total["cost"] += float(row["cost"])
            if older:
                break
            end = start
    total["cost"] = round(total["cost"], 6)
    return total


def cron_rows(home: Path, settings: Settings, live: dict[str, Any] | None) -> list[dict]:
    """Every cron file: schedule, next run (the daemon's, else computed), last result."""
    results = state.read(crontab.state_path(home), {}) or {}
    live_next = {j["name"]: j.get("next") for j in (live or {}).get("cron", [])}
    with Root(home) as root:
        try:
            files = crontab.job_files(root)
        except OSError as e:
            return [{"name": "cron/", "error": str(e)}]
        return [_cron_row(root, name, kind, results, settings, live, live_next)
                for name, kind in files]


def _cron_row(root: Root, name: str, kind: str, results: dict[str, Any], settings: Settings,
              live: dict[str, Any] | None, live_next: dict[str, Any]) -> dict[str, Any]:
    """One cron file's row; the file is read through homefs (see crontab.read_job)."""
    row: dict[str, Any] = {"name": name, **{k: v for k, v in (results.get(name) or {})
                                             .items() if k.startswith("last")}}
    if kind != "file":
        return {**row, "error": crontab.not_a_file(kind)}
    try:
        job = crontab.read_job(root, name)
        tz = crontab.job_zone(job, settings)
        row.update(schedule=f"{job.kind} {job.value}", enabled=job.enabled)
        entry = results.get(name) or {}
        trig = cron.trigger_for(job, tz, crontab.anchor_of(entry, tz) or datetime.now(tz))
        if live is not None:
            row["next"] = live_next.get(name)
        elif job.enabled and not (job.kind == "at" and entry.get("last_run")):
            nxt = trig.get_next_fire_time(None, datetime.now(tz))
            row["next"] = nxt.isoformat() if nxt else None
    except (OSError, ValueError) as e:
        row["error"] = str(e)
    return row


def collect(home: Path, settings: Settings) -> dict[str, Any]:
    """Everything `status` shows. The daemon's own status.json lags the cron folder until
    its watcher's next event, so its job list is cut to the files there now: a deleted job
    is gone from `status --json` at once."""
    pid = service.running_pid(home)
    live = state.read(status_path(home), None) if pid is not None else None
    if not isinstance(live, dict) or (pid and live.get("pid") != pid):
        live = None
    rows = cron_rows(home, settings, live)
    if live is not None and isinstance(live.get("cron"), list):
        names = {r["name"] for r in rows}
        live["cron"] = [j for j in live["cron"] if isinstance(j, dict) and j.get("name") in names]
    bridge = (live or {}).get("bridge") or None
    return {"home": str(home), "running": pid is not None, "pid": pid or None,
            "daemon": live, "cron": rows,
            "bridge": {"listening": bridge.get("url") if isinstance(bridge, dict) else None,
                       "enabled": settings.bridge.enabled},
            "runs": state.tail_lines(Home(home).runs_log, 8),
            "deliveries": recent_deliveries(Home(home).bridge, 5),
            "today": usage_today(home), "budgets": _budgets(home, settings)}


def bridge_line(info: dict[str, Any]) -> str:
    """Where the chat bridge listens, or why it does not."""
    b = info.get("bridge") or {}
    if b.get("listening"):
        return f"bridge: listening on {b['listening']}"
    if info["running"]:
        return "bridge: off (set [bridge] enabled = true in agentd.toml and restart)"
    return ("bridge: off (enabled in agentd.toml: it listens once the daemon runs)"
            if b.get("enabled") else "bridge: off (agentd serve, or [bridge] enabled = true "
            "and agentd start)")


def _budgets(home: Path, settings: Settings) -> list[dict[str, Any]]:
    from agentd.usage_report import budget_today

    return budget_today(Home(home).ledger, settings)


def _when(value: Any) -> str:
    if not value:
        return "-"
    t = datetime.fromisoformat(value) if isinstance(value, str) else datetime.fromtimestamp(
        float(value)).astimezone()
    delta = t.timestamp() - time.time()
    rel = _span(abs(delta))
    return f"{t:%Y-%m-%d %H:%M:%S} ({'in ' + rel if delta >= 0 else rel + ' ago'})"


def _span(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def cron_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["  (no jobs: add cron/<name>.md, see skills/schedule-a-job)"]
    out = []
    for r in rows:
        if r.get("error"):
            out.append(f"  {r['name']}: invalid: {r['error']}")
            continue
        state_ = "" if r.get("enabled", True) else " (disabled)"
        last = (f"last {_when(r['last_run'])} {r.get('last_status', '?')}"
                + (f": {r['last_summary'][:60]}" if r.get("last_summary") else "")
                if r.get("last_run") else "never run")
        out.append(f"  {r['name']}: {r.get('schedule')}{state_} · next {_when(r.get('next'))}"
                   f" · {last}")
    return out


def delivery_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The latest chat replies' delivery states (agentd/bridge/delivery.py), newest first."""
    out = ["chat replies:"] if rows else []
    for d in reversed(rows):
        tries = d.get("attempts") or 0
        out.append(f"  {_when(d.get('ts'))} {d.get('platform')} {d.get('chat')} (run "
                   f"{d.get('run')}): {d.get('state')}" + (f", {tries} attempts" if tries > 1
                                                           else "")
                   + (f": {d['error']}" if d.get("error") else ""))
    return out


def render(info: dict[str, Any]) -> str:
    d = info.get("daemon") or {}
    lines = []
    if info["running"]:
        up = _span(time.time() - d["started"]) if d.get("started") else "?"
        lines.append(f"agentd {'serve' if d.get('serve') else 'daemon'}: running (pid "
                     f"{info['pid']}, up {up}) · {info['home']}")
    else:
        lines.append(f"agentd daemon: not running · {info['home']} (start it: agentd start)")
    if d:
        hb = d.get("heartbeat") or {}
        last = hb.get("last") or {}
        hours = f", active {hb['active_hours']}" if hb.get("active_hours") else ""
        lines.append("heartbeat, cron and inbox: off (agentd serve)" if d.get("serve") else
                     f"heartbeat: every {hb.get('every')}{hours} · next {_when(hb.get('next'))}"
                     + (f" · last {_when(last.get('ts'))}: {last.get('result')}" if last
                        else "") if hb.get("enabled") else "heartbeat: off")
        q = d.get("queue") or {}
        run = q.get("running")
        lines.append(f"queue: {q.get('depth', 0)} waiting" + (
            f" · running {run['kind']} {run['name']} since {_when(run.get('started'))}"
            if run else " · idle") + (f" · watching files by {d['watch']}"
                                      if d.get("watch") else ""))
    lines.append(bridge_line(info))
    lines.append("cron:")
    lines += cron_lines(info["cron"])
    if info["runs"]:
        lines.append("last runs:")
        for r in reversed(info["runs"]):
            cost = "" if r.get("cost") is None else f" ${r['cost']:.4f}"
            what = "[SILENT]" if r.get("silent") else (r.get("error") or "")
            lines.append(f"  {_when(r.get('ts'))} {r.get('kind')} {r.get('name')}: "
                         f"{r.get('status')}{cost} {what}".rstrip())
    lines += delivery_lines(info.get("deliveries") or [])
    t = info["today"]
    cost = f"${t['cost']:.4f}" + (f" + {t['unpriced']} call(s) of unpriced models"
                                  if t["unpriced"] else "")
    if t["unpriced"] and t["unpriced"] == t["calls"]:
        cost = "cost unknown (unpriced models: add them under [prices])"
    lines.append(f"today: {t['calls']} model calls, {t['input']:,} in / {t['output']:,} out "
                 f"tokens ({t['cache_read']:,} cache read), {cost}")
    for b in info.get("budgets") or []:
        lines.append(f"budget {b['budget']}: {money(b['spent'])} of {money(b['cap'])}"
                     + (" (reached: background turns paused)" if b["reached"] else ""))
    return "\n".join(lines)


def settings_for(home: Path) -> tuple[Settings, str | None]:
    """The home's settings, or the defaults and why (status must work with a broken
    agentd.toml: that is when you need it)."""
    from agentd.config import load_settings, parse_settings
    from agentd.errors import AgentdError

    try:
        return load_settings(home), None
    except AgentdError as e:
        return parse_settings({}), str(e)
