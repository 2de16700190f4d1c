"""The `agentd` command: parse, call the app, render. No logic lives here.

Heavy modules (SDKs, rich, the turn machinery) are imported inside the commands that use
them, so `agentd --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agentd import __version__
from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config import Settings

STDIN_LIMIT = 1_000_000


class AgentdGroup(click.Group):
    """Turns every failure into one `error:` line and an exit code, never a traceback
    (also under click's CliRunner, which calls the group directly)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they are defined: init and run first

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except AgentdError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:
            if os.environ.get("AGENTD_DEBUG"):
                raise
            click.echo(f"error: internal error: {type(e).__name__}: {e} (a bug: rerun with "
                       "AGENTD_DEBUG=1 for the traceback and report it)", err=True)
            ctx.exit(70)


@click.group(cls=AgentdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agentd")
def cli() -> None:
    """agentd: an LLM with a sandboxed bash shell and a folder of markdown files in git.

    Start with `agentd init PATH`, then `agentd run "a task"` inside it.
    """


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), default=".")
def init(path: Path) -> None:
    """Create a home at PATH (default: here): memory templates, bundled skills, a commented
    agentd.toml, and a git repository with a first commit."""
    from agentd.home import init_home

    if init_home(path):
        click.echo(f"created a home at {path.resolve()}: edit agentd.toml to choose a model, "
                   f"then `agentd run \"...\"`")
    else:
        click.echo(f"{path.resolve()} is already an agentd home; nothing changed")


def _read_stdin() -> str:
    stream = sys.stdin
    if stream is None or stream.isatty():
        return ""
    data = stream.buffer.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise AgentdError(f"piped input is over {STDIN_LIMIT // 1_000_000} MB: save it to a "
                          "file in the workdir and ask the agent to read it")
    return data.decode("utf-8", errors="replace").strip()


@cli.command()
@click.argument("prompt", required=False)
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home (default: "
              "$AGENTD_HOME, else the nearest parent holding agentd.toml, else ~/.agentd).")
@click.option("--model", "-m", metavar="PROVIDER:MODEL",
              help="e.g. anthropic:claude-sonnet-5-5, openai:gpt-5.4-mini, ollama:qwen3:8b, "
                   "replay:run.jsonl.")
@click.option("--workdir", "-C", type=click.Path(file_okay=False, path_type=Path),
              help="Where bash runs; with the home, the only writable place (default: here).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Model calls before the turn "
              "is stopped (default 30, or max_steps in agentd.toml).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final answer.")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the model's replies to FILE, for replay:FILE later.")
@click.option("--no-sandbox", is_flag=True, help="Run bash unsandboxed on this host "
              "(warned on every turn).")
def run(prompt: str | None, home_opt: str | None, model: str | None, workdir: Path | None,
        max_steps: int | None, as_json: bool, quiet: bool, record: Path | None,
        no_sandbox: bool) -> None:
    """Run one turn on PROMPT. Piped stdin is attached as context:

      git diff | agentd run "review this"
    """
    import asyncio
    import json

    from agentd.turn import TurnRequest, run_turn

    try:
        stdin = _read_stdin()
        task = f"{prompt}\n\n<stdin>\n{stdin}\n</stdin>" if prompt and stdin else (
            (prompt or stdin).strip())
        if not task:
            raise AgentdError('no prompt: give one as an argument (agentd run "...") or on '
                              "stdin")
        home, settings, wd = _prepare(home_opt, workdir, no_sandbox)
        req = TurnRequest(task, wd, model=model, max_steps=max_steps, record=record)

        from agentd.loop import Events

        renderer = None
        events = Events()
        if not (as_json or quiet):
            from rich.console import Console

            from agentd.render import LiveRenderer

            events = renderer = LiveRenderer(Console(highlight=False))
        report = asyncio.run(run_turn(home, settings, req, events, base=Path.cwd()))
    except AgentdError as e:
        if as_json:  # scripts still get their one JSON object
            click.echo(json.dumps({"status": "error", "exit_code": e.exit_code,
                                   "error": str(e)}))
        raise
    code = 0 if report.ok else 1
    if as_json:
        from agentd.render import as_json as to_json

        click.echo(json.dumps(to_json(report, code), ensure_ascii=False))
    elif quiet:
        if report.result.text:
            click.echo(report.result.text)
    else:
        from agentd.render import summary

        assert renderer is not None
        renderer.finish()
        renderer.console.print(summary(report), style="dim", highlight=False)
    if not report.ok:
        click.echo(f"error: {report.result.error}", err=True)
    sys.exit(code)


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home (default: "
              "$AGENTD_HOME, else the nearest parent holding agentd.toml, else ~/.agentd).")
@click.option("--model", "-m", metavar="PROVIDER:MODEL",
              help="The model to start with; /model switches it mid-chat.")
@click.option("--workdir", "-C", type=click.Path(file_okay=False, path_type=Path),
              help="Where bash runs; with the home, the only writable place (default: here).")
@click.option("--resume", metavar="[ID]", is_flag=False, flag_value="", default=None,
              help="Continue a session: the most recent one, or ID (a file name in "
                   ".agentd/sessions/).")
@click.option("--no-sandbox", is_flag=True, help="Run bash unsandboxed on this host.")
def chat(home_opt: str | None, model: str | None, workdir: Path | None, resume: str | None,
         no_sandbox: bool) -> None:
    """An interactive session: each line you type is a turn, and all turns share one
    transcript. Commands: /model PROVIDER:MODEL, /undo, /history, /new, /help, /exit.

    Ctrl-C stops the running turn and the chat goes on. Ctrl-D or /exit ends the chat
    (exit 0); so does Ctrl-C at the prompt (exit 130, as for an interrupted run).
    """
    from agentd.chat import start_chat

    home, settings, wd = _prepare(home_opt, workdir, no_sandbox)
    sys.exit(start_chat(home, settings, wd, Path.cwd(), model, resume))


@cli.command("history")
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many commits.")
def history_cmd(home_opt: str | None, count: int) -> None:
    """What changed in the home, turn by turn: when, trigger, model, summary, files."""
    from rich.console import Console

    from agentd import history
    from agentd.render import history_table

    home = _home_only(home_opt)
    Console().print(history_table(history.log(home, count)))


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
def show(run_id: str, home_opt: str | None) -> None:
    """Show the commit of RUN (a run id from `agentd history`, or a commit sha) with its
    diff."""
    from agentd import history

    click.echo(history.show(_home_only(home_opt), run_id))


@cli.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
def undo(run_id: str | None, home_opt: str | None) -> None:
    """Revert RUN's commit (default: the last agent turn) as a new commit. On a conflict
    with later changes, nothing changes."""
    from agentd import history
    from agentd.session import new_id

    sha, subject = history.undo(_home_only(home_opt), run_id, new_id())
    click.echo(f"undone: {subject} (new commit {sha[:8]})")


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
def skills(home_opt: str | None) -> None:
    """List the home's skills: source, status and description."""
    from rich.console import Console

    from agentd.render import skills_table
    from agentd.skills import discover

    warnings: list[str] = []
    found = discover(_home_only(home_opt), warnings)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    Console().print(skills_table(found))


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("--json-logs", is_flag=True, help="One JSON object per log line.")
@click.option("--lock-fd", type=int, hidden=True)  # `agentd start` hands over its lock
def daemon(home_opt: str | None, json_logs: bool, lock_fd: int | None) -> None:
    """Run the daemon in the foreground: heartbeat, cron jobs and inbox, one turn at a time,
    one log line per event on stderr. Ctrl-C or SIGTERM lets a running turn finish."""
    from agentd.daemon.scheduler import main as run_daemon

    sys.exit(run_daemon(_home_only(home_opt), json_logs, lock_fd))


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("--json-logs", is_flag=True, help="Log JSON lines to .agentd/daemon.log.")
def start(home_opt: str | None, json_logs: bool) -> None:
    """Start the daemon in the background (pid file and log in .agentd/)."""
    from agentd.daemon import service

    home = _home_only(home_opt)
    pid = service.start(home, json_logs)
    click.echo(f"agentd started (pid {pid}) for {home}; log: {service.log_path(home)}")


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("--now", is_flag=True, help="Kill it at once (SIGKILL); the next start commits "
              "what a running turn left.")
@click.option("--timeout", type=click.FloatRange(min=0), help="Seconds to wait for a running "
              "turn (default: daemon.stop_timeout, 5m), then interrupt it.")
def stop(home_opt: str | None, now: bool, timeout: float | None) -> None:
    """Stop the daemon: it lets a running turn finish and commit first."""
    from agentd.config import parse_duration
    from agentd.daemon import service
    from agentd.daemon.status import settings_for

    home = _home_only(home_opt)
    wait = timeout if timeout is not None else parse_duration(
        settings_for(home)[0].daemon.stop_timeout)
    pid = service.stop(home, wait, now, say=lambda m: click.echo(m, err=True))
    click.echo("agentd is not running" if pid is None else f"agentd stopped (pid {pid})")


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(home_opt: str | None, as_json: bool) -> None:
    """Is the daemon running; next heartbeat, cron jobs, queue, last runs, today's tokens
    and cost. Exits 3 when it is not running."""
    import json

    from agentd.daemon import status as st

    home = _home_only(home_opt)
    settings, problem = st.settings_for(home)
    if problem:
        click.echo(f"warning: {problem}", err=True)
    info = st.collect(home, settings)
    click.echo(json.dumps(info, default=str) if as_json else st.render(info))
    sys.exit(0 if info["running"] else 3)


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("--install", is_flag=True, help="Write it to ~/.config/systemd/user/.")
def service(home_opt: str | None, install: bool) -> None:
    """Print a systemd user unit that runs this home's daemon (or --install it)."""
    from agentd.config import parse_duration
    from agentd.daemon import service as svc
    from agentd.daemon.status import settings_for

    home = _home_only(home_opt)
    stop_timeout = parse_duration(settings_for(home)[0].daemon.stop_timeout)
    if not install:
        click.echo(svc.unit_text(home, stop_timeout), nl=False)
        return
    path = svc.install_unit(home, stop_timeout)
    click.echo(f"wrote {path}\nenable it: systemctl --user daemon-reload && systemctl --user "
               f"enable --now {path.name}\n(keys go in ~/.config/agentd/env; to run it while "
               "logged out: loginctl enable-linger)")


@cli.group(cls=AgentdGroup, invoke_without_command=True)
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.pass_context
def cron(ctx: click.Context, home_opt: str | None) -> None:
    """List cron jobs (cron/*.md): schedule, next run, last result. `cron run NAME` runs
    one now."""
    ctx.obj = home_opt
    if ctx.invoked_subcommand is None:
        from agentd.daemon import status as st

        home = _home_only(home_opt)
        settings, problem = st.settings_for(home)
        if problem:
            click.echo(f"warning: {problem}", err=True)
        info = st.collect(home, settings)
        click.echo("\n".join(st.cron_lines(info["cron"])))


@cron.command("run")
@click.argument("name")
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final answer.")
@click.pass_obj
def cron_run(parent_home: str | None, name: str, home_opt: str | None, quiet: bool) -> None:
    """Run cron job NAME now, in the foreground, as the daemon would (delivery included)."""
    import asyncio

    from agentd.config import load_settings
    from agentd.daemon.crontab import run_now
    from agentd.daemon.log import EventLog
    from agentd.loop import Events

    home = _home_only(home_opt or parent_home)
    renderer = None
    events = Events()
    if not quiet:
        from rich.console import Console

        from agentd.render import LiveRenderer

        events = renderer = LiveRenderer(Console(highlight=False))
    report = asyncio.run(run_now(home, load_settings(home), name, EventLog(), events))
    if report is None:
        raise AgentdError(f"cron job {name} could not start (see above)", 1)
    if renderer is not None:
        from agentd.render import summary

        renderer.finish()
        renderer.console.print(summary(report), style="dim", highlight=False)
    elif report.result.text:
        click.echo(report.result.text)
    if not report.ok:
        click.echo(f"error: {report.result.error}", err=True)
    sys.exit(0 if report.ok else 1)


@cli.command("usage")
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
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
    from agentd.usage_report import render, report

    home = _home_only(home_opt)
    data = report(home / ".agentd" / "usage.jsonl", load_settings(home), days, by)
    if as_json:
        click.echo(json.dumps(data))
        return
    from rich.console import Console

    Console(highlight=False).print(render(data))


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home.")
@click.option("--port", type=click.IntRange(0, 65535), help="Listen on this port (default: "
              "[bridge] port, 8787; 0 picks a free one).")
@click.option("--json-logs", is_flag=True, help="One JSON object per log line.")
def serve(home_opt: str | None, port: int | None, json_logs: bool) -> None:
    """Run the chat bridge alone, in the foreground: an OpenAI-compatible endpoint, signed
    webhooks, Telegram and Slack (see [bridge] in agentd.toml). Needs AGENTD_BRIDGE_TOKEN;
    binds 127.0.0.1:8787. With the daemon, set [bridge] enabled = true instead."""
    from agentd.bridge.server import main as run_bridge

    sys.exit(run_bridge(_home_only(home_opt), port, json_logs))


def _home_only(home_opt: str | None) -> Path:
    from agentd.home import find_home

    home, notice = find_home(home_opt, Path.cwd())
    if notice:
        click.echo(notice, err=True)
    return home


def _prepare(home_opt: str | None, workdir: Path | None,
             no_sandbox: bool) -> tuple[Path, Settings, Path]:
    """Resolve the home, its settings and the workdir; warn about the sandbox."""
    from agentd.config import load_settings

    wd = (workdir or Path.cwd()).expanduser()
    if not wd.is_dir():
        raise AgentdError(f"workdir {wd} does not exist or is not a folder")
    home = _home_only(home_opt)
    settings = load_settings(home)
    if no_sandbox:
        settings.sandbox.mode = "off"
    from agentd.tools.sandbox import find_bwrap, turn_warnings

    for warning in turn_warnings(settings.sandbox):
        click.echo(f"warning: {warning}", err=True)
    if settings.sandbox.mode != "off" and not find_bwrap():
        click.echo("warning: bubblewrap (bwrap) is not installed, so bash will refuse to "
                   "run: `apt-get install bubblewrap`, or opt out with --no-sandbox", err=True)
    return home, settings, wd.resolve()


@cli.command()
@click.option("--home", "home_opt", metavar="PATH", help="The agent's home (default: as for run).")
@click.option("--online", is_flag=True, help="Also contact each provider's base URL (one GET).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok and the checks.")
def doctor(home_opt: str | None, online: bool, as_json: bool) -> None:
    """Check the sandbox, limits, git, the home and keys; say how to fix each problem.

    Exits 1 when something required is broken. Offline unless --online; never prints keys.
    """
    import json

    from agentd import doctor as doc

    checks = doc.run_checks(home_opt, Path.cwd(), online=online)
    if as_json:
        click.echo(json.dumps(doc.as_json(checks), indent=2))
    else:
        doc.render(checks)
    sys.exit(0 if doc.healthy(checks) else 1)


def main() -> None:
    """Entry point for the `agentd` script and `python -m agentd`.

    Ends with os._exit once output is flushed: tearing down the interpreter after a turn
    (the SDKs' thousands of pydantic classes) costs ~0.1 s and does nothing useful, since
    every file agentd writes is closed by then.
    """
    try:
        cli()
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            click.echo(e.code, err=True)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)
