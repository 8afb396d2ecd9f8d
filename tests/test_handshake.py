"""The server's opening handshake on h11 and wsproto (RFC 6455 4.2, PROTOCOL 1).

The head is read once by h11; the ``101`` goes out through the same h11
connection and the bytes read past the head become the first WebSocket bytes.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

from trio_channel.http.head import RequestHead, read_request_head
from trio_channel.wire.handshake import accept, handshake_problem

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request(*headers: str, body: bytes = b"") -> bytes:
    lines = ["GET /?client_id=a HTTP/1.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


UPGRADE = (
    "Host: localhost:8765",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
)


async def head_of(data: bytes) -> RequestHead:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(data)
    head = await read_request_head(receive)
    assert isinstance(head, RequestHead)
    return head


async def test_accept_answers_101_and_hands_early_bytes_to_wsproto():
    # A masked text frame "hi" sent right behind the head.
    mask = b"\x01\x02\x03\x04"
    frame = b"\x81\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi"))
    head = await head_of(request(*UPGRADE) + frame)
    assert handshake_problem(head) is None
    assert handshake_problem(head) is None  # asking twice changes nothing
    response, ws = accept(head)
    expected = base64.b64encode(
        hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    )
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: " + expected + b"\r\n" in response
    assert b"sec-websocket-extensions" not in response.lower()
    events = list(ws.events())
    assert events == [
        TextMessage(data="hi", frame_finished=True, message_finished=True)
    ]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([h for h in UPGRADE if not h.startswith("Sec-WebSocket-Key")], 400),
        ([*UPGRADE[:3], "Sec-WebSocket-Key: a, b", UPGRADE[4]], 400),
        ([*UPGRADE[:4], "Sec-WebSocket-Version: 8"], 426),
        (list(UPGRADE[:4]), 400),
        ([*UPGRADE, "Content-Length: 3"], 400),
    ],
)
async def test_what_cannot_be_a_handshake(headers, status):
    # (A head without Host never gets here: h11 refuses it, 400.)
    body = b"abc" if any(h.startswith("Content-Length") for h in headers) else b""
    head = await head_of(request(*headers, body=body))
    assert handshake_problem(head) == status
