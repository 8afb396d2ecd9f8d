"""HttpApp: every plain HTTP route of PROTOCOL 6, over memory streams.

Each request goes through the real head reader into :meth:`HttpApp.handle`
with a real in-memory SessionStore, and the answer is parsed back by an h11
client, so framing (Content-Length, chunked, HEAD, HTTP/1.0) is checked too.
The pure decisions (ranges, keys, ws_url) also have table tests of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import h11
import pytest
import trio
import trio.testing

from trio_channel import ChannelConfig
from trio_channel.core.auth import IssuedTokenStore
from trio_channel.core.hub import ChatHub
from trio_channel.core.session import Peer
from trio_channel.http.api import HISTORY_PAGE, HttpApp
from trio_channel.http.head import RequestHead, read_request_head
from trio_channel.http.mediafiles import (
    NOT_SATISFIABLE,
    SVG_CSP,
    ByteRange,
    parse_range,
)
from trio_channel.http.routes import iso_time, parse_session_key, ws_url
from trio_channel.media.signing import MediaSigner
from trio_channel.store.base import (
    AppendEvent,
    AppendUserMessage,
    DeleteChat,
    SessionStore,
    UpdateChat,
)
from trio_channel.store.memory import MemoryStore

SECRET = b"k" * 32
LOOPBACK = Peer("127.0.0.1", 40000)
REMOTE = Peer("203.0.113.9", 5000)
UNIX = Peer("")
TTL = 60


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


async def fetch(
    app: HttpApp,
    target: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    peer: Peer = LOOPBACK,
    version: str = "1.1",
) -> Reply:
    """One request through read_request_head + HttpApp.handle, parsed by h11."""
    client = h11.Connection(h11.CLIENT)
    names = {name.lower() for name, _ in headers}
    all_headers = list(headers)
    if "host" not in names:
        all_headers.insert(0, ("Host", "localhost:8765"))
    request = client.send(
        h11.Request(method=method, target=target, headers=all_headers)
    )
    request = (request or b"") + (client.send(h11.EndOfMessage()) or b"")
    if version == "1.0":  # h11 only writes 1.1; its parser reads either answer
        lines = [f"{method} {target} HTTP/1.0", *(f"{k}: {v}" for k, v in headers)]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        head = await read_request_head(server_stream)
        assert isinstance(head, RequestHead)
        try:
            await app.handle(server_stream, head, peer)
        finally:
            await server_stream.aclose()

    raw = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_stream.send_all(request)
        while chunk := await client_stream.receive_some():
            raw += chunk
    client.receive_data(raw)
    client.receive_data(b"")
    status, response_headers, body = 0, {}, b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            response_headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Reply(status, response_headers, body)
        else:
            raise AssertionError(f"unexpected {event!r} after {raw!r}")


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def event(chat_id: str, text: str) -> Callable[[int], bytes]:
    def encode(seq: int) -> bytes:
        payload = {"event": "message", "chat_id": chat_id, "text": text, "seq": seq}
        return json.dumps(payload, separators=(",", ":")).encode()

    return encode


@attrs.define(eq=False)
class TickingStore(MemoryStore):
    """A memory store with one-line writes; every write is one tick later."""

    ticks: Iterator[int] = attrs.field(factory=lambda: itertools.count(1000))
    ids: Iterator[int] = attrs.field(factory=itertools.count)

    async def append_event(self, chat_id: str, encode: Callable[[int], bytes]) -> None:
        payload = json.loads(encode(0))
        payload.pop("seq")
        text = payload.get("text") if payload["event"] == "message" else None
        body = json.dumps(payload, separators=(",", ":")).encode()
        at = float(next(self.ticks))
        await self.write([AppendEvent(chat_id, f"t:{next(self.ids)}", body, at, text)])

    async def append_user_message(
        self, chat_id: str, client_id: str, content: str, media: tuple[str, ...]
    ) -> None:
        at = float(next(self.ticks))
        await self.write([AppendUserMessage(chat_id, at, client_id, content, media)])

    async def update_chat(self, chat_id: str, **fields: Any) -> None:
        await self.write([UpdateChat(chat_id, float(next(self.ticks)), **fields)])

    async def delete_chat(self, chat_id: str) -> bool:
        return bool((await self.write([DeleteChat(chat_id)]))[0])


@pytest.fixture
async def store(nursery: trio.Nursery) -> TickingStore:
    store = TickingStore()
    await nursery.start(store.run)
    return store


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    return root


@pytest.fixture
def webui(tmp_path: Path) -> Path:
    root = tmp_path / "webui"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>chat</title>")
    (root / "app.js").write_text("console.log('hi')")
    (root / "style.css").write_text("body{}")
    (root / "icon.svg").write_text("<svg/>")
    (root / ".hidden").write_text("secret")
    (root / "sub").mkdir()
    (root / "sub" / "x.js").write_text("nested")
    (root / "assets" / "fonts").mkdir(parents=True)
    (root / "assets" / "index-Ab12.js").write_text("hashed")
    (root / "assets" / "fonts" / "k-9.woff2").write_bytes(b"wOF2")
    (tmp_path / "outside.js").write_text("outside")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "secret.js").write_text("outside")
    (root / "link.js").symlink_to(tmp_path / "outside.js")
    (root / "linkdir").symlink_to(tmp_path / "outdir")
    return root


AppFactory = Callable[..., HttpApp]


@pytest.fixture
def make_app(store: SessionStore, media_root: Path, webui: Path) -> AppFactory:
    def make(*, webui_dir: Path | None = webui, **config: Any) -> HttpApp:
        config.setdefault("token_ttl_s", TTL)
        cfg = ChannelConfig(**config)
        return HttpApp(
            cfg=cfg,
            tokens=IssuedTokenStore(ttl_s=cfg.token_ttl_s),
            store=store,
            hub=ChatHub(),
            signer=MediaSigner(SECRET, media_root),
            webui_dir=webui_dir,
        )

    return make


@pytest.fixture
def app(make_app: AppFactory) -> HttpApp:
    return make_app(token="static-tok")


AUTH = bearer("static-tok")


# --- bootstrap ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/webui/bootstrap", "/api/bootstrap/"])
@pytest.mark.parametrize(
    "peer", [LOOPBACK, Peer("::1", 1), Peer("::ffff:127.0.0.1", 1)], ids=str
)
async def test_bootstrap_from_loopback_without_a_secret(make_app, path, peer):
    app = make_app(path="/ws")
    app.hub.model_name = "gpt-test"
    reply = await fetch(app, path, peer=peer)
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {
        "token",
        "api_token",
        "ws_path",
        "ws_url",
        "expires_in",
        "model_name",
    }
    assert body["token"].startswith("nbwt_")
    assert body["api_token"] == body["token"]
    assert body["ws_path"] == "/ws"
    assert body["ws_url"] == "ws://localhost:8765/ws"
    assert body["expires_in"] == TTL
    assert body["model_name"] == "gpt-test"
    assert reply.headers["cache-control"] == "no-store"


async def test_bootstrap_model_name_is_null_when_unknown(make_app):
    assert (await fetch(make_app(), "/webui/bootstrap")).json()["model_name"] is None


@pytest.mark.parametrize("peer", [REMOTE, UNIX], ids=["remote", "unix"])
async def test_bootstrap_without_a_secret_is_localhost_only(make_app, peer):
    reply = await fetch(make_app(), "/webui/bootstrap", peer=peer)
    assert (reply.status, reply.body) == (403, b"bootstrap is localhost-only")


@pytest.mark.parametrize(
    ("config", "headers", "status"),
    [
        ({"token_issue_secret": "sec"}, [], 401),
        ({"token_issue_secret": "sec"}, bearer("sec"), 200),
        ({"token_issue_secret": "sec"}, [("X-Nanobot-Auth", "sec")], 200),
        ({"token_issue_secret": "sec"}, bearer("nope"), 401),
        # A wrong Bearer is not rescued by the other header.
        (
            {"token_issue_secret": "sec"},
            [*bearer("no"), ("X-Nanobot-Auth", "sec")],
            401,
        ),
        ({"token_issue_secret": "sec", "token": "tok"}, bearer("tok"), 401),
        ({"token": "tok"}, bearer("tok"), 200),
        ({"token": "tok"}, [], 401),
    ],
)
@pytest.mark.parametrize("peer", [LOOPBACK, REMOTE, UNIX], ids=str)
async def test_bootstrap_with_a_secret_asks_everyone(
    make_app, config, headers, status, peer
):
    reply = await fetch(
        make_app(**config), "/webui/bootstrap", headers=headers, peer=peer
    )
    assert reply.status == status
    if status == 401:
        assert reply.body == b"Unauthorized"


async def test_bootstrap_is_get_only(make_app):
    reply = await fetch(make_app(), "/webui/bootstrap", method="POST")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET"


async def test_bootstrap_refuses_past_the_token_cap(make_app):
    app = make_app()
    app.tokens = IssuedTokenStore(ttl_s=TTL, capacity=1)
    assert (await fetch(app, "/webui/bootstrap")).status == 200
    refused = await fetch(app, "/webui/bootstrap")
    assert refused.status == 429
    assert refused.json() == {"error": "too many outstanding tokens"}


async def test_a_full_api_token_store_refuses_and_mints_nothing(make_app):
    app = make_app()
    app.api_tokens = IssuedTokenStore(ttl_s=TTL, capacity=1)
    assert (await fetch(app, "/webui/bootstrap")).status == 200
    assert (await fetch(app, "/webui/bootstrap")).status == 429
    # The WebSocket token minted for the refused request was taken back.
    assert app.tokens.outstanding(trio.current_time()) == 1


async def test_http10_without_host_falls_back_to_the_configured_address(make_app):
    app = make_app(host="0.0.0.0", port=9000, token="t")
    reply = await fetch(app, "/webui/bootstrap", headers=bearer("t"), version="1.0")
    assert reply.json()["ws_url"] == "ws://127.0.0.1:9000/"


@pytest.mark.parametrize(
    ("config", "headers", "url"),
    [
        ({}, {"host": "example.com:8080"}, "ws://example.com:8080/"),
        ({}, {"host": "example.com"}, "ws://example.com/"),
        ({}, {"host": "[::1]:9000"}, "ws://[::1]:9000/"),
        ({}, {"host": "[fe80::1]"}, "ws://[fe80::1]/"),
        ({"path": "/ws"}, {"host": "a.b"}, "ws://a.b/ws"),
        ({}, {"host": "a", "x-forwarded-proto": "https, http"}, "wss://a/"),
        ({}, {"host": "a", "x-forwarded-proto": "WSS"}, "wss://a/"),
        ({}, {"host": "a", "x-forwarded-proto": "http, https"}, "ws://a/"),
        ({"ssl_certfile": "c", "ssl_keyfile": "k"}, {"host": "a"}, "wss://a/"),
        # Not a plain host[:port]: the configured address instead.
        ({}, {"host": "evil.com/x?token=1"}, "ws://127.0.0.1:8765/"),
        ({}, {"host": "user@evil.com"}, "ws://127.0.0.1:8765/"),
        ({}, {"host": "a.com:99999"}, "ws://127.0.0.1:8765/"),
        ({}, {"host": "[not-v6]:80"}, "ws://127.0.0.1:8765/"),
        ({}, {"host": "::1"}, "ws://127.0.0.1:8765/"),
        ({}, {"host": "a, b"}, "ws://127.0.0.1:8765/"),
        ({}, {"host": ""}, "ws://127.0.0.1:8765/"),
        ({}, {}, "ws://127.0.0.1:8765/"),
        ({"host": "0.0.0.0", "port": 1}, {}, "ws://127.0.0.1:1/"),
        ({"host": "::", "port": 2}, {}, "ws://127.0.0.1:2/"),
        ({"host": "::1", "port": 3}, {}, "ws://[::1]:3/"),
        ({"host": "10.0.0.5", "port": 4}, {}, "ws://10.0.0.5:4/"),
    ],
)
def test_ws_url(config, headers, url):
    assert ws_url(ChannelConfig(**config), headers) == url


# --- API tokens -----------------------------------------------------------------


async def test_a_bootstrap_token_is_an_api_token_until_it_expires(
    make_app, autojump_clock
):
    app = make_app()
    token = (await fetch(app, "/webui/bootstrap")).json()["token"]
    assert (await fetch(app, "/api/sessions", headers=bearer(token))).status == 200
    assert (await fetch(app, f"/api/sessions?token={token}")).status == 200
    # It opens exactly one WebSocket, and the API keeps accepting it after that.
    assert app.tokens.consume(token, trio.current_time())
    assert not app.tokens.consume(token, trio.current_time())
    assert (await fetch(app, "/api/sessions", headers=bearer(token))).status == 200
    await trio.sleep(TTL - 1)
    assert (await fetch(app, "/api/sessions", headers=bearer(token))).status == 200
    await trio.sleep(1)
    expired = await fetch(app, "/api/sessions", headers=bearer(token))
    assert (expired.status, expired.body) == (401, b"Unauthorized")


async def test_the_websocket_token_also_expires(make_app, autojump_clock):
    app = make_app()
    token = (await fetch(app, "/webui/bootstrap")).json()["token"]
    await trio.sleep(TTL)
    assert not app.tokens.consume(token, trio.current_time())


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        ("/api/sessions", [], 401),
        ("/api/sessions", bearer("static-tok"), 200),
        ("/api/sessions", [("Authorization", "bearer   static-tok")], 200),
        ("/api/sessions?token=static-tok", [], 200),
        ("/api/sessions", bearer("wrong"), 401),
        ("/api/sessions?token=wrong", [], 401),
        ("/api/sessions?token=", [], 401),
        ("/api/sessions?token=%C3%A9", [], 401),
        ("/api/sessions", [("Authorization", "Basic c3RhdGljLXRvaw==")], 401),
        # The Bearer header, when sent, is the one that counts.
        ("/api/sessions?token=static-tok", bearer("wrong"), 401),
    ],
)
async def test_api_token_check(app, target, headers, status):
    assert (await fetch(app, target, headers=headers)).status == status


async def test_issue_route_tokens_are_not_api_tokens(make_app):
    app = make_app(token_issue_path="/auth/token")
    issued = await fetch(app, "/auth/token")
    assert issued.status == 200
    token = issued.json()["token"]
    assert (await fetch(app, "/api/sessions", headers=bearer(token))).status == 401
    assert (await fetch(app, "/auth/token", method="POST")).status == 405


# --- sessions -------------------------------------------------------------------


async def test_sessions_list(app, store):
    await store.append_event("a", event("a", "one"))
    await store.update_chat("b", workspace_scope={"root": "/w"})
    app.hub.chat("a").running_since = 123.5
    reply = await fetch(app, "/api/sessions/", headers=AUTH)
    sessions = reply.json()["sessions"]
    assert [s["key"] for s in sessions] == ["websocket:b", "websocket:a"]
    b, a = sessions
    assert b == {
        "key": "websocket:b",
        "chat_id": "b",
        "created_at": b["created_at"],
        "updated_at": b["updated_at"],
        "title": "",
        "preview": "",
        "workspace_scope": {"root": "/w"},
    }
    assert a["run_started_at"] == 123.5
    assert a["workspace_scope"] is None


async def test_session_rows_carry_iso_times_that_date_parse_reads(app, store):
    """nanobot's UI files chats by ``Date.parse(updated_at)``: Unix floats gave
    NaN and every chat landed under "Earlier"."""
    await store.append_event("a", event("a", "one"))  # created and updated at 1000
    await store.append_event("a", event("a", "two"))  # updated at 1001
    meta = await store.chat("a")
    (row,) = (await fetch(app, "/api/sessions", headers=AUTH)).json()["sessions"]
    iso = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d")
    assert iso.fullmatch(row["created_at"]), row
    assert iso.fullmatch(row["updated_at"]), row
    created = datetime.fromisoformat(row["created_at"]).timestamp()
    updated = datetime.fromisoformat(row["updated_at"]).timestamp()
    assert (created, updated) == (meta.created_at, meta.updated_at) == (1000, 1001)


@pytest.mark.parametrize(
    ("title", "preview", "row_title", "row_preview"),
    [
        (None, None, "", ""),
        (None, "hello there", "hello there", "hello there"),
        (None, "  two\n\nlines\t here ", "two lines here", "two lines here"),
        (None, "x" * 200, "x" * 79 + "…", "x" * 119 + "…"),
        ("Named", "first message", "Named", "first message"),
        ("   ", "first message", "first message", "first message"),
    ],
)
async def test_session_rows_carry_title_and_preview(
    app, store, title, preview, row_title, row_preview
):
    await store.append_event("a", event("a", "reply"))
    log = store._logs["a"]
    log.meta = attrs.evolve(log.meta, title=title, preview=preview)
    (row,) = (await fetch(app, "/api/sessions", headers=AUTH)).json()["sessions"]
    assert (row["title"], row["preview"]) == (row_title, row_preview)


@pytest.mark.parametrize(
    ("seconds", "tz", "text"),
    [
        (0.0, UTC, "1970-01-01T00:00:00.000000+00:00"),
        (
            1780391678.123456,
            timezone(timedelta(hours=8)),
            "2026-06-02T17:14:38.123456+08:00",
        ),
        (
            1780391678.5,
            timezone(timedelta(hours=-5)),
            "2026-06-02T04:14:38.500000-05:00",
        ),
        (1e20, UTC, None),
        (float("nan"), UTC, None),
    ],
)
def test_iso_time(seconds, tz, text):
    assert iso_time(seconds, tz) == text


def test_iso_time_defaults_to_the_local_zone_with_its_offset():
    text = iso_time(1780391678.25)
    assert text is not None
    assert datetime.fromisoformat(text).timestamp() == 1780391678.25
    assert datetime.fromisoformat(text).utcoffset() is not None


async def _history(app: HttpApp, key: str, query: str = "", **kw: Any) -> Reply:
    return await fetch(app, f"/api/sessions/{key}/messages{query}", headers=AUTH, **kw)


async def test_messages_interleave_user_messages(app, store, media_root):
    photo = media_root / "p.png"
    photo.write_bytes(b"png")
    await store.append_user_message("c", "alice", "first", ())
    await store.append_event("c", event("c", "e1"))
    await store.append_event("c", event("c", "e2"))
    await store.append_user_message(
        "c", "alice", "look", (str(photo), "/elsewhere/x.png")
    )
    await store.append_event("c", event("c", "e3"))
    await store.append_user_message("c", "bob", "last", ())
    reply = await _history(app, "websocket%3Ac")
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["transfer-encoding"] == "chunked"
    body = reply.json()
    assert (body["key"], body["chat_id"]) == ("websocket:c", "c")
    assert (body["first_seq"], body["last_seq"]) == (1, 3)
    shape = [e.get("text") or e["content"] for e in body["events"]]
    assert shape == ["first", "e1", "e2", "look", "e3", "last"]
    assert body["events"][1] == {
        "event": "message",
        "chat_id": "c",
        "text": "e1",
        "seq": 1,
    }
    look = body["events"][3]
    assert look == {
        "event": "user_message",
        "chat_id": "c",
        "after_seq": 2,
        "client_id": "alice",
        "content": "look",
        "media": [str(photo), "/elsewhere/x.png"],
        "at": look["at"],
        "media_urls": [{"url": app.signer.url_for(photo), "name": "p.png"}],
    }
    assert "seq" not in look
    # The signed URL serves the attachment.
    assert (await fetch(app, look["media_urls"][0]["url"])).body == b"png"

    def texts(reply: Reply) -> list[str]:
        return [e.get("text") or e["content"] for e in reply.json()["events"]]

    assert texts(await _history(app, "c", "?since_seq=2")) == ["look", "e3", "last"]
    assert texts(await _history(app, "c", "?since_seq=3")) == ["last"]
    assert texts(await _history(app, "c", "?since_seq=0")) == shape
    empty = (await _history(app, "c", "?since_seq=99")).json()
    assert (empty["events"], empty["last_seq"]) == ([], 3)


@pytest.mark.parametrize("query", ["?since_seq=-1", "?since_seq=x", "?since_seq=1.5"])
async def test_a_bad_since_seq_is_a_400(app, store, query):
    await store.append_event("c", event("c", "e1"))
    reply = await _history(app, "c", query)
    assert (reply.status, reply.body) == (400, b"invalid since_seq")


async def test_long_histories_are_read_in_pages(app, store):
    count = HISTORY_PAGE * 2 + 7
    for i in range(count):
        await store.append_event("long", event("long", str(i)))
    await store.append_user_message("long", "u", "end", ())
    for version in ("1.1", "1.0"):  # chunked, then ended by the close
        reply = await _history(app, "long", version=version)
        events = reply.json()["events"]
        assert [e.get("seq") for e in events] == [*range(1, count + 1), None]
    tail = (await _history(app, "long", f"?since_seq={HISTORY_PAGE}")).json()
    seqs = [e.get("seq") for e in tail["events"]]
    assert seqs == [*range(HISTORY_PAGE + 1, count + 1), None]


async def test_messages_of_a_chat_with_no_events(app, store):
    await store.update_chat("quiet")
    body = (await _history(app, "quiet")).json()
    meta = await store.chat("quiet")
    assert meta is not None
    assert body == {
        "key": "websocket:quiet",
        "chat_id": "quiet",
        "epoch": meta.epoch,
        "first_seq": 1,
        "last_seq": 0,
        "events": [],
    }


# --- webui-thread ---------------------------------------------------------------


def agent(chat_id: str, event_type: str, **fields: Any) -> Callable[[int], bytes]:
    def encode(seq: int) -> bytes:
        payload = {"event": event_type, "chat_id": chat_id, **fields, "seq": seq}
        return json.dumps(payload, separators=(",", ":")).encode()

    return encode


async def _thread(app: HttpApp, key: str, query: str = "", **kw: Any) -> Reply:
    target = f"/api/sessions/{key}/webui-thread{query}"
    return await fetch(app, target, headers=AUTH, **kw)


async def test_webui_thread_restores_the_chat_as_nanobots_ui_shows_it(
    app, store, media_root
):
    photo = media_root / "p.png"
    photo.write_bytes(b"png")
    await store.update_chat("c", workspace_scope={"project_path": "/w"})
    await store.append_user_message("c", "webui-1", "what is this?", (str(photo),))
    await store.append_event("c", agent("c", "reasoning_delta", text="Looking."))
    await store.append_event("c", agent("c", "reasoning_end"))
    for word in ("It ", "is ", "a dot."):
        await store.append_event("c", agent("c", "delta", text=word, stream_id="s"))
    await store.append_event("c", agent("c", "stream_end", stream_id="s"))
    await store.append_event("c", agent("c", "turn_end", latency_ms=420))
    await store.append_user_message("c", "webui-1", "thanks", ())
    reply = await _thread(app, "websocket%3Ac")
    assert reply.status == 200
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-content-type-options"] == "nosniff"
    body = reply.json()
    url = app.signer.url_for(photo)
    first, answer, last = body["messages"]
    assert body == {
        "schemaVersion": 3,
        "sessionKey": "websocket:c",
        "messages": [first, answer, last],
        "workspace_scope": {"project_path": "/w"},
        "completed_turn_ids": [],
        "has_pending_tool_calls": False,
        "first_seq": 1,
        "last_seq": 7,
    }
    assert first == {
        "id": "user-0-0",
        "role": "user",
        "content": "what is this?",
        "createdAt": first["createdAt"],
        "media": [{"kind": "image", "name": "p.png", "url": url}],
        "images": [{"url": url, "name": "p.png"}],
    }
    assert first["createdAt"] == int(1000 * (await store.user_messages("c"))[0].at)
    assert answer == {
        "id": "agent-1",
        "role": "assistant",
        "content": "It is a dot.",
        "reasoning": "Looking.",
        "latencyMs": 420,
        "createdAt": first["createdAt"] + 420,
    }
    assert (last["id"], last["content"]) == ("user-7-0", "thanks")
    # The signed URL serves the attachment.
    assert (await fetch(app, url)).body == b"png"
    # Today's UI asks for the latest 80; it gets everything and no "page".
    paged = await _thread(app, "c", "?limit=80&direction=latest")
    assert paged.json() == body


async def test_webui_thread_says_when_a_turn_is_running(app, store):
    await store.append_user_message("c", "u", "go", ())
    await store.append_event("c", agent("c", "delta", text="work"))
    app.hub.chat("c").running_since = 5.0
    body = (await _thread(app, "c")).json()
    assert body["has_pending_tool_calls"] is True
    assert [m["content"] for m in body["messages"]] == ["go", "work"]


async def test_webui_thread_of_a_chat_with_only_a_question(app, store):
    await store.append_user_message("c", "u", "anyone?", ())
    messages = (await _thread(app, "c")).json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "anyone?")]


async def test_webui_thread_reads_long_histories_in_pages(app, store):
    count = HISTORY_PAGE * 2 + 7
    await store.append_user_message("long", "u", "stream", ())
    for i in range(count):
        await store.append_event("long", agent("long", "delta", text=f"{i} "))
    await store.append_event("long", agent("long", "stream_end"))
    body = (await _thread(app, "long")).json()
    assert [m["content"] for m in body["messages"]] == [
        "stream",
        "".join(f"{i} " for i in range(count)),
    ]
    assert (body["first_seq"], body["last_seq"]) == (1, count + 1)


async def test_webui_thread_of_a_trimmed_history_says_where_it_starts(app, store):
    store.history_limit = 3
    await store.append_user_message("c", "u", "count", ())
    for i in range(1, 6):
        await store.append_event("c", agent("c", "delta", text=f"{i} "))
    body = (await _thread(app, "c")).json()
    assert (body["first_seq"], body["last_seq"]) == (3, 5)
    assert [(m["id"], m["content"]) for m in body["messages"]] == [
        ("agent-3", "3 4 5 ")
    ]


async def test_webui_thread_not_found(app, store):
    await store.update_chat("quiet")  # a chat, but nothing said in it
    reply = await _thread(app, "quiet")
    assert (reply.status, reply.body) == (404, b"webui thread not found")
    unknown = await _thread(app, "nope")
    assert (unknown.status, unknown.body) == (404, b"session not found")
    bad = await _thread(app, "..%2Fx")
    assert (bad.status, bad.body) == (400, b"invalid session key")
    await store.append_event("gone", agent("gone", "message", text="x"))
    assert (await _thread(app, "gone")).status == 200
    await store.delete_chat("gone")
    assert (await _thread(app, "gone")).status == 404


async def test_webui_thread_needs_an_api_token_and_get(app, store):
    await store.append_event("c", agent("c", "message", text="x"))
    reply = await fetch(app, "/api/sessions/c/webui-thread")
    assert (reply.status, reply.body) == (401, b"Unauthorized")
    post = await fetch(app, "/api/sessions/c/webui-thread", method="POST", headers=AUTH)
    assert (post.status, post.headers["allow"]) == (405, "GET")


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", "/api/sessions/{}/delete"), ("DELETE", "/api/sessions/{}")],
)
@pytest.mark.parametrize("key", ["websocket%3Agone", "gone"])
async def test_delete(app, store, method, target, key):
    await store.append_event("gone", event("gone", "x"))
    reply = await fetch(app, target.format(key), method=method, headers=AUTH)
    assert reply.json() == {"deleted": True}
    assert (await _history(app, key)).status == 404
    assert (await fetch(app, "/api/sessions", headers=AUTH)).json() == {"sessions": []}
    again = await fetch(app, target.format(key), method=method, headers=AUTH)
    assert (again.status, again.body) == (404, b"session not found")


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("GET", "/api/sessions/c", "DELETE"),
        ("POST", "/api/sessions/c/delete", "GET"),
        ("DELETE", "/api/sessions/c/messages", "GET"),
        ("DELETE", "/api/sessions", "GET"),
        ("PUT", "/metrics", "GET"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_wrong_methods_are_405(app, store, method, target, allow):
    await store.append_event("c", event("c", "x"))
    reply = await fetch(app, target, method=method, headers=AUTH)
    assert (reply.status, reply.headers["allow"]) == (405, allow)
    assert (await fetch(app, "/api/sessions/c/messages", headers=AUTH)).status == 200


@pytest.mark.parametrize(
    ("key", "status"),
    [
        ("websocket%3Ac", 200),
        ("websocket:c", 200),
        ("c", 200),
        ("websocket%3a" + "c", 200),
        ("..%2F..%2Fetc", 400),
        ("..%2f..%2fetc%2fpasswd", 400),
        ("a%2Fb", 400),
        ("%252e%252e", 400),  # decoded once only: "%2e%2e" is not a key
        ("a%20b", 400),
        ("a+b", 400),
        ("%00", 400),
        ("%C3%A9", 400),
        ("x" * 129, 400),
        ("%2e%2e", 404),
        ("..", 404),
        ("nope", 404),
        ("websocket%3A", 404),
        ("websocket%3Awebsocket%3Ac", 404),
    ],
)
async def test_session_key_validation(app, store, key, status):
    await store.append_event("c", event("c", "x"))
    reply = await _history(app, key)
    assert reply.status == status
    if status == 400:
        assert reply.body == b"invalid session key"
    elif status == 404:
        assert reply.body == b"session not found"
    delete = await fetch(app, f"/api/sessions/{key}", method="DELETE", headers=AUTH)
    assert delete.status == status


@pytest.mark.parametrize(
    ("raw", "chat_id"),
    [
        ("websocket%3Aabc", "abc"),
        ("abc", "abc"),
        ("cli%3Aabc", "cli:abc"),
        ("a.b_c-d", "a.b_c-d"),
        ("..%2Fx", None),
        ("", None),
        ("x" * 128, "x" * 128),
        ("x" * 129, None),
        ("a\n", None),
    ],
)
def test_parse_session_key(raw, chat_id):
    assert parse_session_key(raw) == chat_id


async def test_traversal_outside_the_key_segment_is_just_not_a_route(app):
    reply = await fetch(app, "/api/sessions/../../etc/passwd", headers=AUTH)
    assert (reply.status, reply.body) == (404, b"API route not found")


async def test_auth_comes_before_key_checks(app, store):
    await store.append_event("c", event("c", "x"))
    for key in ("c", "..%2Fx", "nope"):
        reply = await fetch(app, f"/api/sessions/{key}/messages")
        assert reply.status == 401


# --- media ----------------------------------------------------------------------


def sign(payload: str) -> str:
    mac = hmac.new(SECRET, payload.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def media_url(app: HttpApp, path: Path) -> str:
    url = app.signer.url_for(path)
    assert url is not None
    return url


async def test_media_round_trip(app, media_root):
    data = os.urandom(3 * 1024 * 1024 + 5)  # several chunks
    clip = media_root / "clip.mp4"
    clip.write_bytes(data)
    reply = await fetch(app, media_url(app, clip), peer=REMOTE)
    assert reply.status == 200
    assert reply.body == data
    assert reply.headers["content-length"] == str(len(data))
    assert reply.headers["content-type"] == "video/mp4"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["accept-ranges"] == "bytes"
    assert reply.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert reply.headers["connection"] == "close"
    assert "content-security-policy" not in reply.headers


async def test_media_in_a_subdirectory(app, media_root):
    (media_root / "websocket").mkdir()
    (media_root / "websocket" / "abc-x.gif").write_bytes(b"GIF89a")
    reply = await fetch(app, media_url(app, media_root / "websocket" / "abc-x.gif"))
    assert (reply.status, reply.body) == (200, b"GIF89a")
    assert reply.headers["content-type"] == "image/gif"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("a.png", "image/png"),
        ("a.JPG", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.webp", "image/webp"),
        ("a.gif", "image/gif"),
        ("a.mp4", "video/mp4"),
        ("a.webm", "video/webm"),
        ("a.mov", "video/quicktime"),
        ("a.svg", "image/svg+xml"),
        ("a.html", "application/octet-stream"),
        ("a.js", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
async def test_media_types(app, media_root, name, content_type):
    (media_root / name).write_bytes(b"x")
    reply = await fetch(app, media_url(app, media_root / name))
    assert reply.headers["content-type"] == content_type
    assert reply.headers["x-content-type-options"] == "nosniff"
    if content_type == "image/svg+xml":
        assert reply.headers["content-security-policy"] == (
            "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
            "sandbox"
        )
        assert reply.headers["content-security-policy"] == SVG_CSP
    else:
        assert "content-security-policy" not in reply.headers


async def test_media_errors(app, media_root, tmp_path):
    (media_root / "a.png").write_bytes(b"x")
    url = media_url(app, media_root / "a.png")
    _, _, _, sig, payload = url.split("/")
    tampered = f"/api/media/{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}/{payload}"
    cases = {
        tampered: (401, b"invalid signature"),
        f"/api/media/{sig}/{payload}x": (401, b"invalid signature"),
        f"/api/media/%C3%A9/{payload}": (401, b"invalid signature"),
        f"/api/media/{sign('a')}/a": (400, b"invalid payload"),
        f"/api/media/{sign('!!')}/!!": (400, b"invalid payload"),
        media_url(app, media_root / "missing.png"): (404, b"not found"),
        f"/api/media/{sign('Lg')}/Lg": (404, b"not found"),  # "." (the root)
    }
    (media_root / "dir.png").mkdir()
    cases[media_url(app, media_root / "dir.png")] = (404, b"not found")
    # A signed path that climbs out of the root.
    (tmp_path / "secret.txt").write_text("no")
    escape = base64.urlsafe_b64encode(b"../secret.txt").rstrip(b"=").decode()
    cases[f"/api/media/{sign(escape)}/{escape}"] = (404, b"not found")
    (media_root / "link.png").symlink_to(tmp_path / "secret.txt")
    link = base64.urlsafe_b64encode(b"link.png").rstrip(b"=").decode()
    cases[f"/api/media/{sign(link)}/{link}"] = (404, b"not found")
    for target, expected in cases.items():
        reply = await fetch(app, target)
        assert (reply.status, reply.body) == expected, target
        assert reply.headers["x-content-type-options"] == "nosniff"
    assert (await fetch(app, url + "/extra")).status == 404
    assert (await fetch(app, url, method="POST")).status == 405


@pytest.mark.parametrize(
    ("range_header", "status", "span", "content_range"),
    [
        ("bytes=0-9", 206, (0, 10), "bytes 0-9/100"),
        ("bytes=90-", 206, (90, 100), "bytes 90-99/100"),
        ("bytes=-5", 206, (95, 100), "bytes 95-99/100"),
        ("bytes=95-200", 206, (95, 100), "bytes 95-99/100"),
        ("bytes=-500", 206, (0, 100), "bytes 0-99/100"),
        ("bytes=99-99", 206, (99, 100), "bytes 99-99/100"),
        ("BYTES = 1-2", 206, (1, 3), "bytes 1-2/100"),
        ("bytes=0-1,3-4", 416, None, "bytes */100"),
        ("bytes=999-", 416, None, "bytes */100"),
        ("bytes=100-", 416, None, "bytes */100"),
        ("bytes=5-2", 416, None, "bytes */100"),
        ("bytes=-0", 416, None, "bytes */100"),
        ("bytes=abc", 416, None, "bytes */100"),
        ("bytes=-", 416, None, "bytes */100"),
        ("items=0-1", 200, (0, 100), None),
    ],
)
async def test_media_ranges(app, media_root, range_header, status, span, content_range):
    data = bytes(range(100))
    (media_root / "r.webm").write_bytes(data)
    url = media_url(app, media_root / "r.webm")
    reply = await fetch(app, url, headers=[("Range", range_header)])
    assert reply.status == status
    assert reply.headers.get("content-range") == content_range
    assert reply.headers["accept-ranges"] == "bytes"
    if span is not None:
        assert reply.body == data[span[0] : span[1]]
        assert reply.headers["content-length"] == str(span[1] - span[0])
        assert reply.headers["content-type"] == "video/webm"


async def test_media_head(app, media_root):
    (media_root / "h.png").write_bytes(b"12345")
    url = media_url(app, media_root / "h.png")
    reply = await fetch(app, url, method="HEAD")
    assert (reply.status, reply.body) == (200, b"")
    assert reply.headers["content-length"] == "5"
    partial = await fetch(app, url, method="HEAD", headers=[("Range", "bytes=1-2")])
    assert (partial.status, partial.body) == (206, b"")
    assert partial.headers["content-range"] == "bytes 1-2/5"


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=0-", 10, ByteRange(0, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=3-99999999999999999999999", 10, ByteRange(3, 9)),
        ("bytes=99999999999999999999999-", 10, NOT_SATISFIABLE),
        ("bytes=0-1,", 10, ByteRange(0, 1)),
        ("bytes=0-1, 2-3", 10, NOT_SATISFIABLE),
        ("bytes=", 10, NOT_SATISFIABLE),
        ("bytes=0-", 0, NOT_SATISFIABLE),
        ("bytes=-1", 0, NOT_SATISFIABLE),
        ("bytes=1--2", 10, NOT_SATISFIABLE),
        ("bytes=+1-2", 10, NOT_SATISFIABLE),
        ("bytes 0-1", 10, None),
        ("none", 10, None),
    ],
)
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


async def test_a_client_that_stops_reading_is_dropped(app, media_root, autojump_clock):
    (media_root / "big.mp4").write_bytes(b"x" * (2 * 1024 * 1024))
    url = media_url(app, media_root / "big.mp4")
    client, server = trio.testing.lockstep_stream_pair()
    head = RequestHead("GET", url, {"host": "x"}, f"GET {url} HTTP/1.1\r\n".encode())
    start = trio.current_time()
    await app.handle(server, head, LOOPBACK)  # nobody reads `client`
    assert trio.current_time() - start == app.cfg.slow_consumer_timeout_s
    await client.aclose()


# --- the page -------------------------------------------------------------------

INDEX = b"<!doctype html><title>chat</title>"


@pytest.mark.parametrize(
    ("target", "body", "content_type"),
    [
        ("/", INDEX, "text/html; charset=utf-8"),
        ("/index.html", INDEX, "text/html; charset=utf-8"),
        ("/app.js", b"console.log('hi')", "text/javascript; charset=utf-8"),
        ("/style.css?v=2", b"body{}", "text/css; charset=utf-8"),
        ("/icon.svg", b"<svg/>", "image/svg+xml"),
        ("/chat/123", INDEX, "text/html; charset=utf-8"),
        ("/missing.js", INDEX, "text/html; charset=utf-8"),
        ("/webui/other", INDEX, "text/html; charset=utf-8"),
        ("/apiary", INDEX, "text/html; charset=utf-8"),
        ("/ws", INDEX, "text/html; charset=utf-8"),
        ("/sub/x.js", b"nested", "text/javascript; charset=utf-8"),
        ("/sub", INDEX, "text/html; charset=utf-8"),
        ("/sub/", INDEX, "text/html; charset=utf-8"),
        # Never anything outside, hidden or linked.
        ("/..%2F..%2Foutside.js", INDEX, "text/html; charset=utf-8"),
        ("/%2e%2e", INDEX, "text/html; charset=utf-8"),
        ("/%2e%2e/outside.js", INDEX, "text/html; charset=utf-8"),
        ("/sub/../../outside.js", INDEX, "text/html; charset=utf-8"),
        ("/../outside.js", INDEX, "text/html; charset=utf-8"),
        ("/.hidden", INDEX, "text/html; charset=utf-8"),
        ("/%2ehidden", INDEX, "text/html; charset=utf-8"),
        ("/sub%2Fx.js", INDEX, "text/html; charset=utf-8"),
        ("/sub%5Cx.js", INDEX, "text/html; charset=utf-8"),
        ("/app.js%00", INDEX, "text/html; charset=utf-8"),
        ("/link.js", INDEX, "text/html; charset=utf-8"),
        ("/linkdir/secret.js", INDEX, "text/html; charset=utf-8"),
    ],
)
async def test_the_page(make_app, target, body, content_type):
    reply = await fetch(make_app(path="/ws"), target, peer=REMOTE)
    assert (reply.status, reply.body) == (200, body)
    assert reply.headers["content-type"] == content_type
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("target", "body", "content_type"),
    [
        ("/assets/index-Ab12.js", b"hashed", "text/javascript; charset=utf-8"),
        ("/assets/fonts/k-9.woff2", b"wOF2", "font/woff2"),
    ],
)
async def test_hashed_assets_are_cached_for_good(make_app, target, body, content_type):
    reply = await fetch(make_app(), target)
    assert (reply.status, reply.body) == (200, body)
    assert reply.headers["content-type"] == content_type
    assert reply.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert reply.headers["x-content-type-options"] == "nosniff"
    head = await fetch(make_app(), target, method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(body))
    assert head.headers["cache-control"] == reply.headers["cache-control"]


async def test_webui_dir_replaces_the_bundled_page(make_app, tmp_path):
    build = tmp_path / "dist"
    (build / "assets").mkdir(parents=True)
    (build / "index.html").write_text("<!doctype html><title>nanobot</title>")
    (build / "assets" / "index-Zz.js").write_text("nanobot()")
    (build / "sw.js").write_text("self")
    bundled = make_app()
    app = attrs.evolve(bundled, cfg=ChannelConfig(webui_dir=str(build)))
    for target in ("/", "/chat/1", "/app.js"):  # the bundled page's file is gone
        reply = await fetch(app, target)
        assert reply.body == b"<!doctype html><title>nanobot</title>", target
        assert reply.headers["cache-control"] == "no-cache"
    assert (await fetch(app, "/assets/index-Zz.js")).body == b"nanobot()"
    sw = await fetch(app, "/sw.js")
    assert (sw.body, sw.headers["cache-control"]) == (b"self", "no-cache")
    api = await fetch(app, "/api/settings", headers=AUTH)
    assert (api.status, api.body) == (404, b"API route not found")
    # The page off wins over a webui_dir.
    off = attrs.evolve(app, webui_dir=None)
    assert (await fetch(off, "/")).status == 404


async def test_the_page_head_and_methods(app):
    head = await fetch(app, "/", method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(INDEX))
    post = await fetch(app, "/chat/1", method="POST")
    assert (post.status, post.headers["allow"]) == (405, "GET, HEAD")


async def test_the_page_off(make_app):
    app = make_app(webui_dir=None)
    for method in ("GET", "POST"):
        for target in ("/", "/app.js", "/chat/1"):
            reply = await fetch(app, target, method=method)
            assert (reply.status, reply.body) == (404, b"Not Found")


async def test_the_page_without_an_index(make_app, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    reply = await fetch(make_app(webui_dir=empty), "/")
    assert (reply.status, reply.body) == (404, b"Not Found")


# --- the rest -------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/api", "/api/", "/api/nope", "/api/sessions/c/x", "/api/media/a", "/api//x"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_api_routes(app, target, method):
    reply = await fetch(app, target, method=method, headers=AUTH)
    assert (reply.status, reply.body) == (404, b"API route not found")


async def test_healthz(app):
    reply = await fetch(app, "/healthz", peer=REMOTE)
    assert (reply.status, reply.json()) == (200, {"status": "ok"})
    head = await fetch(app, "/healthz", method="HEAD")
    assert (head.status, head.body) == (200, b"")


@pytest.mark.parametrize(
    ("peer", "headers", "status"),
    [
        (LOOPBACK, [], 200),
        (Peer("::1", 1), [], 200),
        (REMOTE, [], 401),
        (UNIX, [], 401),
        (REMOTE, AUTH, 200),
        (UNIX, AUTH, 200),
        (REMOTE, bearer("wrong"), 401),
    ],
)
async def test_metrics(app, peer, headers, status):
    no_renderer = await fetch(app, "/metrics", peer=peer, headers=headers)
    assert no_renderer.status == (404 if status == 200 else 401)
    app.metrics_text = lambda: (b"# metrics\n", "text/plain; version=0.0.4")
    reply = await fetch(app, "/metrics", peer=peer, headers=headers)
    assert reply.status == status
    if status == 200:
        assert reply.body == b"# metrics\n"
        assert reply.headers["content-type"] == "text/plain; version=0.0.4"


async def test_metrics_accepts_a_bootstrap_token(make_app):
    app = make_app()
    app.metrics_text = lambda: (b"m", "text/plain")
    token = (await fetch(app, "/webui/bootstrap")).json()["token"]
    reply = await fetch(app, "/metrics", peer=REMOTE, headers=bearer(token))
    assert (reply.status, reply.body) == (200, b"m")


async def test_a_peer_that_leaves_early_is_not_an_error(app, media_root):
    (media_root / "v.mp4").write_bytes(b"x" * (1024 * 1024))
    url = media_url(app, media_root / "v.mp4")
    client, server = trio.testing.memory_stream_pair()
    await client.aclose()
    head = RequestHead("GET", url, {}, f"GET {url} HTTP/1.1\r\n".encode())
    await app.handle(server, head, LOOPBACK)
