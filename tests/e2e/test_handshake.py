"""PROTOCOL 1-2 and the plain HTTP routes, against the real daemon."""

from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import quote

import pytest
from websockets.exceptions import InvalidStatus

from ._client import (
    OP_TEXT,
    FrameReader,
    accept_value,
    connect,
    echo,
    http_get,
    raw_upgrade,
    ready,
    recv,
    refused,
    send,
)
from .conftest import Daemon, DaemonFactory

ANON_RE = re.compile(r"anon-[0-9a-f]{12}")
TOKEN_RE = re.compile(r"nbwt_[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def open_daemon(spawn_module_daemon: DaemonFactory) -> Daemon:
    """No token needed, no chat page; the WebSocket lives on ``/ws``."""
    return spawn_module_daemon("--no-require-token", "--path", "/ws", "--no-webui")


@pytest.fixture(scope="module")
def guarded(spawn_module_daemon: DaemonFactory) -> Daemon:
    """An allow list (``alice`` and, with a leading space, `` carol``) and a
    static token."""
    return spawn_module_daemon(
        "--allow-from", "alice", "--allow-from", " carol", "--token", "s3cret"
    )


@pytest.fixture(scope="module")
def issuing(spawn_module_daemon: DaemonFactory) -> Daemon:
    """Tokens required (the default) and handed out by the issue route."""
    return spawn_module_daemon(
        "--token-issue-path", "/auth/token", "--token-issue-secret", "sec"
    )


# --- ready and client_id -----------------------------------------------------


def test_ready_comes_first_and_names_a_fresh_default_chat(open_daemon: Daemon):
    assert open_daemon.url == f"ws://127.0.0.1:{open_daemon.port}/ws"
    with connect(open_daemon.ws_url("client_id=c1")) as a:
        first = ready(a)
        assert first["client_id"] == "c1"
        echo(a, first["chat_id"], "hello")
        with connect(open_daemon.ws_url("client_id=c1")) as b:
            assert ready(b)["chat_id"] != first["chat_id"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("client_id=" + quote("  bob \t"), "bob"),
        ("client_id=" + "x" * 200, "x" * 128),
        ("client_id=" + quote(" " + "y" * 130), "y" * 128),
        ("client_id=a&client_id=b", "a"),
    ],
)
def test_client_id_is_stripped_and_cut(open_daemon: Daemon, query, expected):
    with connect(open_daemon.ws_url(query)) as ws:
        assert ready(ws)["client_id"] == expected


@pytest.mark.parametrize("query", ["", "client_id=", "client_id=%20%20", "other=1"])
def test_missing_client_id_becomes_anon(open_daemon: Daemon, query):
    with connect(open_daemon.ws_url(query)) as ws:
        assert ANON_RE.fullmatch(ready(ws)["client_id"])


def test_the_path_is_compared_without_trailing_slashes(open_daemon: Daemon):
    with connect(open_daemon.ws_url("client_id=s", path="/ws//")) as ws:
        assert ready(ws)["client_id"] == "s"
    assert refused(open_daemon.ws_url(path="/wsx")) == (404, b"Not Found")
    assert refused(open_daemon.ws_url(path="/")) == (404, b"Not Found")


# --- allow list and tokens ---------------------------------------------------


@pytest.mark.parametrize("client_id", ["alice", "%20carol"])
def test_allow_list_admits_listed_ids(guarded: Daemon, client_id):
    with connect(guarded.ws_url(f"client_id={client_id}&token=s3cret")) as ws:
        assert ready(ws)["client_id"] == client_id.replace("%20", "")


@pytest.mark.parametrize(
    "query",
    [
        "client_id=bob&token=s3cret",
        "client_id=%20alice&token=s3cret",  # compared raw, not stripped
        "client_id=alice%20&token=s3cret",
        "client_id=ALICE&token=s3cret",
        "client_id=carol&token=s3cret",  # the listed id is " carol"
        "token=s3cret",  # missing: compared as ""
        "client_id=bob&client_id=alice&token=s3cret",  # the first value counts
        "client_id=bob",  # 403 comes before 401
    ],
)
def test_allow_list_refuses_with_403(guarded: Daemon, query):
    assert refused(guarded.ws_url(query)) == (403, b"Forbidden")


@pytest.mark.parametrize(
    "query",
    [
        "client_id=alice",
        "client_id=alice&token=",
        "client_id=alice&token=s3cre",
        "client_id=alice&token=S3CRET",
        "client_id=alice&token=%C3%A9",  # non-ASCII: a mismatch, never a 500
        "client_id=alice&token=nbwt_" + "A" * 43,
    ],
)
def test_static_token_refuses_with_401(guarded: Daemon, query):
    assert refused(guarded.ws_url(query)) == (401, b"Unauthorized")


def test_messages_are_checked_against_the_cleaned_client_id(guarded: Daemon):
    """`` carol`` passes the handshake, but her messages are sent as ``carol``,
    which is not listed: they are dropped silently."""
    with (
        connect(guarded.ws_url("client_id=%20carol&token=s3cret")) as carol,
        connect(guarded.ws_url("client_id=alice&token=s3cret")) as alice,
    ):
        carol_chat = ready(carol)["chat_id"]
        alice_chat = ready(alice)["chat_id"]
        carol.send("dropped")
        send(carol, {"type": "message", "chat_id": carol_chat, "content": "also"})
        send(carol, {"type": "new_chat"})
        attached = recv(carol)
        assert attached["event"] == "attached"
        assert recv(carol)["event"] == "session_updated"
        echo(alice, alice_chat, "alice is heard")
        # The echo agent answers within milliseconds; nothing comes.
        with pytest.raises(TimeoutError):
            carol.recv(timeout=0.5)


def test_default_settings_require_a_token(spawn_daemon: DaemonFactory):
    daemon = spawn_daemon()
    for query in ["", "client_id=a", "client_id=a&token=", "token=anything"]:
        assert refused(daemon.ws_url(query)) == (401, b"Unauthorized")


def test_static_token_admits(spawn_daemon: DaemonFactory):
    daemon = spawn_daemon("--token", "s3cret")
    with connect(daemon.ws_url("client_id=t&token=s3cret")) as ws:
        chat_id = ready(ws)["chat_id"]
        echo(ws, chat_id, "with a token")
    assert refused(daemon.ws_url("client_id=t")) == (401, b"Unauthorized")


def _issue(daemon: Daemon, headers: dict[str, str]) -> tuple[int, bytes]:
    status, head, body = http_get(daemon.host, daemon.port, "/auth/token", headers)
    if status == 200:
        assert head["content-type"] == "application/json"
    return status, body


def test_issued_token_opens_exactly_one_websocket(issuing: Daemon):
    status, body = _issue(issuing, {"Authorization": "Bearer sec"})
    assert status == 200
    answer = json.loads(body)
    assert answer.keys() == {"token", "expires_in"}
    assert TOKEN_RE.fullmatch(answer["token"])
    assert answer["expires_in"] == 300
    url = issuing.ws_url(f"client_id=i&token={answer['token']}")
    with connect(url) as ws:
        assert ready(ws)["client_id"] == "i"
    assert refused(url) == (401, b"Unauthorized")


def test_issued_tokens_are_distinct_and_independent(issuing: Daemon):
    first = json.loads(_issue(issuing, {"Authorization": "Bearer sec"})[1])["token"]
    second = json.loads(_issue(issuing, {"X-Nanobot-Auth": "sec"})[1])["token"]
    assert first != second
    for token in (second, first):
        with connect(issuing.ws_url(f"token={token}")) as ws:
            ready(ws)
    assert refused(issuing.ws_url("")) == (401, b"Unauthorized")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic sec"},
        {"X-Nanobot-Auth": "wrong"},
        # X-Nanobot-Auth only counts when no Bearer header is sent.
        {"Authorization": "Bearer wrong", "X-Nanobot-Auth": "sec"},
    ],
)
def test_issue_route_refuses_without_the_secret(issuing: Daemon, headers):
    assert _issue(issuing, headers) == (401, b"Unauthorized")


def test_capacity_refuses_with_503(spawn_daemon: DaemonFactory):
    daemon = spawn_daemon("--no-require-token", "--max-connections", "1")
    with connect(daemon.ws_url("client_id=first")) as ws:
        ready(ws)
        assert refused(daemon.ws_url()) == (503, b"Service Unavailable")
    # The slot frees once the server has seen the close; poll, bounded.
    deadline = time.monotonic() + 5
    while True:
        try:
            with connect(daemon.ws_url("client_id=second")) as ws:
                assert ready(ws)["client_id"] == "second"
            break
        except InvalidStatus:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- the raw upgrade and plain HTTP ------------------------------------------


@pytest.mark.parametrize("connection", ["keep-alive, Upgrade", "UPGRADE"])
def test_raw_upgrade_with_a_browser_connection_header(open_daemon: Daemon, connection):
    with raw_upgrade(
        open_daemon.host, open_daemon.port, "/ws/?client_id=raw", connection
    ) as (sock, head, rest, key):
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101 ")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        assert headers["upgrade"].lower() == "websocket"
        assert "upgrade" in headers["connection"].lower()
        assert headers["sec-websocket-accept"] == accept_value(key)
        frame = FrameReader(sock, rest).frame()
        assert frame is not None
        opcode, payload = frame
        assert opcode == OP_TEXT
        first = json.loads(payload)
        assert first["event"] == "ready"
        assert first["client_id"] == "raw"


def test_get_on_the_websocket_path_without_upgrade_is_404(open_daemon: Daemon):
    for target in ("/ws", "/ws/", "/ws?client_id=x"):
        status, _, body = http_get(open_daemon.host, open_daemon.port, target)
        assert (status, body) == (404, b"Not Found")
    # Upgrade present but no "upgrade" in Connection: still plain HTTP.
    status, _, body = http_get(
        open_daemon.host,
        open_daemon.port,
        "/ws",
        {"Upgrade": "websocket", "Connection": "keep-alive"},
    )
    assert (status, body) == (404, b"Not Found")


def test_get_on_the_websocket_path_without_upgrade_is_the_chat_page(
    issuing: Daemon,
):
    """With the web page on (the default), a plain GET on ``path`` is served
    as HTTP: the page, not an upgrade and not a 401."""
    for target in ("/", "/?client_id=x"):
        status, headers, body = http_get(issuing.host, issuing.port, target)
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert body.lstrip().lower().startswith(b"<!doctype html")
    status, _, body = http_get(issuing.host, issuing.port, "/api/x")
    assert (status, body) == (404, b"API route not found")


def test_healthz_and_unknown_api_routes(open_daemon: Daemon):
    status, headers, body = http_get(open_daemon.host, open_daemon.port, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "ok"}
    for target in ("/api/x", "/api/", "/api/sessions/x/y/z"):
        status, _, body = http_get(open_daemon.host, open_daemon.port, target)
        assert (status, body) == (404, b"API route not found")
    status, _, body = http_get(open_daemon.host, open_daemon.port, "/elsewhere")
    assert (status, body) == (404, b"Not Found")


def test_an_oversized_request_head_is_refused(open_daemon: Daemon):
    """(ext) a head over 16 KiB gets 431 or is dropped, never served."""
    request = (
        "GET /healthz HTTP/1.1\r\nHost: x\r\n" + f"X-Big: {'a' * 20_000}\r\n\r\n"
    ).encode()
    answer = b""
    with socket.create_connection(
        (open_daemon.host, open_daemon.port), timeout=5
    ) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(4096):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # dropped
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
