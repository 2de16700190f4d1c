"""`agentd fleet`: many homes on many machines, on DBOS Transact + PostgreSQL
(`pip install 'agentd[fleet]'`). Registered by agentd/cli.py.

Only this module and agentd/fleet import dbos and psycopg, and this one only inside the
commands, so `agentd --help` and every single-machine command start as fast as before and
work without the extra. The logic is in agentd/fleet/admin.py; here: parse, call, print.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from agentd.cli_base import AgentdGroup, task_from
from agentd.errors import AgentdError
from agentd.termsafe import tty_safe

DB_HELP = "The fleet's PostgreSQL database, postgresql://USER@HOST/DB (default: $AGENTD_FLEET_DB)."


def db_option(command: Any) -> Any:
    return click.option("--db", "db_url", envvar="AGENTD_FLEET_DB", metavar="URL",
                        help=DB_HELP)(command)


def _need_extra() -> None:
    """One line instead of an ImportError when `agentd[fleet]` is not installed."""
    import importlib.util

    missing = [m for m in ("dbos", "psycopg") if importlib.util.find_spec(m) is None]
    if missing:
        raise AgentdError(f"the fleet needs {' and '.join(missing)}: pip install "
                          "'agentd[fleet]'", 1)


@click.group(cls=AgentdGroup)
def fleet() -> None:
    """Many homes on many machines: a home is a git repository, turns are durable
    workflows on a PostgreSQL queue (one turn per home at a time, fleet-wide), workers run
    them. Start with `agentd fleet init --db URL`.
    """
    _need_extra()


@fleet.command("init")
@db_option
def init_cmd(db_url: str | None) -> None:
    """Create the fleet's tables (DBOS's and agentd's) in the database, creating the
    database if it is missing. Safe to run again: nothing is lost."""
    from agentd.fleet import admin

    admin.init(admin.check_url(db_url))
    click.echo("the fleet database is ready. Next:\n"
               "  agentd fleet add NAME GIT_URL          register a home (a git repository "
               "holding agentd.toml)\n"
               "  agentd fleet worker                    on each machine that runs turns\n"
               "  agentd fleet run NAME \"a task\" --wait  run a turn\n"
               "(with --db URL, or AGENTD_FLEET_DB set, on every command)")


@fleet.command("add")
@click.argument("name")
@click.argument("git_url")
@click.option("--branch", default="main", show_default=True, help="The branch turns "
              "start from and push to.")
@db_option
def add_cmd(name: str, git_url: str, branch: str, db_url: str | None) -> None:
    """Register home NAME: the git repository GIT_URL (a path or any URL git can push to),
    whose BRANCH holds agentd.toml at its root. Workers clone it and push one commit per
    turn; the owner may push to it too."""
    from agentd.fleet import admin

    with admin.connect(db_url or "") as conn:
        head = admin.add(conn, name, git_url, branch)
    click.echo(f"added {name}: {branch} at {head[:8]}; run a turn with "
               f"`agentd fleet run {name} \"...\"`")


@fleet.command("set")
@click.argument("key")
@click.argument("value")
@db_option
def set_cmd(key: str, value: str, db_url: str | None) -> None:
    """Set fleet setting KEY to VALUE (JSON) for every worker: `endpoints`
    '[{"url": "https://llm.example.com/v1", "key_env": "LLM_API_KEY"}]' (the provider
    base URLs homes may use besides the providers' defaults, each with the one key that
    may go there; a plain "URL" is for keyless providers), `sandbox_limits`
    '{"memory_mb": 4096}' (the most of each [sandbox] limit a home may ask: timeout,
    output_limit, tmp_size_mb, cpu_seconds, memory_mb, file_size_mb, open_files,
    processes; default agentd's defaults) and `trust_home_sandbox` true (homes may loosen
    the sandbox and pick any endpoint) hold from the next turn; the seconds dead_after, beat_every,
    heartbeat_every, refresh_every from the next beat, tick_every and stop_grace from a
    worker's next start; bridge_ip_rate and bridge_ip_burst (requests per second per client
    address, and the burst, before auth) as `fleet serve` starts."""
    import json

    from agentd.fleet import admin

    with admin.connect(db_url or "") as conn:
        stored = admin.set_setting(conn, key, value)
    click.echo(f"{key} = {json.dumps(stored)}")


@fleet.command("run")
@click.argument("name")
@click.argument("prompt", required=False)
@click.option("--wait", "-w", is_flag=True, help="Follow the turn: its tool calls and text "
              "as they happen, then its result; the exit status is the turn's.")
@click.option("--model", "-m", metavar="PROVIDER:MODEL", help="Instead of the home's "
              "model chain.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@db_option
def run_cmd(name: str, prompt: str | None, wait: bool, model: str | None, as_json: bool,
            db_url: str | None) -> None:
    """Queue a turn on home NAME and print its workflow ID. Piped stdin is attached as
    context, as for `agentd run`.

    With --wait: exit 0 when the turn ended well, 1 when it did not. Ctrl-C stops
    waiting, not the turn, which goes on in the fleet (exit 130).
    """
    import json

    from agentd.fleet import admin, enqueue
    from agentd.turn import TurnRequest

    task = task_from(prompt, f"agentd fleet run {name}")
    with admin.connect(db_url or "") as conn:
        home = admin.home(conn, name)
    client = admin.client(db_url or "")
    req = TurnRequest(task, Path("."), "cli", model=model)
    wid = enqueue.run_id(home.name)
    stopped: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt

    # A Ctrl-C that lands inside a database call surfaces as the driver's "query
    # cancelled" error, not KeyboardInterrupt: remember that it came, whatever is raised.
    signal.signal(signal.SIGINT, stop)
    try:
        enqueue.via_client(client, home.name, req.to_json(), wid)
        if not wait:
            click.echo(json.dumps({"workflow_id": wid, "home": home.name, "status": "queued"})
                       if as_json else wid)
            return
        if not as_json:
            click.echo(f"queued {wid}", err=True)
        result = admin.follow(client, wid, None if as_json else _show)
    except Exception:  # what a Ctrl-C inside a query became
        if not stopped:
            raise
        raise AgentdError(f"stopped waiting; the turn goes on in the fleet ({wid}: "
                          "`agentd fleet status`)", 130) from None
    except KeyboardInterrupt:  # from the moment the turn may be queued
        raise AgentdError(f"stopped waiting; the turn goes on in the fleet ({wid}: "
                          "`agentd fleet status`)", 130) from None
    finally:
        client.destroy()
    code = 0 if result.get("status") == "ok" else 1
    if as_json:
        click.echo(json.dumps({"workflow_id": wid, "home": home.name, **result,
                               "exit_code": code}, ensure_ascii=False, default=str))
    else:
        _summary(result)
    sys.exit(code)


def _show(event: dict[str, Any]) -> None:
    """One event of a turn's "out" stream: a tool call on stderr, the model's text on
    stdout."""
    if event.get("kind") == "tool":
        click.echo(tty_safe(f"▸ {event.get('line', '')}"), err=True)
    elif event.get("kind") == "text" and str(event.get("text") or "").strip():
        click.echo(tty_safe(str(event["text"]).strip()))


def _summary(result: dict[str, Any]) -> None:
    parts = [f"{result.get('steps') or 0} step(s)"]
    if result.get("commit"):
        parts.append(f"commit {str(result['commit'])[:8]}")
    if isinstance(result.get("cost"), int | float):
        parts.append(f"${result['cost']:.4f}")
    click.echo(f"{result.get('status', '?')}: {', '.join(parts)}", err=True)
    if result.get("conflict"):
        click.echo(f"warning: the turn's commit conflicted with a push to the home: it is "
                   f"on {result['conflict']}, nothing was lost", err=True)
    for note in result.get("notes") or []:  # files a recovery would not rebuild
        click.echo(f"note: {tty_safe(str(note))}", err=True)
    if result.get("status") != "ok":
        click.echo(f"error: {tty_safe(str(result.get('error') or 'the turn failed'))}",
                   err=True)


@fleet.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@db_option
def status_cmd(as_json: bool, db_url: str | None) -> None:
    """Homes (head, queued and running turns) and workers (host, concurrency, when each was
    last seen; a worker silent for longer than dead_after is dead, and its turns are
    recovered by another)."""
    import json

    from agentd.fleet import admin

    with admin.connect(db_url or "") as conn:
        client = admin.client(db_url or "")
        try:
            info = admin.status(conn, client)
        finally:
            client.destroy()
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    click.echo(tty_safe("\n".join(render_status(info))))


def render_status(info: dict[str, Any]) -> list[str]:
    lines = [f"homes: {len(info['homes'])}, turns queued {info['queued']}, running "
             f"{info['running']}"]
    for h in info["homes"]:
        head = (h["head"] or "-")[:8]
        lines.append(f"  {h['name']:<24} {h['branch']}@{head}  queued {h['queued']}  "
                     f"running {len(h['running'])}  {h['git_url']}")
    lines.append(f"workers: {len(info['workers'])} (dead after {info['dead_after_s']:g}s "
                 "silent)")
    for w in info["workers"]:
        state = "alive" if w["alive"] else "dead"
        if w["recovered_by"]:
            state += f", turns recovered by {w['recovered_by']}"
        lines.append(f"  {w['id']:<24} {w['host']} pid {w['pid']}  concurrency "
                     f"{w['concurrency']}  running {w['running']}  last seen "
                     f"{w['last_seen_s']:g}s ago  {state}")
    return lines


@fleet.command("usage")
@click.option("--home", "name", metavar="NAME", help="Only this home.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@db_option
def usage_cmd(name: str | None, as_json: bool, db_url: str | None) -> None:
    """The usage ledger summed per home and fleet-wide: model calls, tokens, cost."""
    import json

    from agentd.fleet import admin

    with admin.connect(db_url or "") as conn:
        data = admin.usage(conn, name)
    if as_json:
        click.echo(json.dumps(data))
        return
    rows = [*data["homes"], {"home": "(fleet)" if not name else "(total)", **data["total"]}]
    click.echo(f"{'home':<24} {'calls':>7} {'input':>12} {'output':>12} {'cost':>10}")
    for r in rows:
        cost = "-" if r["cost"] is None else f"${r['cost']:.4f}"
        click.echo(tty_safe(f"{r['home']:<24} {r['calls']:>7} {r['input_tokens']:>12} "
                            f"{r['output_tokens']:>12} {cost:>10}"))


@fleet.command("worker")
@db_option
@click.option("--id", "worker_id", metavar="ID", help="This worker's name, stable across "
              "restarts, so a restarted worker finishes its own turns (default: the host "
              "name).")
@click.option("--concurrency", "-n", default=4, show_default=True,
              type=click.IntRange(1, 256), help="Turns of different homes run at once, per "
              "worker; fleet-wide: the last worker to start sets it for every worker "
              "(DBOS keeps it in the database), so give all the same value.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Where "
              "the homes' git mirrors and turn clones go (default: "
              "$XDG_CACHE_HOME/agentd/fleet).")
@click.option("--json-logs", is_flag=True, help="One JSON object per log line.")
def worker_cmd(db_url: str | None, worker_id: str | None, concurrency: int,
               cache: Path | None, json_logs: bool) -> None:
    """Run turns, cron and heartbeats for the fleet's homes, in the foreground (one per
    machine). A worker killed outright has its turns finished by the others once it is
    silent for dead_after seconds, or by itself when restarted with the same --id."""
    import socket

    from agentd.fleet import admin
    from agentd.fleet.db import NAME
    from agentd.jobs.log import EventLog

    url = admin.check_url(db_url)
    wid = worker_id or socket.gethostname().lower() or "worker"
    if not NAME.match(wid):
        raise AgentdError(f"bad worker id {wid!r}: use 1-63 lowercase letters, digits, "
                          "'.', '_' or '-'", 1)
    admin.connect(url).close()  # set up, reachable: else one line now, not a traceback
    folder = (cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
              / "agentd" / "fleet")
    from agentd.fleet import cachedir, worker

    folder = cachedir.private_cache(folder)  # one line now if others could reach it
    sys.exit(worker.main(url, wid, concurrency, folder, EventLog(json_lines=json_logs)))


@fleet.command("serve")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on "
              "(anything but loopback wants a TLS proxy in front).")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one).")
@click.option("--json-logs", is_flag=True, help="One JSON object per log line.")
def serve_cmd(db_url: str | None, host: str, port: int, json_logs: bool) -> None:
    """The bridge for every home, in the foreground: the OpenAI-compatible
    /v1/chat/completions with model agentd/NAME (Bearer AGENTD_FLEET_TOKEN, required), and
    signed webhooks at /homes/NAME/hooks/HOOK (Standard Webhooks, AGENTD_FLEET_WEBHOOK_SECRET
    or per hook from the TOML file AGENTD_FLEET_HOOK_SECRETS names), Telegram at
    /homes/NAME/telegram and Slack at /homes/NAME/slack/events (bot tokens and secrets from
    that file), /openapi.json. Each request is a turn queued for the workers; a client that
    leaves does not stop it. Homes' settings are read from a mirror in
    $XDG_CACHE_HOME/agentd/fleet-serve."""
    from agentd.fleet import admin
    from agentd.jobs.log import EventLog

    url = admin.check_url(db_url)
    from agentd.fleet.bridge_serve import main

    sys.exit(main(url, host, port, EventLog(json_lines=json_logs)))
