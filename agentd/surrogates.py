"""Lone surrogates: the code points U+D800-U+DFFF, which a Python str may hold but UTF-8
cannot encode, so any write of one (a file, a socket, git) fails with UnicodeEncodeError.

They come from outside: bytes that are not UTF-8 in argv or a file name (Python decodes
them with surrogateescape, `\\xff` -> U+DCFF), or a `\\ud800` escape in JSON from a
provider or a webhook sender. Text that agentd keeps (transcripts, the ledger, run
records, the day log, commit messages) has them replaced by U+FFFD at the write; the
bridge refuses them in a request body with a 400 instead (agentd/bridge/http.py).
"""

from __future__ import annotations

import re
from typing import Any

SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def has_surrogates(text: str) -> bool:
    return SURROGATE.search(text) is not None


def replace_surrogates(text: str) -> str:
    """`text` with every lone surrogate as U+FFFD; unchanged (the same object) when it
    holds none, which is nearly always. A str never holds a valid pair as two surrogates
    unless made with surrogatepass, so every one found here is unpaired."""
    return SURROGATE.sub(REPLACEMENT, text) if has_surrogates(text) else text


def replace_surrogates_in(value: Any) -> Any:
    """A JSON-like value (str, list, dict; anything else is returned as is) with lone
    surrogates replaced in every string, keys included."""
    if isinstance(value, str):
        return replace_surrogates(value)
    if isinstance(value, list):
        return [replace_surrogates_in(v) for v in value]
    if isinstance(value, dict):
        return {replace_surrogates_in(k): replace_surrogates_in(v) for k, v in value.items()}
    return value
