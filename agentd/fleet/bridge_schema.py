"""The fleet bridge's OpenAPI document, `/openapi.json`: the single-home bridge's
(agentd/bridge/openapi.py: the real answers of each route, the one error body, the guard's
statuses, each route's security) for the fleet's routes.

What differs: hooks, Telegram and Slack are per home (`/homes/{name}/hooks/{hook}`,
`/homes/{name}/telegram`, `/homes/{name}/slack/events`, the home's name pattern in the
path), and the Bearer token is AGENTD_FLEET_TOKEN. Public like /healthz: the same for every
fleet (no home's name is in it).
"""

from __future__ import annotations

from typing import Any

from agentd.bridge import openapi
from agentd.config import HOOK_NAME
from agentd.fleet.db import NAME

SINGLE = openapi.ANSWERS
ANSWERS = {
    ("get", "/healthz"): SINGLE[("get", "/healthz")],
    ("get", "/v1/models"): SINGLE[("get", "/v1/models")],
    ("post", "/v1/chat/completions"): SINGLE[("post", "/v1/chat/completions")],
    ("post", "/homes/{name}/hooks/{hook}"): SINGLE[("post", "/hooks/{name}")],
    ("get", "/runs/{wid}"): SINGLE[("get", "/runs/{run_id}")],
    ("post", "/homes/{name}/telegram"): SINGLE[("post", "/telegram")],
    ("post", "/homes/{name}/slack/events"): SINGLE[("post", "/slack/events")],
}
SECURITY = {name: openapi.SECURITY[name] for name in (
    "standardWebhooks", "svixWebhooks", "telegramSecret", "slackSignature")} | {
    "bearer": {"type": "http", "scheme": "bearer", "description": "AGENTD_FLEET_TOKEN"}}
PATTERNS = {"name": {"type": "string", "pattern": NAME.pattern.replace("\\Z", "$")},
            "hook": {"type": "string", "pattern": f"^{HOOK_NAME.pattern}$"},
            "wid": {"type": "string", "maxLength": 200}}


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document, with each operation's answers and security, and no 422 (the
    single-home bridge's openapi.complete, on the fleet's routes)."""
    doc.setdefault("components", {})["securitySchemes"] = SECURITY
    doc["components"].pop("schemas", None)  # only FastAPI's 422 models were there
    for path, item in doc["paths"].items():
        for method, op in item.items():
            security, answers = ANSWERS[(method, path)]
            guard = {s: b for s, b in openapi.GUARD.items() if path != "/healthz" or s != 503}
            op["responses"] = {str(s): openapi.response(s, b)
                               for s, b in sorted({**answers, **guard}.items())}
            op["security"] = security
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    param["schema"] = PATTERNS[param["name"]]
    return doc
