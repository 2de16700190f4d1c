"""Which chat session of a home a stateless OpenAI client is continuing, fleet-wide.

The single-home bridge's rule (agentd/bridge/conversations.py, read it for the why): a
request without a `user` field or session header continues the session whose latest
exchanges end with the visible history it sends back; any other history starts a new
session. The same fingerprints and the same tail rule (`fingerprint`, `is_tail`, TAIL),
kept in PostgreSQL (agentd_fleet.conversations, one row per session, looked up by its
latest item) instead of a file in the home, because the fleet bridge may run on several
machines and the home's chats on any worker. Kept like the file: the MAX_SESSIONS sessions
of a home that answered last; a new session drops the older ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentd.bridge.conversations import MAX_SESSIONS, TAIL, fingerprint, is_tail
from agentd.fleet import db

if TYPE_CHECKING:
    import psycopg


def find(conn: psycopg.Connection[Any], home: str, history: list[str]) -> str | None:
    """The session of `home` whose latest items end with `history`; None for an empty
    history or one that continues no session."""
    if not history:
        return None
    for session, tail in db.conversations_ending(conn, home, history[-1]):
        if is_tail(history, list(tail)):
            return str(session)
    return None


def record(conn: psycopg.Connection[Any], home: str, session: str, history: list[str],
           asked: str, sent: str) -> None:
    """`session` answered `asked` with `sent` (the text the client now holds; an empty
    answer is no part of a history a client sends back)."""
    exchanged = [fingerprint("user", asked)]
    if sent.strip():
        exchanged.append(fingerprint("assistant", sent))
    old = db.conversation_tail(conn, home, session)
    base = old if is_tail(history, old) else history
    db.save_conversation(conn, home, session, (base + exchanged)[-TAIL:])
    if not old:  # a new session: the only moment a home's count grows
        db.prune_conversations(conn, home, MAX_SESSIONS)
