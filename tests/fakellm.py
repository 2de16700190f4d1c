"""A scripted fake LLM server that speaks the real Anthropic and OpenAI wire protocols.

Tests point the real SDKs (and so our adapters) at it instead of mocking them: a mock
would only prove that our code agrees with our own idea of the SDK, while this proves it
agrees with the bytes the SDK actually parses. Stdlib only, bound to 127.0.0.1 on a free
port, served from a daemon thread.

    with FakeLLM({"text": "hi"}, {"error": 429}) as fake:
        client = anthropic.Anthropic(base_url=fake.anthropic_url, api_key="test")
        ...
        assert fake.requests[0].body["model"] == "..."

Each model request (`POST /v1/messages` or `POST /v1/chat/completions`) consumes the next
reply of the script, FIFO, whichever protocol asks. Reply dicts:

    {"text": "hi"}                                  plain answer (end_turn / stop)
    {"text": "...", "tool_calls": [{"name": "bash", "arguments": {...} or "raw json",
                                    "id": optional}]}   tool use (tool_use / tool_calls)
    {"usage": {"input", "output", "cache_read", "cache_write"}}   neutral meaning: input
                                                    EXCLUDES cached tokens; optional
    {"error": 429, "message": "...", "headers": {...}, "type": optional}   HTTP error
    {"raw": "not json", "status": 200, "content_type": "application/json"}   broken body
    {"empty": True}                                 an answer with no content at all
    {"delay": 0.2, ...}                             sleep first (any reply)
    {"hold": threading.Event(), ...}                wait for the test to set it first (at
                                                    most 60 s): a turn held mid-call
    {"stream_error": "message"}                     a streamed request gets a 200 stream
                                                    whose first event is an error object
    {"endless": True}                               text until the request's max_tokens, then
                                                    finish_reason length / max_tokens
    {"stall": threading.Event(), ...}               stream the first event, then wait for the
                                                    test (at most 60 s): a stalled stream
    {"drip": 0.05, "chunks": 40, ...}               the text in `chunks` pieces (default 3),
                                                    `drip` seconds apart: a slow, live stream

An exhausted script answers 500 "fakellm: script exhausted" (with `x-should-retry: false`
so the SDKs fail at once), so a test that under-scripts fails loudly. `auto=True` instead
answers forever: a `bash` tool call, then "DONE" once the request ends with a tool result.

`cache=True` makes the usage of replies without a scripted `usage` honest about prompt
caching (off by default: other tests rely on the plain numbers). Tokens are characters / 4.
Anthropic: the prompt is a sequence of blocks (tools, system, message blocks); an entry is
written at each `cache_control` breakpoint (the last block for a top-level one) whose
prefix has at least `cache_min` tokens, and read at the longest earlier-written prefix
ending at a breakpoint or up to 20 blocks before one, like the real API. OpenAI: the
longest common prefix with any earlier request, in steps of 128 tokens from `cache_min` on.

`quirks={...}` makes the server behave like a real OpenAI-compatible local server that
deviates from the API, as observed (see QUIRKS).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any

Reply = dict[str, Any]

# name -> what the server then does (each one observed on a real local server)
QUIRKS: dict[str, str] = {}
# -- quirks of llama-cpp-python and servers without tool calling (h-compat) ------------
QUIRKS.update({
    "tools-need-tool-choice": "ignores `tools` unless `tool_choice` is given: the model "
                              "answers in text without calling (llama-cpp-python's "
                              "chatml-function-calling)",
    "no-null-content": "HTTP 500 on an assistant message whose content is null "
                       "(llama-cpp-python)",
    "no-stream-with-tools": "an error object inside the open stream of a request with "
                            "tools and stream (llama-cpp-python)",
    "text-tool-calls": "no native tool calling: `tools` are ignored and scripted calls are "
                       "written as text, in the reply's `text_format`: hermes "
                       "(<tool_call>…</tool_call>, the default), bare ({\"name\", "
                       "\"arguments\"}) or fence (a bare object in a ```json fence)",
})

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded",
                500: "server_error"}


@dataclass
class Recorded:
    """One HTTP request as the fake received it (headers with lower-case keys)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


class FakeLLM:
    """The server plus its script; use as a context manager so the port is released."""

    def __init__(self, *replies: Reply, auto: bool = False, cache: bool = False,
                 cache_min: int = 1024, quirks: frozenset[str] | set[str] = frozenset()):
        self.auto = auto
        self.quirks = frozenset(quirks)  # behaviours of real local servers (QUIRKS below)
        self.cache, self.cache_min = cache, cache_min
        self._written: set[str] = set()  # Anthropic cache entries: prefix hashes
        self._prompts: list[list[str]] = []  # OpenAI: earlier requests, as prefix pieces
        self.models = ["fake-model"]  # what GET /v1/models lists
        self.owner = "fakellm"  # their owned_by, which real servers fill with their name
        self.key: str | None = None  # when set, GET /v1/models answers 401 to other keys
        self.requests: list[Recorded] = []
        self.uncapped: list[int] = []  # "endless": requests (by index) that sent no cap
        self._script: deque[Reply] = deque(replies)
        self._lock = threading.Lock()
        self._ids = count(1)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        port = self._server.server_address[1]
        self.anthropic_url = f"http://127.0.0.1:{port}"
        self.openai_url = f"{self.anthropic_url}/v1"
        threading.Thread(target=self._server.serve_forever, args=(0.01,), name="fakellm",
                         daemon=True).start()  # a short poll so close() returns at once

    def push(self, *replies: Reply) -> None:
        """Append replies to the script (a test can script as it goes)."""
        with self._lock:
            self._script.extend(replies)

    @property
    def pending(self) -> int:
        """How many scripted replies are still unused."""
        with self._lock:
            return len(self._script)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what to answer ------------------------------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def _next_reply(self, protocol: str, body: Any) -> Reply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if "endless" in self.quirks:
            return {"endless": True}
        if self.auto:
            return _auto_reply(protocol, body)
        return {"error": 500, "message": "fakellm: script exhausted",
                "headers": {"x-should-retry": "false"}}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):04d}"

    def cache_usage(self, protocol: str, body: dict[str, Any]) -> dict[str, int]:
        """input / cache_read / cache_write of a request under the `cache=True` model."""
        with self._lock:
            if protocol == "anthropic":
                return _anthropic_cache(self, body)
            return _openai_cache(self, body)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _anthropic_cache(fake: FakeLLM, body: dict[str, Any]) -> dict[str, int]:
    blocks: list[tuple[str, bool]] = []  # (block as text without its mark, marked)

    def add(block: Any, prefix: str = "") -> None:
        marked = isinstance(block, dict) and "cache_control" in block
        if isinstance(block, dict):
            block = {k: v for k, v in block.items() if k != "cache_control"}
        blocks.append((prefix + json.dumps(block, sort_keys=True), marked))

    for tool in body.get("tools") or []:
        add(tool)
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or []:
        add(block)
    for m in body.get("messages") or []:
        content = m.get("content")
        for block in [content] if isinstance(content, str) else content or []:
            add(block, m.get("role", "") + ":")
    if body.get("cache_control") and blocks:
        blocks[-1] = (blocks[-1][0], True)
    hashes, ends, h, total = [], [], hashlib.sha256(), 0
    for text, _ in blocks:
        h.update(text.encode())
        hashes.append(h.hexdigest())
        total += _tokens(text)
        ends.append(total)
    marks = [i for i, (_, marked) in enumerate(blocks) if marked]
    read = max((ends[j] for i in marks for j in range(max(0, i - 19), i + 1)
                if hashes[j] in fake._written), default=0)
    write = 0
    for i in marks:
        if ends[i] >= fake.cache_min and hashes[i] not in fake._written:
            fake._written.add(hashes[i])
            write = max(write, ends[i] - read)
    return {"input": total - read - write, "cache_read": read, "cache_write": write}


def _openai_cache(fake: FakeLLM, body: dict[str, Any]) -> dict[str, int]:
    pieces = [json.dumps(body.get("tools") or [], sort_keys=True)]
    pieces += [json.dumps(m, sort_keys=True) for m in body.get("messages") or []]
    total = sum(_tokens(p) for p in pieces)
    best = 0
    for earlier in fake._prompts:
        chars = 0
        for a, b in zip(pieces, earlier, strict=False):
            if a != b:
                chars += next((i for i, (x, y) in enumerate(zip(a, b, strict=False))
                               if x != y), min(len(a), len(b)))
                break
            chars += len(a)
        best = max(best, chars // 4)
    fake._prompts.append(pieces)
    read = best // 128 * 128 if best >= fake.cache_min else 0
    read = min(read, total)
    return {"input": total - read, "cache_read": read, "cache_write": 0}


def _auto_reply(protocol: str, body: Any) -> Reply:
    """The demo agent: one shell command, then DONE once it sees the command's result."""
    msgs = body.get("messages") if isinstance(body, dict) else None
    last = msgs[-1] if msgs else {}
    if protocol == "openai":
        after_tool = last.get("role") == "tool"
    else:
        content = last.get("content")
        after_tool = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    if after_tool:
        return {"text": "DONE"}
    return {"tool_calls": [{"name": "bash", "arguments": {"command": "echo hi > hello.txt"}}]}


def _pieces(s: str, n: int = 3) -> list[str]:
    """Split `s` into up to n chunks, as a real stream would deliver it."""
    size = max(1, -(-len(s) // n))
    return [s[i:i + size] for i in range(0, len(s), size)]


def _calls(fake: FakeLLM, reply: Reply, prefix: str) -> list[tuple[str, str, str, Any]]:
    """(id, name, arguments as JSON text, arguments as a value) for each scripted call.
    A str `arguments` is sent verbatim, so tests can send malformed JSON."""
    out = []
    for c in reply.get("tool_calls") or []:
        args = c.get("arguments", {})
        if isinstance(args, str):
            try:
                value = json.loads(args)
            except ValueError:
                value = args
            text = args
        else:
            text, value = json.dumps(args), args
        out.append((c.get("id") or fake.new_id(prefix), c["name"], text, value))
    return out


def _usage(reply: Reply, raw: bytes) -> dict[str, int]:
    """Neutral usage: the script's numbers, else plausible ones derived from the sizes."""
    out_size = len(reply.get("text") or "") + len(json.dumps(reply.get("tool_calls") or []))
    u = {"input": max(1, len(raw) // 4), "output": max(1, out_size // 4),
         "cache_read": 0, "cache_write": 0}
    u.update(reply.get("usage") or {})
    return u


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {payload}\n\n".encode()


# -- quirks of real OpenAI-compatible servers (h-compat) -------------------------------


def _quirk_reply(quirks: frozenset[str], reply: Reply, body: dict[str, Any]) -> Reply:
    """The reply as a server with `quirks` would give it for this request (see QUIRKS)."""
    messages = body.get("messages") or []
    if "no-null-content" in quirks and any(
            isinstance(m, dict) and m.get("role") == "assistant" and m.get("content") is None
            for m in messages):
        return {"error": 500, "message": 'TypeError: can only concatenate str (not '
                '"NoneType") to str'}
    tools = bool(body.get("tools"))
    if "no-stream-with-tools" in quirks and tools and body.get("stream"):
        return {"stream_error": "Expected a function call in the completion"}
    if "tools-need-tool-choice" in quirks and tools and "tool_choice" not in body \
            and reply.get("tool_calls"):
        return {"text": "I would run a command, but I have no tools."}
    if "text-tool-calls" in quirks and reply.get("tool_calls"):
        return {"text": _calls_as_text(reply)}
    return reply


def _calls_as_text(reply: Reply) -> str:
    """A reply's scripted tool calls written as text, in its `text_format`."""
    objs = []
    for c in reply["tool_calls"]:
        args = c.get("arguments", {})
        args_text = args if isinstance(args, str) else json.dumps(args)
        objs.append(f'{{"name": {json.dumps(c["name"])}, "arguments": {args_text}}}')
    kind = reply.get("text_format", "hermes")
    lead = reply.get("text", "")
    if kind == "hermes":
        body = "\n".join(f"<tool_call>\n{o}\n</tool_call>" for o in objs)
    elif kind == "bare":
        body = objs[0] if len(objs) == 1 else "[" + ", ".join(objs) + "]"
    elif kind == "fence":
        body = "```json\n" + objs[0] + "\n```"
    else:
        raise ValueError(f"unknown text_format {kind!r}")
    return f"{lead}\n{body}".strip()


# -- quirks and replies of bounded calls: output caps, usage, endless and stalled streams --

QUIRKS.update({
    # llama-cpp-python's server (and others) when streaming: no usage chunk, whatever
    # stream_options.include_usage asks
    "no-usage-in-stream": "a stream never carries usage, even with include_usage",
    # a small model that never emits its end token: it talks until max_tokens
    "endless": "every reply is text until the request's max_tokens, then finish_reason "
               "length (max_tokens on the Messages API); with no cap, ENDLESS_LIMIT tokens, "
               "and the request's index goes to fake.uncapped",
})

ENDLESS_LIMIT = 20_000  # tokens an uncapped "endless" reply stops at (a real one would not)


def endless_reply(fake: FakeLLM, reply: Reply, body: dict[str, Any]) -> Reply:
    """The reply of a model that only stops at the output cap: one 4-character token per
    word, as many as the request allows, in pieces of about 64 tokens."""
    cap = body.get("max_tokens") or body.get("max_completion_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        with fake._lock:
            fake.uncapped.append(len(fake.requests) - 1)
        cap = ENDLESS_LIMIT
    text = "blah" * cap
    return {"chunks": max(3, cap // 64), **reply, "text": text, "finish": "length",
            "usage": {"output": cap, **(reply.get("usage") or {})}}


# -- Anthropic Messages ----------------------------------------------------------------


def anthropic_response(fake: FakeLLM, reply: Reply, body: dict[str, Any], raw: bytes,
                       stream: bool) -> tuple[dict[str, Any], list[bytes]]:
    """The JSON body (non-streaming) and the SSE events (streaming) for one reply."""
    u = _usage(reply, raw)
    usage = {"input_tokens": u["input"], "output_tokens": u["output"],
             "cache_creation_input_tokens": u["cache_write"],
             "cache_read_input_tokens": u["cache_read"]}
    text = "" if reply.get("empty") else reply.get("text") or ""
    calls = _calls(fake, reply, "toolu_fake")
    stop = "max_tokens" if reply.get("finish") == "length" else (
        "tool_use" if calls else "end_turn")
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": i, "name": n, "input": v} for i, n, _, v in calls]
    msg = {"id": fake.new_id("msg_fake"), "type": "message", "role": "assistant",
           "model": body.get("model", "fake-model"), "content": content, "stop_reason": stop,
           "stop_sequence": None, "usage": usage}
    if not stream:
        return msg, []
    start = {**msg, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [_sse("message_start", {"type": "message_start", "message": start}),
              _sse("ping", {"type": "ping"})]
    for index, block in enumerate(content):
        if block["type"] == "text":
            first, deltas = {"type": "text", "text": ""}, [
                {"type": "text_delta", "text": p}
                for p in _pieces(block["text"], reply.get("chunks", 3))]
        else:
            first = {**block, "input": {}}
            json_text = calls[index - (1 if text else 0)][2]
            deltas = [{"type": "input_json_delta", "partial_json": p}
                      for p in ["", *_pieces(json_text)]]
        events.append(_sse("content_block_start", {"type": "content_block_start",
                                                   "index": index, "content_block": first}))
        events += [_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": d}) for d in deltas]
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(_sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop, "stop_sequence": None},
                                         "usage": {"output_tokens": u["output"]}}))
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return msg, events


# -- OpenAI Chat Completions -----------------------------------------------------------


def openai_response(fake: FakeLLM, reply: Reply, body: dict[str, Any], raw: bytes,
                    stream: bool) -> tuple[dict[str, Any], list[bytes]]:
    """The JSON body (non-streaming) and the SSE chunks (streaming) for one reply."""
    u = _usage(reply, raw)
    # prompt_tokens counts every prompt token, cached or not; the details break it down
    prompt = u["input"] + u["cache_read"] + u["cache_write"]
    usage = {"prompt_tokens": prompt, "completion_tokens": u["output"],
             "total_tokens": prompt + u["output"],
             "prompt_tokens_details": {"cached_tokens": u["cache_read"], "audio_tokens": 0,
                                       "cache_write_tokens": u["cache_write"]},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
    text = "" if reply.get("empty") else reply.get("text") or ""
    calls = _calls(fake, reply, "call_fake")
    finish = reply.get("finish") or ("tool_calls" if calls else "stop")
    base = {"id": fake.new_id("chatcmpl-fake"), "created": int(time.time()),
            "model": body.get("model", "fake-model"), "system_fingerprint": None}
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": text or None,
                                   "refusal": None}
        if calls:
            message["tool_calls"] = [{"id": i, "type": "function",
                                      "function": {"name": n, "arguments": t}}
                                     for i, n, t, _ in calls]
        return {**base, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]}, []

    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    with_usage = with_usage and "no-usage-in-stream" not in fake.quirks

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        c = {**base, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        return _sse(None, {**c, "usage": None} if with_usage else c)

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": p}) for p in _pieces(text, reply.get("chunks", 3))]
    for index, (cid, name, args, _) in enumerate(calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": cid, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
                   for p in _pieces(args)]
    chunks.append(chunk({}, finish))
    if with_usage:
        chunks.append(_sse(None, {**base, "object": "chat.completion.chunk", "choices": [],
                                  "usage": usage}))
    chunks.append(_sse(None, "[DONE]"))
    return {}, chunks


def error_body(protocol: str, status: int, message: str, kind: str | None) -> dict[str, Any]:
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    kind = kind or ERROR_TYPES.get(status, fallback)
    if protocol == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message},
                "request_id": "req_fake"}
    return {"error": {"message": message, "type": kind, "param": None,
                      "code": OPENAI_CODES.get(status)}}


# -- HTTP ------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    fake: FakeLLM  # the handlers' way back to the script

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its keep-alive connection is normal; anything else is not."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like the real APIs; SSE closes the connection
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr lines; tests read `fake.requests` instead."""

    def _receive(self) -> tuple[FakeLLM, str, Any, bytes]:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake._record(Recorded(self.command, path, headers, body, raw))
        return fake, path, body, raw

    def do_GET(self) -> None:
        fake, path, _, _ = self._receive()
        if path != "/v1/models":
            return self._error("openai", 404, f"fakellm: no route GET {path}", None)
        given = self.headers.get("x-api-key") or self.headers.get(
            "authorization", "").removeprefix("Bearer ")
        if fake.key is not None and given != fake.key:
            protocol = "anthropic" if "anthropic-version" in self.headers else "openai"
            return self._error(protocol, 401, "fakellm: invalid api key", None)
        if "anthropic-version" in self.headers:
            data = [{"type": "model", "id": m, "display_name": m,
                     "created_at": "2025-01-01T00:00:00Z"} for m in fake.models]
            return self._json(200, {"data": data, "has_more": False,
                                    "first_id": fake.models[0], "last_id": fake.models[-1]})
        self._json(200, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": fake.owner}
            for m in fake.models]})

    def do_POST(self) -> None:
        fake, path, body, raw = self._receive()
        routes = {"/v1/messages": ("anthropic", anthropic_response),
                  "/v1/chat/completions": ("openai", openai_response)}
        if path not in routes:
            protocol = "anthropic" if "anthropic-version" in self.headers else "openai"
            return self._error(protocol, 404, f"fakellm: no route POST {path}", None)
        protocol, respond = routes[path]
        reply = fake._next_reply(protocol, body)
        try:
            self._answer(fake, protocol, respond, reply, body, raw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # a broken script: say so in the reply rather than dropping the connection,
            # which the SDK would report (after retrying) as an unreachable server
            self._error(protocol, 500, f"fakellm: bad reply {reply!r}: {e!r}", None,
                        {"x-should-retry": "false"})

    def _answer(self, fake: FakeLLM, protocol: str, respond: Any, reply: Reply, body: Any,
                raw: bytes) -> None:
        time.sleep(reply.get("delay", 0))
        if "hold" in reply:
            reply["hold"].wait(60)
        if "error" in reply:
            return self._error(protocol, reply["error"], reply.get("message", "fakellm error"),
                               reply.get("type"), reply.get("headers"))
        if "raw" in reply:
            return self._send(reply.get("status", 200), reply["raw"].encode(),
                              reply.get("content_type", "application/json"),
                              reply.get("headers"))
        request = body if isinstance(body, dict) else {}
        if protocol == "openai" and fake.quirks:
            reply = _quirk_reply(fake.quirks, reply, request)
            if "error" in reply:
                return self._error(protocol, reply["error"], reply["message"], None)
        if reply.get("endless"):
            reply = endless_reply(fake, reply, request)
        if "stream_error" in reply and request.get("stream"):
            return self._stream_error(reply["stream_error"])
        if fake.cache and "usage" not in reply:
            reply = {**reply, "usage": fake.cache_usage(protocol, request)}
        stream = bool(request.get("stream"))
        whole, events = respond(fake, reply, request, raw, stream)
        if not stream:
            return self._json(200, whole)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for i, event in enumerate(events):
            if i == 1 and "stall" in reply:
                reply["stall"].wait(60)
            if i and reply.get("drip"):
                time.sleep(reply["drip"])
            self.wfile.write(event)
            self.wfile.flush()
        self.close_connection = True

    def _stream_error(self, message: str) -> None:
        """A 200 event stream whose first event is an error object, then the end."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(_sse(None, {"error": {"message": message, "type": "server_error",
                                               "code": 500}}))
        self.wfile.flush()
        self.close_connection = True

    def _error(self, protocol: str, status: int, message: str, kind: str | None,
               headers: dict[str, str] | None = None) -> None:
        body = json.dumps(error_body(protocol, status, message, kind)).encode()
        self._send(status, body, "application/json", headers)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("request-id", "req_fake")
        self.send_header("x-request-id", "req_fake")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
