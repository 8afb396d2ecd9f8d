"""The HTTP front: reading request heads, upgrade detection, plain routes."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from trio_channel import ChannelConfig
from trio_channel.core.auth import IssuedTokenStore
from trio_channel.http.head import (
    BadRequest,
    RequestHead,
    is_upgrade,
    read_request_head,
)
from trio_channel.http.response import Responder
from trio_channel.http.routes import Endpoint, issue_token, match_route

HEAD = (
    b"GET /ws/?client_id=a HTTP/1.1\r\nHost: example\r\nUpgrade: WebSocket\r\n"
    b"Connection: keep-alive\r\nConnection: Upgrade\r\n\r\nTRAILING"
)


async def _read(data: bytes, chunk: int) -> RequestHead | BadRequest | None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    async with trio.open_nursery() as nursery:

        async def feed() -> None:
            for i in range(0, len(data), chunk):
                await send.send_all(data[i : i + chunk])
            await send.aclose()

        nursery.start_soon(feed)
        return await read_request_head(receive)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
async def test_heads_are_read_whatever_the_chunking(chunk):
    head = await _read(HEAD, chunk)
    assert isinstance(head, RequestHead)
    assert head.method == "GET"
    assert head.target == "/ws/?client_id=a"
    assert head.headers["connection"] == "keep-alive, Upgrade"
    assert head.http_version == "1.1"
    assert head.conn is not None
    # The h11 connection that read the head keeps what came after it.
    head.conn.next_event()  # EndOfMessage
    assert b"TRAILING".startswith(head.conn.trailing_data[0])  # the rest: unread
    assert is_upgrade(head, "/ws")
    assert not is_upgrade(head, "/")


async def test_garbage_is_a_400_and_silence_is_none():
    assert await _read(b"\x00\x01 not http\r\n\r\n", 4096) == BadRequest(400)
    assert await _read(b"", 1) is None


async def test_a_huge_head_is_a_431_even_when_complete():
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert await _read(big, 65536) == BadRequest(431)


def _head(target: str, method: str = "GET", **headers: str) -> RequestHead:
    return RequestHead(method, target, {k.lower(): v for k, v in headers.items()})


@pytest.mark.parametrize(
    ("head", "upgrade"),
    [
        (_head("/", Upgrade="websocket", Connection="Upgrade"), True),
        (_head("/?x=1", Upgrade="foo, WebSocket", Connection="x, UPGRADE"), True),
        (_head("/", Upgrade="websocket"), False),
        (_head("/", Connection="upgrade"), False),
        (_head("/", "POST", Upgrade="websocket", Connection="upgrade"), False),
        (_head("/other", Upgrade="websocket", Connection="upgrade"), False),
    ],
)
def test_upgrade_detection(head, upgrade):
    assert is_upgrade(head, "/") is upgrade


def test_token_route():
    cfg = ChannelConfig(token_issue_path="/auth/token", token_issue_secret="sec")
    match = match_route(cfg, "/auth/token/")
    assert match.endpoint is Endpoint.ISSUE_TOKEN
    assert "POST" not in match.methods  # answered 405
    tokens = IssuedTokenStore(ttl_s=300)

    def issue(head: RequestHead) -> tuple[int, bytes]:
        answer = issue_token(head, cfg, tokens, 0.0)
        return answer.status, answer.body

    status, body = issue(_head("/auth/token/", Authorization="Bearer sec"))
    assert status == 200
    payload = json.loads(body)
    assert payload["token"].startswith("nbwt_") and payload["expires_in"] == 300
    assert issue(_head("/auth/token", Authorization="Bearer no"))[0] == 401
    assert issue(_head("/auth/token", **{"X-Nanobot-Auth": "sec"}))[0] == 200


def test_token_route_refuses_past_the_cap():
    tokens = IssuedTokenStore(ttl_s=300, capacity=1)
    cfg = ChannelConfig(token_issue_path="/t")
    local = _head("/t", Host="127.0.0.1:8765")
    assert issue_token(local, cfg, tokens, 0.0).status == 200
    refused = issue_token(local, cfg, tokens, 1.0)
    assert (refused.status, refused.body) == (
        429,
        b'{"error":"too many outstanding tokens"}',
    )


async def test_responses_close_the_connection():
    send, receive = trio.testing.memory_stream_one_way_pair()
    await Responder(send, None, 1.0).text(404, b"Not Found")
    await send.aclose()
    out = b""
    while chunk := await receive.receive_some():
        out += chunk
    assert out.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"connection: close" in out.lower()
    assert b"x-content-type-options: nosniff" in out.lower()
    assert out.endswith(b"\r\n\r\nNot Found")


@pytest.mark.parametrize(
    ("host", "allowed", "status"),
    [
        ("127.0.0.1:8765", (), 200),
        ("localhost", (), 200),
        ("[::1]:8765", (), 200),
        ("LOCALHOST:1", (), 200),
        ("evil.example", (), 403),
        ("evil.example:8765", (), 403),
        ("127.0.0.1.evil.example", (), 403),
        ("", (), 403),
        ("chat.lan:8765", ("chat.lan",), 200),
        ("CHAT.lan", ("chat.lan",), 200),
    ],
)
def test_the_token_route_without_a_secret_answers_only_our_own_host(
    host, allowed, status
):
    # PROTOCOL 1, 6: a DNS-rebinding page sends its own name as Host.
    cfg = ChannelConfig(token_issue_path="/t", allowed_hosts=allowed)
    tokens = IssuedTokenStore(ttl_s=300)
    assert issue_token(_head("/t", Host=host), cfg, tokens, 0.0).status == status
    # On a unix socket no browser can reach us: no Host check.
    assert (
        issue_token(_head("/t", Host=host), cfg, tokens, 0.0, tcp=False).status == 200
    )
