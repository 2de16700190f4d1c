"""The chat bridge: HTTP endpoints through which people and programs reach the agent.

Every exposed agent gateway has been an incident, so this one is closed by default: off
unless `[bridge] enabled = true` (or `agentd serve`), bound to 127.0.0.1, refusing to start
without a token, verifying every request before parsing it, and answering hostile input
with a 4xx, never a crash, a stack trace, a secret or a file path.

- server.py          the FastAPI app factory, error handlers, /healthz, uvicorn in the
                     caller's event loop (the daemon's, or `agentd serve`'s own);
- core.py            the Bridge: turns through the home's queue, run records, replies;
- openai_compat.py   POST /v1/chat/completions, GET /v1/models (Bearer token);
- chat_request.py    a chat request's input, history, sampling and tools, checked;
- conversations.py   which chat session a stateless client continues (its history);
- hooks.py           POST /hooks/{name} (Standard Webhooks), GET /runs/{id};
- adapters.py        POST /telegram and POST /slack/events (their parsers, shared with
                     the fleet), and their replies;
- delivery.py        those replies retried or given up, logged, and their state recorded;
- auth.py            Bearer, Standard Webhooks, Telegram and Slack checks (constant time);
- limits.py          per-IP and per-sender rate limits, the body cap, the outermost guard;
- connections.py     below HTTP: a deadline for request heads, connection caps per address
                     and in all (uvicorn's protocol, subclassed), the fd limit;
- http.py            error responses and strict JSON reading (content type, depth);
- secrets.py         where the token and secrets come from, and redaction of what goes out;
- store.py           delivery ids seen (idempotency) and run records, under .agentd/bridge/.

FastAPI, uvicorn and httpx are imported only here, and only when the bridge starts.
"""
