"""What every `agentd` command module shares: the group class that turns failures into one
line, the `--home` option, and finding the home."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from agentd.errors import AgentdError

if TYPE_CHECKING:
    from agentd.config import Settings

F = TypeVar("F", bound=Callable[..., object])

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
