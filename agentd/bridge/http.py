"""Error responses and strict JSON reading, shared by every endpoint.

Every error has one shape, OpenAI's (so the OpenAI SDKs show its message):
`{"error": {"message": ..., "type": ..., "code": ...}}`. Messages are written here, never
taken from an exception, so no response carries a stack trace, a secret or a path.

JSON is read only after the request is authenticated, from the raw bytes already capped by
the body limit: the content type must be JSON (415), the bytes UTF-8 JSON without NaN or
Infinity, nested at most `max_json_depth` deep, every string valid Unicode (no lone
surrogate escapes) (400). Headers read as numbers take ASCII digits only (`ascii_int`).
"""

from __future__ import annotations

import json
import re
from typing import Any

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 408: "timeout", 413: "request_too_large",
         415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 502: "agent_error", 503: "overloaded_error"}


class ApiError(Exception):
    """Raised by endpoints; turned into a JSON error response by the app."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.kind = kind or TYPES.get(status, "invalid_request_error")


class BodyTooLarge(BaseException):
    """Raised from `receive` by the guard as soon as a body passes the cap. A
    BaseException, like CancelledError, so that no framework handler turns it into a 500
    on its way back to the guard, which answers 413."""


def error_body(status: int, message: str, code: str | None = None,
               kind: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind or TYPES.get(status, "error"),
                      "param": None, "code": code}}


UNAUTHORIZED = "unauthorized: missing or invalid credentials"


def unauthorized(bearer: bool = False) -> ApiError:
    return ApiError(401, UNAUTHORIZED, "unauthorized",
                    {"WWW-Authenticate": "Bearer"} if bearer else None)


def require_json(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/")
                                            and media.endswith("+json")):
        raise ApiError(415, "the body must be JSON (Content-Type: application/json)",
                       "unsupported_media_type")


_DIGITS = re.compile(r"[0-9]{1,18}")


def ascii_int(text: str | bytes | None) -> int | None:
    """A header's value as a number: 1-18 ASCII digits, nothing else (no sign, space or
    `_`), else None. `int()` and `str.isdigit()` also take other scripts' digits ("١٢",
    "¹²", the latter then failing in `int()`), which must be a refusal, not a crash."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if text is None or not _DIGITS.fullmatch(text):
        return None
    return int(text)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth without recursion (a hostile document must not exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _encodable(value: Any) -> bool:
    """False when a string of the document (key or value) cannot be written as UTF-8: a
    `\\ud800` escape decodes to a lone surrogate, which every later write (the run
    record, the transcript, git) would fail on. Only `\\u` escapes make one (raw surrogate
    bytes are not UTF-8), so documents without them are not walked."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_json(body: bytes, max_depth: int, want: type | None = dict) -> Any:
    """The document in `body`; ApiError 400 for anything malformed or too deep."""
    if not body.strip():
        raise ApiError(400, "the body is empty; send a JSON document", "invalid_json")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except RecursionError:
        raise ApiError(400, f"the JSON is nested too deeply (limit {max_depth})",
                       "json_too_deep") from None
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the body is not valid UTF-8 JSON", "invalid_json") from None
    if _depth(value) > max_depth:
        raise ApiError(400, f"the JSON is nested too deeply (limit {max_depth})",
                       "json_too_deep")
    if b"\\u" in body and not _encodable(value):
        raise ApiError(400, "the JSON holds invalid Unicode (an unpaired surrogate escape "
                       "such as \\ud800)", "invalid_unicode")
    if want is not None and not isinstance(value, want):
        raise ApiError(400, "the body must be a JSON object", "invalid_json")
    return value


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}
