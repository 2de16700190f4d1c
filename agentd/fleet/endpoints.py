"""Where a fleet turn may send a provider's key: the operator's endpoints, not the home's.

On one machine a home's `providers.X.base_url` is its owner's choice, and so is the key
sent there. A fleet worker holds the operator's `*_API_KEY`s and runs the turns of many
owners (and of their agents, which may edit agentd.toml in a trusted turn): a base_url of
the home's choosing would receive the worker's key, and a keyless one would make the
worker's host (not the sandbox) POST wherever the home likes (its loopback: the fleet's
PostgreSQL, the bridge). So a fleet home's provider may only point at a URL the operator
allows: the providers' own defaults (the SDKs' and agentd's presets) or one listed in the
fleet setting `endpoints`. A provider without a base_url uses the SDK's default or the
worker's own $ANTHROPIC_BASE_URL / $OPENAI_BASE_URL: the operator's choice, allowed.

URLs are compared as (scheme, host, port, path) after normalising, the path as a prefix
on whole segments; anything a client could read two ways (userinfo, a backslash, a
query, spaces, dot segments) is refused rather than interpreted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from agentd.config.settings import BUILTIN_ENDPOINTS
from agentd.doctor_online import DEFAULT_URLS
from agentd.errors import AgentdError

SETTING = "endpoints"
HOW = f"agentd fleet set {SETTING} '[\"URL\", ...]'"
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


def defaults() -> list[str]:
    """The providers' own URLs: the SDKs' defaults and agentd's built-in presets."""
    presets = [ep.base_url for ep in BUILTIN_ENDPOINTS.values() if ep.base_url]
    return [url for _, url in DEFAULT_URLS.values()] + presets


def allowed(listed: Iterable[str]) -> list[Normal]:
    """The URLs a fleet turn may call: the defaults and the operator's `listed`; an entry
    that is no plain URL is the operator's mistake, said in one line."""
    out = [normal(url) for url in defaults()]
    for url in listed:
        try:
            out.append(normal(url))
        except ValueError as e:
            raise AgentdError(f"the fleet setting {SETTING} has {url!r}: {e}; fix it "
                              f"with {HOW}") from None
    return out


def covers(base: Normal, url: Normal) -> bool:
    """Same scheme, host and port, and `base`'s path a prefix of `url`'s on whole
    segments (`/v1` covers `/v1` and `/v1/x`, not `/v10`)."""
    return base[:3] == url[:3] and url[3][:len(base[3])] == base[3]


def check(providers: Mapping[str, Any], listed: Any) -> None:
    """Refuse, in one line naming the setting, a home provider whose base_url is not an
    allowed one (see the module doc); before any model call, so no key is sent."""
    bases = allowed(check_setting(listed))
    for name, ep in providers.items():
        if not ep.base_url:
            continue
        try:
            url = normal(ep.base_url)
        except ValueError as e:
            raise AgentdError(f"providers.{name}.base_url = {ep.base_url!r} ({e}): a fleet "
                              "home calls only the operator's endpoints") from None
        if not any(covers(base, url) for base in bases):
            raise AgentdError(f"providers.{name}.base_url = {ep.base_url!r} is not an "
                              f"endpoint of this fleet: the operator may allow it with "
                              f"{HOW} (the fleet setting {SETTING})")


def check_setting(value: Any) -> list[str]:
    """The fleet setting `endpoints` as `agentd fleet set` takes it: a list of plain
    http(s) URLs."""
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise AgentdError(f"the fleet setting {SETTING} is a JSON list of URLs, e.g. "
                          "'[\"https://llm.example.com/v1\"]'")
    allowed(value)
    return value
