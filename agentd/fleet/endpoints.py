"""Where a fleet turn may send a provider's key: the operator's endpoints, not the home's.

On one machine a home's `providers.X.base_url` is its owner's choice, and so is the key
sent there. A fleet worker holds the operator's `*_API_KEY`s and runs the turns of many
owners (and of their agents, which may edit agentd.toml in a trusted turn): a base_url of
the home's choosing would receive the worker's key, and a keyless one would make the
worker's host (not the sandbox) POST wherever the home likes (its loopback: the fleet's
PostgreSQL, the bridge). So a fleet home's provider may only point at a URL the operator
allows: the providers' own defaults (the SDKs' and agentd's presets) or one listed in the
fleet setting `endpoints`.

And each key only to its own: an allowed URL is not allowed for every key, or a home
could send the worker's $ANTHROPIC_API_KEY to OpenAI, to the ollama preset, or to an
operator's server meant for another key (`key_env = "ANTHROPIC_API_KEY"` with that
base_url). A key goes to its provider's default URL (ANTHROPIC_API_KEY to
api.anthropic.com or the worker's own $ANTHROPIC_BASE_URL, OPENAI_API_KEY to
api.openai.com/v1 or $OPENAI_BASE_URL), or to an entry of `endpoints` that names it:
`{"url": "https://llm.internal/v1", "key_env": "LLM_API_KEY"}`. A plain URL in `endpoints`
(and agentd's presets, ollama's) is for keyless providers only. A provider without a
base_url calls its protocol's default URL, so its key is held to that URL the same way.

URLs are compared as (scheme, host, port, path) after normalising, the path as a prefix
on whole segments; anything a client could read two ways (userinfo, a backslash, a
query, spaces, dot segments) is refused rather than interpreted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from agentd.config.settings import BUILTIN_ENDPOINTS
from agentd.doctor_online import DEFAULT_URLS
from agentd.errors import AgentdError

SETTING = "endpoints"
HOW = f"agentd fleet set {SETTING} '[\"URL\", {{\"url\": URL, \"key_env\": VAR}}, ...]'"
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The hosts a URL may name: DNS labels, an IPv4 address, or an IPv6 one (unbracketed,
# as urlsplit gives it); nothing percent-encoded, no trailing dot.
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                   r"|[0-9a-f:.]*:[0-9a-f:.]*")
_PORTS = {"http": 80, "https": 443}

Normal = tuple[str, str, int, tuple[str, ...]]


def normal(url: str) -> Normal:
    """`url` as (scheme, host, port, path segments), or ValueError saying why it is not
    one plain http(s) URL."""
    if not isinstance(url, str) or not url or any(c.isspace() or not c.isprintable()
                                                  for c in url):
        raise ValueError("not a URL without spaces")
    if "\\" in url:
        raise ValueError("a backslash")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise ValueError("not http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("a user@ part")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError("a query or fragment")
    host = parts.hostname or ""  # lowercased, without the port (parts.port checks it)
    if not _HOST.fullmatch(host) or parts.port == 0:
        raise ValueError(f"host {host!r} or port 0")
    segments = tuple(s for s in parts.path.split("/") if s)
    if any(unquote(s) in (".", "..") or "/" in unquote(s) for s in segments):
        raise ValueError("a dot segment")
    return scheme, host, parts.port or _PORTS[scheme], segments


Bound = tuple[Normal, str | None]  # an allowed URL, and the key variable it may receive


def defaults() -> list[tuple[str, str | None]]:
    """The providers' own URLs, each with the key it may receive: the SDKs' defaults (and
    the worker's own $ANTHROPIC_BASE_URL / $OPENAI_BASE_URL, the operator's) with their
    provider's key, agentd's keyless presets with none."""
    out: list[tuple[str, str | None]] = []
    for kind, (var, url) in DEFAULT_URLS.items():
        key = BUILTIN_ENDPOINTS[kind].key_env
        out += [(url, key)] + ([(os.environ[var], key)] if os.environ.get(var) else [])
    return out + [(ep.base_url, None) for ep in BUILTIN_ENDPOINTS.values()
                  if ep.base_url and not ep.key_env]


def _entry(entry: Any) -> tuple[str, str | None]:
    """One entry of the setting as (URL, key variable or None), or ValueError."""
    if isinstance(entry, str):
        return entry, None
    if (isinstance(entry, dict) and set(entry) == {"url", "key_env"}
            and isinstance(entry["url"], str) and isinstance(entry["key_env"], str)
            and _VAR.fullmatch(entry["key_env"])):
        return entry["url"], entry["key_env"]
    raise ValueError('neither a URL nor {"url": URL, "key_env": VARIABLE}')


def allowed(listed: Iterable[Any]) -> list[Bound]:
    """The URLs a fleet turn may call, each with the key it may receive: the defaults and
    the operator's `listed`; an entry that is no plain URL is the operator's mistake, said
    in one line."""
    out: list[Bound] = []
    for url, key in defaults():
        try:
            out.append((normal(url), key))
        except ValueError:  # a worker's $..._BASE_URL no client could read one way
            continue
    for entry in listed:
        try:
            url, key = _entry(entry)
            out.append((normal(url), key))
        except ValueError as e:
            raise AgentdError(f"the fleet setting {SETTING} has {entry!r}: {e}; fix it "
                              f"with {HOW}") from None
    return out


def covers(base: Normal, url: Normal) -> bool:
    """Same scheme, host and port, and `base`'s path a prefix of `url`'s on whole
    segments (`/v1` covers `/v1` and `/v1/x`, not `/v10`)."""
    return base[:3] == url[:3] and url[3][:len(base[3])] == base[3]


def _target(name: str, ep: Any) -> tuple[str, Normal] | None:
    """Where provider `name` sends its requests (its base_url, else its protocol's
    default), normalised; None for a provider without a base_url that sends its
    protocol's own key or none to the SDK's default (or the worker's $..._BASE_URL: the
    operator's choice, taken as it is)."""
    raw = ep.base_url
    if not raw:
        var, default = DEFAULT_URLS.get(ep.protocol, ("", ""))
        own = BUILTIN_ENDPOINTS[ep.protocol].key_env if default else None
        if not ep.key_env or ep.key_env == own:
            return None
        raw = os.environ.get(var) or default
    try:
        return raw, normal(raw)
    except ValueError as e:
        raise AgentdError(f"providers.{name}.base_url = {raw!r} ({e}): a fleet home calls "
                          "only the operator's endpoints") from None


def check(providers: Mapping[str, Any], listed: Any) -> None:
    """Refuse, in one line naming the setting, a home provider whose URL is not an allowed
    one, or not one allowed its key (see the module doc); before any model call, so no
    key is sent."""
    bases = allowed(check_setting(listed))
    for name, ep in providers.items():
        target = _target(name, ep)
        if target is None:
            continue
        raw, url = target
        keys = [key for base, key in bases if covers(base, url)]
        if not keys:
            raise AgentdError(f"providers.{name}.base_url = {raw!r} is not an endpoint of "
                              f"this fleet: the operator may allow it with {HOW} (the "
                              f"fleet setting {SETTING})")
        if ep.key_env and ep.key_env not in keys:
            raise AgentdError(f"providers.{name}: ${ep.key_env} is not sent to {raw!r} in "
                              f"this fleet, only to its own endpoints: the operator may "
                              f"bind it with agentd fleet set {SETTING} '[{{\"url\": "
                              f"\"{raw}\", \"key_env\": \"{ep.key_env}\"}}]' (the fleet "
                              f"setting {SETTING})")


def check_setting(value: Any) -> list[Any]:
    """The fleet setting `endpoints` as `agentd fleet set` takes it: a list whose entries
    are plain http(s) URLs (for keyless providers) or {"url": URL, "key_env": VARIABLE}
    (the one key that may go there)."""
    if not isinstance(value, list):
        raise AgentdError(f"the fleet setting {SETTING} is a JSON list of URLs and "
                          '{"url": URL, "key_env": VARIABLE} objects, e.g. '
                          "'[{\"url\": \"https://llm.example.com/v1\", \"key_env\": "
                          "\"LLM_API_KEY\"}]'")
    allowed(value)
    return value
