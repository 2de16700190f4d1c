"""The bridge's OpenAPI document, `/openapi.json`: FastAPI's paths and request bodies, with
the answers each route really sends, the one error body, and how each is authenticated.

FastAPI documents a 422 that is never sent (validation errors answer 400) and nothing
else; here every operation lists its own statuses from `ANSWERS`, plus the ones the guard
(limits.py) gives any request: 429 (rate limit, with Retry-After), 413 (body over the
cap), 408 (body too slow) and, once shutting down, 503 (not /healthz). An operation
missing from `ANSWERS` is a bug (KeyError when the schema is built, so tests catch it).

The document is public, like /healthz: it is the same for every agentd of this version
(no model ids, hook names or settings of this home are in it), and schema tools fetch it
without credentials.
"""

from __future__ import annotations

from typing import Any

from agentd.config import HOOK_NAME

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": "null"}, "code": {"type": ["string", "null"]}}}}}
RETRY_AFTER = {"Retry-After": {  # not with a chat turn's own 429 (budget) or 503 (stopping)
    "description": "Seconds to wait before retrying (rate limits, a full queue, shutdown)",
    "required": False, "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
WHY = {400: "Malformed JSON or a body outside the schema", 401: "Missing or bad credentials",
       404: "No such thing here", 408: "The body arrived too slowly",
       413: "The body is over [bridge] max_body", 415: "The body is not JSON",
       429: "Too many requests (from this address or sender; or the budget is spent)",
       502: "The agent's turn failed", 503: "Busy (queue full) or shutting down"}
ACK = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}
CHAT = {"type": "object", "required": ["id", "object", "choices", "usage"], "properties": {
    "id": {"type": "string"}, "object": {"const": "chat.completion"},
    "created": {"type": "integer"}, "model": {"type": "string"},
    "choices": {"type": "array", "items": {"type": "object"}},
    "usage": {"type": "object"}, "agentd": {"type": "object"}}}
SSE_EVENT = {"type": "object", "required": ["data"], "description": "One server-sent event: "
             "a chat.completion.chunk, an error body, or [DONE]", "properties": {
                 "data": {"type": "string"}, "event": {"type": "string"}}}
RUN = {"type": "object", "required": ["id", "status"], "properties": {
    "id": {"type": "string"}, "status": {"type": "string"}}}

BEARER = [{"bearer": []}]
HOOK_AUTH = [{"standardWebhooks": []}, {"svixWebhooks": []}]
SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description":
               "AGENTD_BRIDGE_TOKEN (or [bridge] token_file)"},
    "standardWebhooks": {"type": "apiKey", "in": "header", "name": "webhook-signature",
                         "description": "Standard Webhooks: v1,<base64 HMAC-SHA256 of "
                         "\"id.timestamp.body\"> with webhook-id and webhook-timestamp"},
    "svixWebhooks": {"type": "apiKey", "in": "header", "name": "svix-signature",
                     "description": "The same, with the svix-id/svix-timestamp/"
                     "svix-signature names (senders hosted on Svix)"},
    "telegramSecret": {"type": "apiKey", "in": "header",
                       "name": "X-Telegram-Bot-Api-Secret-Token",
                       "description": "The secret_token given to setWebhook"},
    "slackSignature": {"type": "apiKey", "in": "header", "name": "X-Slack-Signature",
                       "description": "Slack v0 signature, with X-Slack-Request-Timestamp"},
}

# (method, path) -> (security, {status: body schema, or a (media type -> schema) map})
ANSWERS: dict[tuple[str, str], tuple[list[dict[str, list[str]]], dict[int, Any]]] = {
    ("get", "/healthz"): ([], {200: {"type": "object", "properties": {
        "ok": {"const": True}}}}),
    ("get", "/v1/models"): (BEARER, {200: {"type": "object", "required": ["data"],
                                           "properties": {"data": {"type": "array"}}},
                                     401: ERROR}),
    ("post", "/v1/chat/completions"): (BEARER, {
        200: {"application/json": CHAT, "text/event-stream": SSE_EVENT},
        400: ERROR, 401: ERROR, 404: ERROR, 415: ERROR, 502: ERROR}),
    ("post", "/hooks/{name}"): (HOOK_AUTH, {
        200: {"type": "object", "properties": {"status": {"const": "duplicate"}}},
        202: {"type": "object", "properties": {"status": {"const": "queued"}}},
        400: ERROR, 401: ERROR, 404: ERROR, 415: ERROR}),
    ("get", "/runs/{run_id}"): (BEARER, {200: RUN, 401: ERROR, 404: ERROR}),
    ("post", "/telegram"): ([{"telegramSecret": []}], {200: ACK, 400: ERROR, 401: ERROR,
                                                       404: ERROR, 415: ERROR}),
    ("post", "/slack/events"): ([{"slackSignature": []}], {
        200: {"type": "object"}, 400: ERROR, 401: ERROR, 404: ERROR, 415: ERROR}),
}
GUARD = {408: ERROR, 413: ERROR, 429: ERROR, 503: ERROR}


def response(status: int, body: Any) -> dict[str, Any]:
    media = body if "type" not in body else {"application/json": body}
    out: dict[str, Any] = {"description": WHY.get(status, "OK"), "content": {
        m: {"schema": s} for m, s in media.items()}}
    if status in (429, 503):
        out["headers"] = RETRY_AFTER
    return out


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document, with each operation's answers and security, and no 422."""
    doc.setdefault("components", {})["securitySchemes"] = SECURITY
    doc["components"].pop("schemas", None)  # only FastAPI's 422 models were there
    for path, item in doc["paths"].items():
        for method, op in item.items():
            security, answers = ANSWERS[(method, path)]
            guard = {s: b for s, b in GUARD.items() if path != "/healthz" or s != 503}
            op["responses"] = {str(s): response(s, b)
                               for s, b in sorted({**answers, **guard}.items())}
            op["security"] = security
            for param in op.get("parameters", []):
                if param["in"] == "path" and path == "/hooks/{name}":
                    param["schema"] = {"type": "string", "pattern": f"^{HOOK_NAME.pattern}$"}
    return doc
