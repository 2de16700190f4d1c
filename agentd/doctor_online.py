"""`agentd doctor --online`: does each provider answer, take its key, and serve the models
this home uses? One line each, so a refused key and a misspelt model are told apart.

"Reachable" alone proved little: a 404 from a wrong base URL, or a 401 for a revoked key,
used to read as fine. Here the provider's model list (`GET …/models`, the call every
provider serves without spending a token) proves the URL and the key, and then each model
in use is looked up in it, or fetched by name (`GET …/models/NAME`, which also resolves
Anthropic's aliases). Key values are sent to their own provider only, and never shown.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from agentd.config import Endpoint, Settings
from agentd.diagnosis import FAIL, OK, WARN, Check
from agentd.errors import AgentdError

DEFAULT_URLS = {"anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
                "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1")}
ANTHROPIC_VERSION = "2023-06-01"
BODY_LIMIT = 4 * 1024 * 1024


@dataclass
class Answer:
    """One GET: the HTTP status (None: no answer at all) and the parsed JSON body."""

    status: int | None
    body: object = None
    reason: str = ""


def base_url(name: str, settings: Settings) -> str | None:
    ep = settings.providers[name]
    if ep.base_url:
        return ep.base_url
    var, default = DEFAULT_URLS.get(name, ("", ""))
    return os.environ.get(var) or default or None


def models_url(ep: Endpoint, base: str) -> str:
    """The model list: Anthropic's base URL has no /v1 (the SDK adds it), OpenAI's has."""
    base = base.rstrip("/")
    return f"{base}/v1/models" if ep.protocol == "anthropic" else f"{base}/models"


def _headers(ep: Endpoint) -> dict[str, str]:
    key = os.environ.get(ep.key_env or "") or ""
    if ep.protocol == "anthropic":
        return {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key} if key else {})}
    return {"Authorization": f"Bearer {key}"} if key else {}


def get(url: str, headers: dict[str, str], timeout: float) -> Answer:
    """GET `url`; an HTTP error is an answer too, a network failure is not."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read(BODY_LIMIT)
    except urllib.error.HTTPError as e:
        return Answer(e.code, reason=str(e.reason))
    except (urllib.error.URLError, OSError, ValueError) as e:
        return Answer(None, reason=str(getattr(e, "reason", e)))
    try:
        return Answer(status, json.loads(raw))
    except ValueError:
        return Answer(status, reason="the answer is not JSON")


def listed(body: object) -> list[str] | None:
    """The model ids in a `/models` answer (both protocols use {"data": [{"id": …}]})."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]


def models_in_use(settings: Settings) -> list[str]:
    """The home's model (as a turn would choose it), its fallbacks and budget fallback."""
    from agentd.chain import choose_model

    try:
        first = [choose_model(None, settings)]
    except AgentdError:
        first = []
    extra = [settings.budget_fallback] if settings.budget_fallback else []
    return list(dict.fromkeys([*first, *settings.fallbacks, *extra]))


def check_online(settings: Settings, timeout: float = 3.0) -> list[Check]:
    """Per provider with a usable key (or none needed): reach, key, and each model in use.
    A problem with a provider the home's models use is required; others only warn."""
    in_use: dict[str, list[str]] = {}
    for spec in models_in_use(settings):
        provider, _, model = spec.partition(":")
        in_use.setdefault(provider, []).append(model)
    out: list[Check] = []
    for name in sorted(settings.providers):
        ep, url = settings.providers[name], base_url(name, settings)
        if not url:
            continue
        needed = name in in_use
        if ep.key_env and not os.environ.get(ep.key_env):
            if needed:
                out.append(Check(f"auth: {name}", FAIL, f"not checked: {ep.key_env} is not "
                                 "set", f"export {ep.key_env}=…", required=True))
            continue
        out += _provider(name, ep, url, in_use.get(name, []), needed, timeout)
    return out


def _provider(name: str, ep: Endpoint, base: str, models: list[str], needed: bool,
              timeout: float) -> list[Check]:
    bad = FAIL if needed else WARN
    url = models_url(ep, base)
    headers = _headers(ep)
    answer = get(url, headers, timeout)
    if answer.status is None:
        return [Check(f"reach: {name}", bad, f"{base}: {answer.reason}",
                      "is the server running / the URL right / the network up?",
                      required=needed)]
    if answer.status == 404:
        return [Check(f"reach: {name}", bad, f"{url} answered HTTP 404: no model API at "
                      "this base URL", "check base_url (an OpenAI-compatible one ends in "
                      "/v1)", required=needed)]
    reach = Check(f"reach: {name}", OK, f"{base} answered")
    if answer.status in (401, 403):
        return [reach, Check(f"auth: {name}", bad, f"{ep.key_env or 'the key'} was refused "
                             f"(HTTP {answer.status})", f"set a valid key in {ep.key_env}"
                             if ep.key_env else "this server wants a key: set key_env",
                             required=needed)]
    ids = listed(answer.body) if answer.status == 200 else None
    if ids is None:
        why = answer.reason or f"HTTP {answer.status}"
        return [reach, Check(f"auth: {name}", WARN, f"could not list models ({why}), so "
                             "neither the key nor the models were checked", "try again later")]
    how = f"{ep.key_env} works" if ep.key_env else "needs no key"
    out = [reach, Check(f"auth: {name}", OK, f"{how} ({len(ids)} models listed)")]
    for model in models:
        out.append(_model(name, ep, url, model, ids, headers, timeout))
    return out


def _model(name: str, ep: Endpoint, url: str, model: str, ids: list[str],
           headers: dict[str, str], timeout: float) -> Check:
    """Listed, or found by name (an alias the list does not spell out)."""
    spec = f"{name}:{model}"
    if model in ids:
        return Check(f"model: {spec}", OK, "listed by the provider")
    one = get(f"{url}/{urllib.parse.quote(model, safe='')}", headers, timeout)
    if one.status == 200:
        return Check(f"model: {spec}", OK, "served by the provider")
    shown = ", ".join(ids[:8]) + (f" (+{len(ids) - 8} more)" if len(ids) > 8 else "")
    return Check(f"model: {spec}", FAIL, f"not served by {name}: it lists {shown or 'none'}",
                 "fix the model name in agentd.toml (or --model)", required=True)
