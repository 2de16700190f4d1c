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
from agentd.cli_base import (
    AgentdGroup,
    LazyGroup,
    home_only,
    home_option,
    task_from,
    warn_unpriced,
)
from agentd.errors import AgentdError
from agentd.termsafe import tty_safe

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

    from agentd.config import Settings
    from agentd.turn import TurnReport


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
    from agentd.newhome import init_home

    if init_home(path):
        click.echo(f"created a home at {path.resolve()}: edit agentd.toml to choose a model, "
                   f"then `agentd run \"...\"`")
    else:
        click.echo(f"{path.resolve()} is already an agentd home; nothing changed")


@cli.command()
@click.argument("prompt", required=False)
@home_option
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
@click.option("--continue", "-c", "cont", is_flag=True, help="Continue the most recent "
              "conversation started here by `agentd run` or `agentd chat` (the transcript "
              "written last), on its model unless -m.")
@click.option("--session", "session_name", metavar="NAME", help="Continue session NAME, or "
              "start it under that name (`agentd sessions` lists them).")
def run(prompt: str | None, home_opt: str | None, model: str | None, workdir: Path | None,
        max_steps: int | None, as_json: bool, quiet: bool, record: Path | None,
        no_sandbox: bool, cont: bool, session_name: str | None) -> None:
    """Run one turn on PROMPT. Piped stdin is attached as context:

      git diff | agentd run "review this"

    While another turn runs in the home (the daemon's, a chat's), this one waits for it.
    Ctrl-C, SIGTERM or SIGHUP stop the turn, which still commits what it did (exit 130,
    143, 129).

    When the home's daemon (`agentd start`, `agentd serve`) runs, the turn runs there,
    warm, with the same output: no SDK to load. It runs here with --record or
    --no-sandbox, or when the daemon would not run it the same way (another view of the
    workdir, another umask or TZ), and always with AGENTD_COLD=1.
    """
    import asyncio
    import json

    from agentd.interrupt import Interrupted, interruptible

    try:
        task = task_from(prompt, "agentd run")
        home, settings, wd = _prepare(home_opt, workdir, no_sandbox, model)
        session = _continued(home, cont, session_name)
        model = _session_model(home, session, model, settings)
        from agentd.loop import Events

        renderer = None
        events = Events()
        if not (as_json or quiet):
            from agentd.render import LiveRenderer

            events = renderer = LiveRenderer()

        def cold() -> Coroutine[Any, Any, TurnReport]:
            from agentd.turn import TurnRequest, run_turn

            req = TurnRequest(task, wd, model=model, session=session, max_steps=max_steps,
                              record=record)
            return run_turn(home, settings, req, events, base=Path.cwd(), on_wait=_say_waiting)

        from agentd.warm import prepare

        warm = None if record or no_sandbox else prepare(home, settings, task, wd, model,
                                                         session, max_steps)
        turn = cold() if warm is None else warm.run(events, _say_waiting, cold)
        report, sig = asyncio.run(interruptible(turn))
        if sig is not None:  # the turn unwound and committed what it did
            if renderer is not None:
                renderer.finish()
            raise Interrupted(sig)
        assert report is not None
        for warning in report.warnings:  # a malformed skill, say: the agent's to fix
            click.echo(f"warning: {warning}", err=True)
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
            click.echo(tty_safe(report.result.text))
    else:
        assert renderer is not None
        renderer.done(report)
    if not report.ok:
        click.echo(f"error: {report.result.error}", err=True)
    sys.exit(code)


def _continued(home: Path, cont: bool, name: str | None) -> str | None:
    """The session `run` continues or starts: --session's (a checked name), -c's (the
    newest started from the command line), or None (a new one named after the run)."""
    from agentd.session import check_name
    from agentd.transcripts import latest_cli

    if cont and name:
        raise AgentdError("-c continues the last conversation and --session NAME a named "
                          "one: give one of them")
    if name:
        return check_name(name)
    if not cont:
        return None
    found = latest_cli(home)
    if found is None:
        raise AgentdError(f"no conversation to continue in {home}: start one with "
                          "`agentd run \"...\"` or `agentd chat`")
    return found


def _session_model(home: Path, session: str | None, model: str | None,
                   settings: Settings) -> str | None:
    from agentd.transcripts import continued_model

    model, warning = continued_model(home, session, model, settings, Path.cwd())
    if warning:
        click.echo(f"warning: {warning}", err=True)
    return model


def _say_waiting(holder: str) -> None:
    """Another turn holds the home's lock: say so once, on stderr (Ctrl-C gives up, 130)."""
    from agentd.turnlock import waiting_message

    click.echo(waiting_message(holder), err=True)


@cli.command()
@home_option
@click.option("--model", "-m", metavar="PROVIDER:MODEL",
              help="The model to start with; /model switches it mid-chat.")
@click.option("--workdir", "-C", type=click.Path(file_okay=False, path_type=Path),
              help="Where bash runs; with the home, the only writable place (default: here).")
@click.option("--resume", metavar="[ID]", is_flag=False, flag_value="", default=None,
              help="Continue a session on its model: the most recent one started from the "
                   "command line (as `run -c`), or ID (`agentd sessions` lists them).")
@click.option("--no-sandbox", is_flag=True, help="Run bash unsandboxed on this host.")
def chat(home_opt: str | None, model: str | None, workdir: Path | None, resume: str | None,
         no_sandbox: bool) -> None:
    """An interactive session: each entry you send is a turn, and all turns share one
    transcript. Commands: /model PROVIDER:MODEL, /undo, /history, /new, /help, /exit.

    Enter sends; Esc then Enter, or a line ending in \\, starts a new line; a paste is
    one entry. Ctrl-C stops the running turn and the chat goes on; at the prompt it
    clears the line, and on an empty line ends the chat (exit 130, as for an interrupted
    run). Ctrl-D or /exit ends the chat (exit 0).
    """
    from agentd.chat import start_chat

    home, settings, wd = _prepare(home_opt, workdir, no_sandbox, model)
    sys.exit(start_chat(home, settings, wd, Path.cwd(), model, resume))


@cli.command("history")
@home_option
@click.option("-n", "count", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many commits.")
def history_cmd(home_opt: str | None, count: int) -> None:
    """What changed in the home, turn by turn: when, trigger, model, summary, files."""
    from agentd import history
    from agentd.render import history_table, make_console

    home = home_only(home_opt)
    make_console().print(history_table(history.log(home, count)))


@cli.command()
@click.argument("run_id", metavar="RUN")
@home_option
def show(run_id: str, home_opt: str | None) -> None:
    """Show the commit of RUN (a run id from `agentd history`, or a commit sha) with its
    diff."""
    from agentd import history

    click.echo(tty_safe(history.show(home_only(home_opt), run_id)))


@cli.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@home_option
def undo(run_id: str | None, home_opt: str | None) -> None:
    """Revert RUN's commit (default: the last agent turn) as a new commit. On a conflict
    with later changes, nothing changes."""
    from agentd import history
    from agentd.session import new_id
    from agentd.turnlock import run_locked, waiting_message

    home = home_only(home_opt)
    sha, subject = run_locked(home, "undo", lambda: history.undo(home, run_id, new_id()),
                              lambda holder: click.echo(waiting_message(holder), err=True))
    click.echo(f"undone: {subject} (new commit {sha[:8]})")


@cli.command()
@home_option
def skills(home_opt: str | None) -> None:
    """List the home's skills: source, status and description."""
    from agentd.render import make_console, skills_table
    from agentd.skills import discover

    warnings: list[str] = []
    found = discover(home_only(home_opt), warnings)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    make_console().print(skills_table(found))


def _prepare(home_opt: str | None, workdir: Path | None, no_sandbox: bool,
             model: str | None = None) -> tuple[Path, Settings, Path]:
    """Resolve the home, its settings and the workdir; warn about the sandbox and about a
    money cap that cannot hold the model; remove what dead agentd processes left on this
    host (agentd/tools/leftovers.py)."""
    from agentd.config import load_settings

    wd = (workdir or Path.cwd()).expanduser()
    if not wd.is_dir():
        raise AgentdError(f"workdir {wd} does not exist or is not a folder")
    home = home_only(home_opt, create=True)  # a turn: ~/.agentd is made on first use
    settings = load_settings(home)
    if no_sandbox:
        settings.sandbox.mode = "off"
    warn_unpriced(settings, model)
    from agentd.tools.sandbox import find_bwrap, sweep_leftovers, turn_warnings

    sweep_leftovers()

    for warning in turn_warnings(settings.sandbox):
        click.echo(f"warning: {warning}", err=True)
    if settings.sandbox.mode != "off" and not find_bwrap():
        click.echo("warning: bubblewrap (bwrap) is not installed, so bash will refuse to "
                   "run: `apt-get install bubblewrap`, or opt out with --no-sandbox", err=True)
    return home, settings, wd.resolve()


def _register_daemon_commands() -> None:
    from agentd import cli_daemon

    for command in (cli_daemon.daemon, cli_daemon.start, cli_daemon.stop, cli_daemon.status,
                    cli_daemon.service, cli_daemon.cron, cli_daemon.usage_cmd, cli_daemon.serve):
        cli.add_command(command)


_register_daemon_commands()


def _register_sessions_command() -> None:
    from agentd.cli_sessions import sessions

    cli.add_command(sessions)


_register_sessions_command()


cli.add_command(LazyGroup("fleet", "agentd.cli_fleet:fleet",  # imported when used
                          "Many homes on many machines: `agentd fleet --help`."))


@cli.command()
@home_option
@click.option("--online", is_flag=True, help="Also ask each provider for its models: is it "
              "reachable, is the key accepted, are the home's models served.")
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
