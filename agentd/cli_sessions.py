"""`agentd sessions`: the home's conversations, as `llm logs` shows its own. Without an ID,
a table of the sessions written last (when, trigger, model, turns, cost); with one, its
messages and tool calls as the chat showed them, or as JSON for scripts. Reading is in
agentd/transcripts.py, the look in agentd/transcript_view.py."""

from __future__ import annotations

import json
import sys

import click

from agentd.cli_base import home_only, home_option
from agentd.errors import AgentdError
from agentd.termsafe import terminal_safe


@click.command()
@click.argument("session_id", metavar="[ID]", required=False)
@home_option
@click.option("-n", "count", type=click.IntRange(min=1), help="Without ID: how many sessions "
              "(default 20). With ID: only the last N messages.")
@click.option("--last", is_flag=True, help="The most recent session started from the command "
              "line (`agentd run`, `agentd chat`): the one `run -c` continues.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts: a list of sessions, "
              "or one session with its messages.")
def sessions(session_id: str | None, home_opt: str | None, count: int | None, last: bool,
             as_json: bool) -> None:
    """List this home's sessions, newest first, or print session ID's messages and tool
    calls (--last: the one `agentd run -c` would continue).

    Everything shown is redacted; continue a session with `agentd run --session ID` or
    `agentd chat --resume ID`.
    """
    from agentd import transcript_view as view
    from agentd import transcripts as tr

    home = home_only(home_opt)
    redactor = view.redactor_for(home)
    if last:
        session_id = tr.latest_cli(home)
        if session_id is None:
            raise AgentdError(f"no session started from the command line in {home}")
    if session_id is None:
        infos = tr.summarise(home, count or 20)
        if as_json:
            click.echo(json.dumps(redactor.redact_data([i.to_json() for i in infos]),
                                  ensure_ascii=False))
            return
        if not infos:
            click.echo(f"no sessions yet in {home}: `agentd run` or `agentd chat` starts one")
            return
        from agentd.render import make_console

        make_console().print(view.sessions_table(infos))
        return
    t = tr.read(home, session_id)
    messages = t.messages()
    shown = messages[-count:] if count else messages
    if as_json:
        click.echo(json.dumps(redactor.redact_data({
            "id": t.id, "trigger": t.header.get("trigger"), "model": t.model(),
            "messages": [view.message_json(m, redactor) for m in shown],
            "broken_lines": t.broken, "cut": t.cut}), ensure_ascii=False))
        return
    from agentd.render import make_console

    console = make_console()
    head = terminal_safe(f"session {t.id} · {t.header.get('trigger', '?')} · "
                         f"{t.model() or '?'}")
    if len(shown) < len(messages):
        head += f" · last {len(shown)} of {len(messages)} messages"
    console.print(redactor.redact(head), style="dim", markup=False)
    view.print_messages(console, shown, redactor)
    if t.broken or t.cut:
        print(f"warning: {t.broken} unreadable line{'s' * (t.broken != 1)} skipped"
              + (" (only the newest 64 MiB read)" if t.cut else ""), file=sys.stderr)
