"""`agentd fleet serve` for real: the process, real HTTP on loopback, real PostgreSQL, a
real DBOS worker whose turn is scripted (tests/fleetfake.py), and the real clients: the
`openai` SDK for chat, `standardwebhooks` for signed events."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from bridgekit import SECRET, TOKEN
from daemonkit import wait_for
from fleetfake import copy_db, start_worker
from standardwebhooks import Webhook

from agentd.fleet import db
from agentd.newhome import init_home
from tests.conftest import agentd
from tests.pgkit import PgCluster, requires_postgres

pytestmark = requires_postgres
AGENTD = [sys.executable, "-m", "agentd"]
ST = Path(sys.executable).with_name("st")
PATHS = {"/healthz", "/v1/models", "/v1/chat/completions", "/homes/{name}/hooks/{hook}",
         "/runs/{wid}", "/homes/{name}/telegram", "/homes/{name}/slack/events"}
OWN = "whsec_" + base64.b64encode(b"beta's own hook secret 0123").decode()  # beta/own's
HOOKS = """
[bridge]
max_event_chars = 300

[bridge.hooks.github]
prompt = "Triage this {name} event: {event}"
callback_url = "http://127.0.0.1:%d/cb"
secret_env = "AGENTD_FLEET_TOKEN"  # a home names no secret of the serving machine

[bridge.telegram]
enabled = true
chats = [42]
owners = [7]
api_base = "http://127.0.0.1:1"  # the operator's api_base counts, not the home's

[bridge.slack]
enabled = true
users = ["U1", "U2"]
owners = ["U1"]
"""
SLACK_SIGNING = "slack-signing-secret-0123456789"
SLACK_BOT = "xoxb-fleet-test"
TG_SECRET = "telegram-secret-token-0123456789"
BOT = "123:bot-token-abcdef"


class Receiver:
    """A callback_url on loopback: keeps each POST's headers and body."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.paths: list[str] = []
        paths = self.paths
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                paths.append(self.path)
                answer = b'{"ok": true}'
                self.send_response(200)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Served:
    """`agentd fleet serve --port 0` and what the tests need of it."""

    def __init__(self, url: str, tmp: Path, hold: Path, receiver: Receiver):
        self.db, self.hold, self.tmp, self.receiver = url, hold, tmp, receiver
        self.log = tmp / "serve.log"
        secrets = tmp / "hook-secrets.toml"
        secrets.write_text(f'[beta]\nown = "{OWN}"\n\n[alpha.telegram]\nbot_token = "{BOT}"\n'
                           f'secret = "{TG_SECRET}"\n'
                           f'api_base = "http://127.0.0.1:{receiver.port}"\n'
                           f'\n[alpha.slack]\nsigning_secret = "{SLACK_SIGNING}"\n'
                           f'bot_token = "{SLACK_BOT}"\n'
                           f'api_base = "http://127.0.0.1:{receiver.port}/api"\n')
        env = {**os.environ, "AGENTD_FLEET_TOKEN": TOKEN, "AGENTD_FLEET_WEBHOOK_SECRET": SECRET,
               "AGENTD_FLEET_HOOK_SECRETS": str(secrets), "XDG_CACHE_HOME": str(tmp / "cache")}
        with self.log.open("w") as f:
            self.proc = subprocess.Popen([*AGENTD, "fleet", "serve", "--port", "0", "--db", url],
                                         env=env, stdout=subprocess.DEVNULL, stderr=f)
        found = wait_for(lambda: re.search(r"listening on (http://\S+)", self.log.read_text())
                         or self.proc.poll() is not None, 180, "fleet serve to listen")
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text())
        assert not isinstance(found, bool)
        self.url = found.group(1)
        self.openai = openai.OpenAI(base_url=f"{self.url}/v1", api_key=TOKEN, max_retries=0,
                                    timeout=60)

    def requests(self) -> list[dict[str, Any]]:
        path = self.hold / "requests.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def served(pg_cluster: PgCluster, fleet_template: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    url = copy_db(pg_cluster.libpq_url("postgres"), fleet_template)  # as `fleet init` makes
    for key in ("bridge_ip_rate", "bridge_ip_burst"):  # schemathesis sends hundreds at once
        assert agentd("fleet", "set", key, "1000", "--db", url).exit_code == 0
    receiver = Receiver()
    for name in ("alpha", "beta"):
        work = tmp / name
        init_home(work)
        if name == "alpha":
            with (work / "agentd.toml").open("a") as f:
                f.write(HOOKS % receiver.port)
            git(work, "commit", "-qam", "hooks")
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp / f"{name}.git")],
                       check=True)
        r = agentd("fleet", "add", name, str(tmp / f"{name}.git"), "--db", url)
        assert r.exit_code == 0, r.stderr
    worker, hold = start_worker(url, tmp)
    try:
        s = Served(url, tmp, hold, receiver)
        try:
            yield s
        finally:
            code = s.stop()
            assert code == 0 and "bridge: stopped" in s.log.read_text(), s.log.read_text()
    finally:
        worker.terminate()
        worker.wait(30)
        receiver.server.shutdown()


def git(where: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(where), "-c", "user.name=t", "-c",
                           "user.email=t@t", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_chat_with_a_home_through_the_openai_sdk(served: Served) -> None:
    client = served.openai
    assert sorted(m.id for m in client.models.list()) == ["agentd/alpha", "agentd/beta"]
    r = client.chat.completions.create(
        model="agentd/alpha", user="ann", temperature=0.2,
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "say:hello from the fleet"}])
    assert r.choices[0].message.content == "hello from the fleet"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (100, 7)
    asked = served.requests()[-1]
    assert asked["home"] == "alpha" and asked["workflow_id"].startswith("run:alpha:")
    req = asked["request"]
    assert (req["task"], req["trigger"], req["session"]) == (
        "say:hello from the fleet", "chat:ann", "chat-ann")
    assert req["sampling"]["temperature"] == 0.2

    stream = client.chat.completions.create(
        model="agentd/beta", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "say:streamed words"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed words"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert served.requests()[-1]["home"] == "beta"
    stream = client.chat.completions.create(
        model="agentd/beta", stream=True, extra_headers={"x-agentd-show-tools": "1"},
        messages=[{"role": "user", "content": "say:with tools"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "`bash echo beta`\n\nwith tools"


def test_chat_refusals_are_openai_errors(served: Served) -> None:
    client = served.openai
    n = len(served.requests())
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="agentd/gamma",
                                       messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="agentd/alpha", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="agentd/alpha", messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong-token-0123456789",
                      max_retries=0).models.list()
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="agentd/alpha",
                                       messages=[{"role": "user", "content": "fail:no model"}])
    assert failed.value.status_code == 502 and "no model" in str(failed.value.body)
    assert len(served.requests()) == n + 1  # only the last one became a turn

    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for body, ctype, status in ((b"{nope", "application/json", 400),
                                    (b"[]", "application/json", 400),
                                    (b'{"model": "agentd/alpha"}', "text/plain", 415),
                                    (b"x" * 2_000_000, "application/json", 413)):
            r = http.post("/v1/chat/completions", content=body,
                          headers={**auth, "content-type": ctype})
            assert r.status_code == status, (body[:20], r.text)
            assert set(r.json()["error"]) >= {"message", "type", "code"}
        assert http.get("/healthz").json() == {"ok": True}
        assert http.get("/v1/models").status_code == 401


def signed(body: bytes, msg_id: str, secret: str = SECRET) -> dict[str, str]:
    when = datetime.now(tz=UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
            "content-type": "application/json"}


def test_signed_webhooks_queue_one_turn_per_delivery(served: Served) -> None:
    body = json.dumps({"action": "opened", "number": 7}).encode()
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=served.url, timeout=30) as http:
        r = http.post("/homes/alpha/hooks/github", content=body, headers=signed(body, "msg_a"))
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        assert rid.startswith("run:alpha:") and r.json()["status"] == "queued"
        again = http.post("/homes/alpha/hooks/github", content=body,
                          headers=signed(body, "msg_a"))
        assert (again.status_code, again.json()) == (200, {"id": rid, "status": "duplicate"})

        def done() -> dict[str, Any] | None:
            got = http.get(f"/runs/{rid}", headers=auth).json()
            return got if got["status"] == "success" else None

        run = wait_for(done, 60, "the webhook's turn")
        assert run["home"] == "alpha" and run["result"]["status"] == "ok"
        assert '"number": 7' in run["result"]["text"]
        turns = [x for x in served.requests() if x["workflow_id"] == rid]
        assert len(turns) == 1
        req = turns[0]["request"]
        assert (req["trigger"], req["profile"]) == ("webhook:github", "untrusted")
        assert "<untrusted-" in req["task"]

        assert http.get(f"/runs/{rid}").status_code == 401
        assert http.get("/runs/run:alpha:nope", headers=auth).status_code == 404
        bad = signed(body, "msg_b", "whsec_" + "QUJD" * 8)
        assert http.post("/homes/alpha/hooks/github", content=body,
                         headers=bad).status_code == 401
        assert http.post("/homes/alpha/hooks/github", content=body).status_code == 401
        assert http.post("/homes/gamma/hooks/github", content=body,
                         headers=signed(body, "msg_c")).status_code == 404
        assert http.post("/homes/alpha/hooks/bad%20name", content=body,
                         headers=signed(body, "msg_d")).status_code == 404
        garbage = b"{not json"
        assert http.post("/homes/alpha/hooks/github", content=garbage,
                         headers=signed(garbage, "msg_e")).status_code == 400
        r = http.post("/homes/alpha/hooks/github", content=body,
                      headers={**signed(body, "msg_f"), "content-type": "text/plain"})
        assert r.status_code == 415, r.text
        huge = b'{"x": "' + b"y" * 2_000_000 + b'"}'
        r = http.post("/homes/alpha/hooks/github", content=huge, headers=signed(huge, "msg_g"))
        assert r.status_code == 413 and set(r.json()["error"]) >= {"message", "code"}
        deep = b"[" * 5000 + b"]" * 5000
        r = http.post("/homes/alpha/hooks/github", content=deep, headers=signed(deep, "msg_h"))
        assert r.status_code == 400, r.text
    # the refusals above never reached the queue
    assert [x["workflow_id"] for x in served.requests()].count(rid) == 1
    assert not any(x["request"]["trigger"] == "webhook:github" and x["workflow_id"] != rid
                   for x in served.requests())


def test_serve_needs_a_token_sound_hook_secrets_and_its_tables(
        pg_cluster: PgCluster, fleet_template: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    url = copy_db(pg_cluster.libpq_url("postgres"), fleet_template)  # as `fleet init` makes
    with db.connect(url) as conn:  # a fleet set up by an agentd before the table
        conn.execute("DROP TABLE agentd_fleet.conversations")
    bad = tmp_path / "secrets.toml"
    bad.write_text("[alpha]\ngh = 'short'\n")
    for extra, why in (({}, "AGENTD_FLEET_TOKEN"),
                       ({"AGENTD_FLEET_HOOK_SECRETS": str(bad)}, "alpha.gh is too short"),
                       ({"AGENTD_FLEET_WEBHOOK_SECRET": SECRET}, "`agentd fleet init` again")):
        token = {"AGENTD_FLEET_TOKEN": TOKEN} if extra else {}
        r = subprocess.run([*AGENTD, "fleet", "serve", "--port", "0", "--db", url],
                           env={**env, **token, **extra}, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()] and why in r.stderr


@pytest.mark.parametrize(("text", "why"), [
    (None, "cannot read"), ("[alpha\n", "cannot read"), ("[Bad]\ngh = 'x'\n", "[Bad]"),
    ("[alpha]\n'a b' = 'x'\n", "alpha.a b must be"), ("[alpha]\ngh = 3\n", "alpha.gh"),
    ("[alpha.slack]\nbot_token = 'xoxb-1'\n", "[alpha.slack] takes signing_secret"),
    ("[alpha.telegram]\nbot_token = '1:abcdefgh'\nsecret = 's'\n", "a secret of 16"),
    ("[alpha.telegram]\nbot_token = '1:abcdefgh'\nsecret = '" + "s" * 16 + "'\n"
     "api_base = 'file:///x'\n", "api_base must be an http(s) URL")])
def test_bad_hook_secret_files_are_one_line(text: str | None, why: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from agentd.errors import AgentdError
    from agentd.fleet.bridge import hook_keys
    from agentd.fleet.homeconf import load_secrets

    path = tmp_path / "secrets.toml"
    if text is not None:
        path.write_text(text)
    monkeypatch.setenv("AGENTD_FLEET_HOOK_SECRETS", str(path))
    with pytest.raises(AgentdError, match=re.escape(why)) as e:
        load_secrets(hook_keys)
    assert "\n" not in str(e.value)
    path.write_text(f'[alpha]\ngh = "{OWN} {SECRET}"\n')
    assert [len(k) for k in load_secrets(hook_keys).hooks[("alpha", "gh")]] == [27, 31]


def test_a_homes_agentd_toml_is_read_the_confined_way(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink or a broken file at agentd.toml gives the defaults and one warning; a
    head is read once."""
    from agentd.fleet import homeconf, workspace

    work = tmp_path / "home"
    init_home(work)
    (work / "agentd.toml").unlink()
    (work / "agentd.toml").symlink_to("/etc/passwd")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "a link")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(tmp_path / "h.git")],
                   check=True)
    warned: list[str] = []
    homes = homeconf.HomeSettings(tmp_path / "cache", warned.append)
    row = db.HomeRow("h", str(tmp_path / "h.git"), "main", None, None, None)
    assert homes.get(row).bridge.hooks == {}
    assert len(warned) == 1 and "agentd.toml" in warned[0]
    (work / "agentd.toml").unlink()
    (work / "agentd.toml").write_text("[bridge\n")
    git(work, "commit", "-qam", "broken")
    git(work, "push", "-q", str(tmp_path / "h.git"), "HEAD:main")
    head = git(work, "rev-parse", "HEAD")
    row.head = head  # recorded by a worker: fetched, since this mirror is older
    assert homes.get(row).bridge.max_event_chars == 50_000
    assert len(warned) == 2 and head[:12] in warned[1]
    calls: list[str] = []
    real = workspace.checkout
    monkeypatch.setattr(workspace, "checkout",
                        lambda *a, **k: calls.append("x") or real(*a, **k))
    homes.get(row)
    assert calls == [] and len(warned) == 2


def test_hooks_follow_the_homes_own_settings(served: Served) -> None:
    """[bridge.hooks.NAME] of the home's agentd.toml at its recorded head: the prompt, the
    event cap, the callback (signed like the delivery); per-hook secrets are the
    operator's (AGENTD_FLEET_HOOK_SECRETS), never a variable the home names."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"action": "labeled", "blob": "x" * 1000}).encode()
    with httpx.Client(base_url=served.url, timeout=30) as http:
        r = http.post("/homes/alpha/hooks/github", content=body, headers=signed(body, "set_1"))
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        wait_for(lambda: http.get(f"/runs/{rid}", headers=auth).json()["status"] == "success",
                 60, "the hook's turn")
        req = next(x["request"] for x in served.requests() if x["workflow_id"] == rid)
        assert req["task"].startswith("Triage this github event: The JSON of webhook event")
        assert "(cut: the event is 1,037 characters)" in req["task"]

        headers, sent = wait_for(lambda: next(
            (g for g in served.receiver.got if rid.encode() in g[1]), None), 60, "the callback")
        assert headers["webhook-id"] == f"msg_{rid.replace(':', '_')}"
        payload = Webhook(SECRET).verify(sent, headers)
        assert payload["type"] == "agentd.run.finished"
        data = payload["data"]
        assert (data["id"], data["home"], data["hook"], data["status"]) == (
            rid, "alpha", "github", "done")
        assert data["result"].startswith("done: Triage this github event")

        # The owner changes the prompt; once the fleet records the new head, it applies.
        work = served.tmp / "alpha-edit"
        git(served.tmp, "clone", "-q", str(served.tmp / "alpha.git"), str(work))
        toml = (work / "agentd.toml").read_text().replace("Triage this", "Look at this")
        (work / "agentd.toml").write_text(toml)
        git(work, "commit", "-qam", "new prompt")
        git(work, "push", "-q", "origin", "HEAD:main")
        with db.connect(served.db) as conn:
            db.set_head(conn, "alpha", git(work, "rev-parse", "HEAD"))
        r = http.post("/homes/alpha/hooks/github", content=body, headers=signed(body, "set_2"))
        assert r.status_code == 202, r.text
        wait_for(lambda: any(x["workflow_id"] == r.json()["id"] for x in served.requests()),
                 60, "the second turn")
        req = next(x["request"] for x in served.requests() if x["workflow_id"] == r.json()["id"])
        assert req["task"].startswith("Look at this github event:")

        # beta's hook "own" takes only its own secret; other hooks the fleet's.
        n = len(served.requests())
        assert http.post("/homes/beta/hooks/own", content=body,
                         headers=signed(body, "own_1")).status_code == 401
        assert http.post("/homes/beta/hooks/own", content=body,
                         headers=signed(body, "own_2", OWN)).status_code == 202
        assert http.post("/homes/beta/hooks/other", content=body,
                         headers=signed(body, "own_3", OWN)).status_code == 401
        as_token = "whsec_" + base64.b64encode(TOKEN.encode()).decode()
        r = http.post("/homes/alpha/hooks/github", content=body,
                      headers=signed(body, "own_4", as_token))
        assert r.status_code == 401  # secret_env in agentd.toml named the token: ignored
    wait_for(lambda: len(served.requests()) == n + 1, 60, "beta's turn")
    assert "Traceback" not in served.log.read_text()


def test_a_stateless_client_continues_its_conversation(served: Served) -> None:
    """No `user`, no session header: the history the openai SDK sends back names the
    session (kept in PostgreSQL), as with `agentd serve`; an edited history starts anew."""
    chat = served.openai.chat.completions

    def ask(messages: list[dict[str, str]], **kw: Any) -> tuple[str, str]:
        raw = chat.with_raw_response.create(model="agentd/beta", messages=messages, **kw)
        reply = raw.parse()
        if kw.get("stream"):
            text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        else:
            text = reply.choices[0].message.content or ""
        return raw.headers["x-agentd-session"], text

    first = [{"role": "system", "content": "be brief"},
             {"role": "user", "content": "say:the capital is Paris"}]
    s1, a1 = ask(first)
    assert a1 == "the capital is Paris"
    second = [*first, {"role": "assistant", "content": a1},
              {"role": "user", "content": "say:and it is in France"}]
    s2, a2 = ask(second)
    assert s2 == s1 and a2 == "and it is in France"
    last = served.requests()[-1]["request"]
    assert (last["task"], last["session"]) == ("say:and it is in France", f"chat-{s1}")
    # a third turn, streamed, whitespace re-wrapped by the client: still the same session
    third = [*second, {"role": "assistant", "content": "and it is\nin  France"},
             {"role": "user", "content": "say:streamed on"}]
    s3, a3 = ask(third, stream=True)
    assert (s3, a3) == (s1, "streamed on")
    s4, _ = ask([*third, {"role": "assistant", "content": a3},
                 {"role": "user", "content": "say:four"}])
    assert s4 == s1
    # an edited answer, or the same first message again, is a new conversation
    edited = [*first, {"role": "assistant", "content": "Lyon"},
              {"role": "user", "content": "say:x"}]
    s5, _ = ask(edited)
    s6, _ = ask(first)
    assert len({s1, s5, s6}) == 3
    # a named conversation is its name, whatever the history
    raw = chat.with_raw_response.create(model="agentd/beta", user="bob", messages=second)
    assert raw.headers["x-agentd-session"] == "bob"


def test_a_new_conversation_prunes_the_homes_oldest(served: Served) -> None:
    """The single-home index keeps a home's MAX_SESSIONS latest sessions; so does
    agentd_fleet.conversations: a new session's row drops the oldest, not the recent
    ones, and not another home's."""
    from agentd.bridge.conversations import MAX_SESSIONS

    with db.connect(served.db) as conn:
        conn.execute(  # old sessions of beta, old-0 the oldest, and one of alpha older still
            "INSERT INTO agentd_fleet.conversations (home, session, last, tail, at) "
            "SELECT 'beta', 'old-' || n, 'x', '[\"x\"]', now() - interval '1 day' "
            "+ n * interval '1 second' FROM generate_series(0, %s) n", (MAX_SESSIONS - 1,))
        conn.execute("INSERT INTO agentd_fleet.conversations (home, session, last, tail, at) "
                     "VALUES ('alpha', 'old-a', 'x', '[\"x\"]', now() - interval '2 days')")
        before = conn.execute("SELECT count(*) FROM agentd_fleet.conversations WHERE "
                              "home = 'beta'").fetchone()[0]
        raw = served.openai.chat.completions.with_raw_response.create(
            model="agentd/beta", messages=[{"role": "user", "content": "say:a new one"}])
        new = raw.headers["x-agentd-session"]

        def rows() -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            for home, session in conn.execute(
                    "SELECT home, session FROM agentd_fleet.conversations").fetchall():
                found.setdefault(home, set()).add(session)
            return found
        got = wait_for(lambda: new in rows().get("beta", set()) and rows(), 30, "its row")
    assert isinstance(got, dict)
    assert len(got["beta"]) == MAX_SESSIONS
    gone = before + 1 - MAX_SESSIONS  # the oldest go: seeded rows, older than the tests'
    assert gone >= 1
    assert {f"old-{n}" for n in range(gone)}.isdisjoint(got["beta"])
    assert {f"old-{gone}", f"old-{MAX_SESSIONS - 1}", new} <= got["beta"]
    assert "old-a" in got["alpha"]


def test_the_schema_is_public_and_schemathesis_finds_nothing(served: Served,
                                                             tmp_path: Path) -> None:
    r = httpx.get(f"{served.url}/openapi.json")  # no token: public, like /healthz
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc["paths"]) == PATHS and "alpha" not in json.dumps(doc)
    assert doc["components"]["securitySchemes"]["bearer"]["description"] == "AGENTD_FLEET_TOKEN"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert "422" not in codes and {"408", "413", "429"} <= codes, (method, path)
            if path != "/healthz":
                assert {"401", "503"} <= codes and op["security"], (method, path)
    hook = doc["paths"]["/homes/{name}/hooks/{hook}"]["post"]
    assert {"bearer": []} not in hook["security"] and hook["requestBody"]["required"]
    assert httpx.get(f"{served.url}/docs").status_code == 404  # no /docs, as `agentd serve`

    config = tmp_path / "schemathesis.toml"
    config.write_text('[phases.coverage]\nunexpected-methods = ["put"]\n'  # one is enough
                      '[phases.coverage.generation]\nmode = "negative"\n')
    r = subprocess.run(
        [str(ST), "--config-file", str(config), "run", f"{served.url}/openapi.json",
         "--checks", "all", "--phases", "coverage,fuzzing", "-n", "2", "--seed", "15",
         "-H", f"Authorization: Bearer {TOKEN}", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert "failure" not in summary and "error" not in summary, r.stdout[-6000:]
    log = served.log.read_text()
    assert "Traceback" not in log and TOKEN not in log


def test_a_homes_telegram_bot(served: Served) -> None:
    """[bridge.telegram] of the home (chats, owners) with the operator's bot (token,
    secret_token, Bot API URL): a message is acknowledged, its turn's answer sent back."""
    def update(uid: int, chat: int, text: str, user: int = 7) -> dict[str, Any]:
        return {"update_id": uid, "message": {"message_id": 5, "text": text,
                                              "chat": {"id": chat},
                                              "from": {"id": user, "username": "ann"}}}

    tg = {"x-telegram-bot-api-secret-token": TG_SECRET}
    with httpx.Client(base_url=served.url, timeout=30) as http:
        r = http.post("/homes/alpha/telegram", json=update(1, 42, "say:hi from tg"), headers=tg)
        assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
        rid = r.json()["run"]
        again = http.post("/homes/alpha/telegram", json=update(1, 42, "say:hi"), headers=tg)
        assert again.json() == {"ok": True, "run": rid, "duplicate": True}
        path = f"/bot{BOT}/sendMessage"
        sent = wait_for(lambda: next((json.loads(b) for (_, b), p in zip(
            served.receiver.got, served.receiver.paths, strict=True) if p == path), None),
            60, "the bot's reply")
        assert sent == {"chat_id": 42, "text": "hi from tg", "reply_parameters": {
            "message_id": 5, "allow_sending_without_reply": True}}
        req = next(x["request"] for x in served.requests() if x["workflow_id"] == rid)
        assert (req["trigger"], req["session"], req["profile"]) == (
            "chat:tg-42", "chat-tg-42", "trusted")
        r = http.post("/homes/alpha/telegram", json=update(2, 42, "say:x", user=8), headers=tg)
        stranger = next(x["request"] for x in wait_for(
            lambda: [x for x in served.requests() if x["workflow_id"] == r.json()["run"]],
            60, "the stranger's turn"))
        assert stranger["profile"] == "untrusted" and "<untrusted-" in stranger["task"]
        n = len(served.requests())
        assert http.post("/homes/alpha/telegram", json=update(3, 99, "x"),
                         headers=tg).json()["ignored"] == "chat not allowed"
        assert http.post("/homes/alpha/telegram", json=update(4, 42, "x"),
                         headers={tg_key: "wrong" for tg_key in tg}).status_code == 401
        assert http.post("/homes/alpha/telegram", json=update(5, 42, "x")).status_code == 401
        assert http.post("/homes/beta/telegram", json=update(6, 42, "x"),
                         headers=tg).status_code == 404  # beta has no bot
        assert http.post("/homes/alpha/telegram", content=b"{nope",
                         headers={**tg, "content-type": "application/json"}).status_code == 400
        assert http.post("/homes/alpha/telegram", json={"update_id": True},
                         headers=tg).status_code == 400
        assert http.post("/homes/alpha/telegram", json=update(7, 42, "x" * 2_000_000),
                         headers=tg).status_code == 413
    assert len(served.requests()) == n


def test_a_homes_slack_app(served: Served) -> None:
    """[bridge.slack] of the home (users, owners) with the operator's app (signing secret,
    bot token, API URL), signed by slack_sdk's own SignatureVerifier."""
    from slack_sdk.signature import SignatureVerifier

    def post(http: httpx.Client, data: dict[str, Any], secret: str = SLACK_SIGNING
             ) -> httpx.Response:
        body = json.dumps(data)
        stamp = str(int(datetime.now(tz=UTC).timestamp()))
        sig = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
        return http.post("/homes/alpha/slack/events", content=body, headers={
            "x-slack-request-timestamp": stamp, "x-slack-signature": str(sig),
            "content-type": "application/json"})

    def mention(eid: str, user: str, text: str) -> dict[str, Any]:
        return {"type": "event_callback", "event_id": eid, "event": {
            "type": "app_mention", "user": user, "text": f"<@UAGENT> {text}",
            "channel": "C9", "ts": "1700000000.000100"}}

    with httpx.Client(base_url=served.url, timeout=30) as http:
        r = post(http, {"type": "url_verification", "challenge": "abc"})
        assert r.json() == {"challenge": "abc"}, r.text
        r = post(http, mention("Ev1", "U1", "say:hi from slack"))
        assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
        rid = r.json()["run"]
        assert post(http, mention("Ev1", "U1", "say:hi")).json()["duplicate"] is True
        sent = wait_for(lambda: next(
            ((h, json.loads(b)) for (h, b), p in zip(served.receiver.got,
                                                     served.receiver.paths, strict=True)
             if p == "/api/chat.postMessage"), None), 60, "the app's reply")
        assert sent[0]["authorization"] == f"Bearer {SLACK_BOT}"
        assert sent[1] == {"channel": "C9", "text": "hi from slack",
                           "thread_ts": "1700000000.000100"}
        req = next(x["request"] for x in served.requests() if x["workflow_id"] == rid)
        assert (req["task"], req["profile"], req["session"]) == (
            "say:hi from slack", "trusted", "chat-slack-C9-1700000000_000100")
        n = len(served.requests())
        assert post(http, mention("Ev2", "U7", "x")).json()["ignored"] == "user not allowed"
        assert post(http, mention("Ev3", "U1", "x"), "wrong-secret-0123456789").status_code == 401
        assert http.post("/homes/alpha/slack/events", json=mention("Ev4", "U1", "x")
                         ).status_code == 401
        assert http.post("/homes/beta/slack/events", json={}).status_code == 404  # no app
        body = b"{nope"
        stamp = str(int(datetime.now(tz=UTC).timestamp()))
        sig = SignatureVerifier(SLACK_SIGNING).generate_signature(timestamp=stamp, body=body)
        assert http.post("/homes/alpha/slack/events", content=body, headers={
            "x-slack-request-timestamp": stamp, "x-slack-signature": str(sig),
            "content-type": "application/json"}).status_code == 400
    assert len(served.requests()) == n
