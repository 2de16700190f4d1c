"""What every `agentd` command module shares: the group class that turns failures into one
line, the `--home` option, and finding the home."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agentd.errors import AgentdError
from agentd.surrogates import replace_surrogates

if TYPE_CHECKING:
    from agentd.config import Settings

F = TypeVar("F", bound=Callable[..., object])

STDIN_LIMIT = 1_000_000
HOME_HELP = ("The agent's home (default: $AGENTD_HOME, else the nearest parent folder "
             "holding agentd.toml, else ~/.agentd, which only a turn creates).")


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


def home_option(command: F) -> F:
    """`--home PATH`, passed as `home_opt`: one declaration, so every command says the same
    thing about how the home is found (agentd/newhome.py: find_home)."""
    return click.option("--home", "home_opt", metavar="PATH", help=HOME_HELP)(command)


def home_only(home_opt: str | None, create: bool = False) -> Path:
    """The home that `--home` names, or the one found from here. Only a turn passes
    `create` (~/.agentd is then made on first use, with a notice); any other command
    refuses in one line when there is no home."""
    from agentd.newhome import find_home

    home, notice = find_home(home_opt, Path.cwd(), create)
    if notice:
        click.echo(notice, err=True)
    return home


def warn_unpriced(settings: Settings, cli_model: str | None = None) -> None:
    """At the start of a turn or a daemon: a warning when a money cap is set but the model
    that will run has no price, so the cap cannot hold it (agentd/budget.py)."""
    from agentd.budget import unpriced_warning
    from agentd.chain import choose_model

    try:
        model = choose_model(cli_model, settings)
    except AgentdError:
        return  # no model at all: the turn itself says so
    warning = unpriced_warning(settings, model)
    if warning:
        click.echo(f"warning: {warning}", err=True)


def _read_stdin() -> str:
    stream = sys.stdin
    if stream is None or stream.isatty():
        return ""
    data = stream.buffer.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise AgentdError(f"piped input is over {STDIN_LIMIT // 1_000_000} MB: save it to a "
                          "file in the workdir and ask the agent to read it")
    return data.decode("utf-8", errors="replace").strip()


def task_from(prompt: str | None, command: str) -> str:
    """A turn's task: PROMPT, with piped stdin attached as context (`git diff | agentd run
    "review this"`), or stdin alone; one way for `agentd run` and `agentd fleet run`."""
    stdin = _read_stdin()
    task = replace_surrogates(f"{prompt}\n\n<stdin>\n{stdin}\n</stdin>" if prompt and stdin
                              else (prompt or stdin).strip())  # argv: \xff -> U+DCFF
    if not task:
        raise AgentdError(f'no prompt: give one as an argument ({command} "...") or on stdin')
    return task


class LazyGroup(click.Group):
    """A command group whose module is imported only when the group runs, so that
    `agentd --help` (which shows `short_help`) never imports it: `agentd fleet`'s."""

    def __init__(self, name: str, target: str, short_help: str):
        super().__init__(name, short_help=short_help)
        self.target = target  # "module:attribute"

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        import importlib

        module, attr = self.target.split(":")
        real: click.Command = getattr(importlib.import_module(module), attr)
        return real.make_context(info_name, args, parent, **extra)
