"""The `agentd` commands for the long-running side: the daemon and its controls (start,
stop, status, service, cron), the usage report, and the chat bridge (serve). Registered by
agentd/cli.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from agentd.cli_base import AgentdGroup, home_only, home_option, warn_unpriced
from agentd.errors import AgentdError
from agentd.termsafe import tty_safe


@click.command()
@home_option
@click.option("--json-logs", is_flag=True, help="One JSON object per log line.")
@click.option("--lock-fd", type=int, hidden=True)  # `agentd start` hands over its lock
def daemon(home_opt: str | None, json_logs: bool, lock_fd: int | None) -> None:
    """Run the daemon in the foreground: heartbeat, cron jobs and inbox, one turn at a time,
    one log line per event on stderr. Ctrl-C or SIGTERM lets a running turn finish."""
    from agentd.daemon.scheduler import main as run_daemon

    home = home_only(home_opt, create=True)
    if lock_fd is None:  # not the child of `agentd start`, which warned already
        _warn_unpriced(home)
    sys.exit(run_daemon(home, json_logs, lock_fd))


@click.command()
@home_option
@click.option("--json-logs", is_flag=True, help="Log JSON lines to .agentd/daemon.log.")
def start(home_opt: str | None, json_logs: bool) -> None:
    """Start the daemon in the background (pid file and log in .agentd/)."""
    from agentd.daemon import service

    home = home_only(home_opt, create=True)
    _warn_unpriced(home)
    pid = service.start(home, json_logs)
    click.echo(f"agentd started (pid {pid}) for {home}; log: {service.log_path(home)}")


@click.command()
@home_option
@click.option("--now", is_flag=True, help="Kill it at once (SIGKILL); the next start commits "
              "what a running turn left.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Seconds to wait for a running "
              "turn (default: daemon.stop_timeout, 5m), then interrupt it.")
def stop(home_opt: str | None, now: bool, timeout: float | None) -> None:
    """Stop the daemon: it lets a running turn finish and commit first."""
    from agentd.daemon import service
    from agentd.daemon.status import settings_for

    home = home_only(home_opt)
    wait = timeout if timeout is not None else settings_for(home)[0].daemon.stop_timeout.seconds
    pid = service.stop(home, wait, now, say=lambda m: click.echo(m, err=True))
    click.echo("agentd is not running" if pid is None else f"agentd stopped (pid {pid})")


@click.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(home_opt: str | None, as_json: bool) -> None:
    """Is the daemon running; next heartbeat, cron jobs, queue, last runs, today's tokens
    and cost. Exits 3 when it is not running."""
    import json

    from agentd.daemon import status as st

    home = home_only(home_opt)
    settings, problem = st.settings_for(home)
    if problem:
        click.echo(f"warning: {problem}", err=True)
    info = st.collect(home, settings)
    click.echo(json.dumps(info, default=str) if as_json else tty_safe(st.render(info)))
    sys.exit(0 if info["running"] else 3)


@click.command()
@home_option
@click.option("--install", is_flag=True, help="Write it instead: to ~/.config/systemd/user/, "
              "or with --system to /etc/systemd/system/ (as root).")
@click.option("--system", "system", is_flag=True, help="A system unit instead: the daemon "
              "runs as a dedicated user, confined by systemd's sandboxing; its header "
              "lists the install steps.")
@click.option("--user", "user", metavar="NAME", help="With --system: the dedicated user "
              "(default agentd).")
def service(home_opt: str | None, install: bool, system: bool, user: str | None) -> None:
    """Print a systemd unit that runs this home's daemon (or --install it): a user unit
    (systemctl --user), or with --system a hardened system unit for a dedicated user."""
    from agentd.daemon import units
    from agentd.daemon.status import settings_for

    if user is not None and not system:
        raise click.UsageError("--user NAME goes with --system")
    home = home_only(home_opt)
    stop_timeout = settings_for(home)[0].daemon.stop_timeout.seconds
    if system:
        _system_service(home, stop_timeout, install, user or units.SYSTEM_USER)
    elif not install:
        click.echo(units.unit_text(home, stop_timeout), nl=False)
    else:
        path = units.install_unit(home, stop_timeout)
        click.echo(f"wrote {path}\nenable it: systemctl --user daemon-reload && systemctl "
                   f"--user enable --now {path.name}\n(keys go in ~/.config/agentd/env; to "
                   "run it while logged out: loginctl enable-linger)")


def _system_service(home: Path, stop_timeout: float, install: bool, user: str) -> None:
    """`agentd service --system`: print the unit (the install steps are in its header), or
    write it to /etc/systemd/system and print the steps that remain."""
    from agentd.daemon import units

    text = units.system_unit_text(home, stop_timeout, user)  # refuses a bad path or name
    for warning in units.system_warnings(home):
        click.echo(f"warning: {warning}", err=True)
    if not install:
        click.echo(text, nl=False)
        return
    if os.geteuid() != 0:
        raise AgentdError(f"--install --system writes {units.SYSTEM_UNIT_DIR}: run it as root "
                          "(or save the printed unit there yourself)", 1)
    path = units.install_system_unit(home, stop_timeout, user)
    steps = [f"  {step}" for step in units.install_steps(home, user, written=True)]
    click.echo("\n".join([f"wrote {path}", "then, as root:", *steps,
                          *units.install_note(home, user)]))


@click.group(cls=AgentdGroup, invoke_without_command=True)
@home_option
@click.pass_context
def cron(ctx: click.Context, home_opt: str | None) -> None:
    """List cron jobs (cron/*.md): schedule, next run, last result. `cron run NAME` runs
    one now."""
    ctx.obj = home_opt
    if ctx.invoked_subcommand is None:
        from agentd.daemon import status as st

        home = home_only(home_opt)
        settings, problem = st.settings_for(home)
        if problem:
            click.echo(f"warning: {problem}", err=True)
        info = st.collect(home, settings)
        click.echo(tty_safe("\n".join(st.cron_lines(info["cron"]))))


@cron.command("run")
@click.argument("name")
@home_option
@click.option("--quiet", "-q", is_flag=True, help="Print only the final answer.")
@click.pass_obj
def cron_run(parent_home: str | None, name: str, home_opt: str | None, quiet: bool) -> None:
    """Run cron job NAME now, in the foreground, as the daemon would (delivery included)."""
    import asyncio

    from agentd.config import load_settings
    from agentd.daemon.crontab import run_now
    from agentd.jobs.log import EventLog
    from agentd.loop import Events

    home = home_only(home_opt or parent_home)
    renderer = None
    events = Events()
    if not quiet:
        from agentd.render import LiveRenderer

        events = renderer = LiveRenderer()
    report = asyncio.run(run_now(home, load_settings(home), name, EventLog(), events))
    if report is None:
        raise AgentdError(f"cron job {name} could not start (see above)", 1)
    if renderer is not None:
        renderer.done(report)
    elif report.result.text:
        click.echo(report.result.text)
    if not report.ok:
        click.echo(f"error: {report.result.error}", err=True)
    sys.exit(0 if report.ok else 1)


@click.command("usage")
@home_option
@click.option("--days", default=14, show_default=True, type=click.IntRange(min=1, max=3660),
              help="How many days back, today included.")
@click.option("--by", type=click.Choice(["model", "trigger", "day"]), default="model",
              show_default=True, help="What the table groups by.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
def usage_cmd(home_opt: str | None, days: int, by: str, as_json: bool) -> None:
    """Tokens and spend from the usage ledger: a table (input, cache write, cached, output,
    cache hits, cost), spend per day as bars, spend per trigger kind, and the budgets."""
    import json

    from agentd.config import load_settings
    from agentd.home import Home
    from agentd.usage_report import render, report

    home = home_only(home_opt)
    data = report(Home(home).ledger, load_settings(home), days, by)
    if as_json:
        click.echo(json.dumps(data))
        return
    from agentd.render import make_console

    make_console().print(render(data))


@click.command()
@home_option
@click.option("--port", type=click.IntRange(0, 65535), help="Listen on this port (default: "
              "[bridge] port, 8787; 0 picks a free one).")
@click.option("--json-logs", is_flag=True, help="One JSON object per log line.")
def serve(home_opt: str | None, port: int | None, json_logs: bool) -> None:
    """Run the chat bridge alone, in the foreground: an OpenAI-compatible endpoint, signed
    webhooks, Telegram and Slack (see [bridge] in agentd.toml). Needs AGENTD_BRIDGE_TOKEN;
    binds 127.0.0.1:8787. It is the daemon with heartbeat, cron and inbox off (one per home:
    `agentd status` shows it, `agentd stop` stops it); for both, set [bridge] enabled = true
    and run the daemon. SIGTERM or Ctrl-C lets a running turn finish; SIGHUP reloads
    agentd.toml."""
    from agentd.daemon.scheduler import Parts, main

    parts = Parts(background=False, bridge=True, port=port)
    home = home_only(home_opt, create=True)
    _warn_unpriced(home)
    sys.exit(main(home, json_logs, parts=parts))


def _warn_unpriced(home: Path) -> None:
    """A money cap that cannot hold the home's model, said before the daemon starts (a
    broken agentd.toml is left for the daemon itself to report)."""
    from agentd.daemon.status import settings_for

    settings, problem = settings_for(home)
    if not problem:
        warn_unpriced(settings)
