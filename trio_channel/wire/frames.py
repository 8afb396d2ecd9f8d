"""Pre-framed writes below trio-websocket's public API.

Why this exists: trio-websocket sends one message per ``send_message`` call,
paying a lock, a ``send_all`` and scheduler passes per frame per connection.
Fanning one event out to N subscribers that way costs N full trips. Server
frames are unmasked and we negotiate no extension (no permessage-deflate), so
a text frame is the same bytes for every subscriber: we frame an event once
(:func:`text_frame`) and each connection's writer sends everything queued in
one ``send_all`` (:func:`send_framed`).

``send_framed`` uses three private attributes of
``trio_websocket.WebSocketConnection`` (``_stream``, ``_stream_lock``,
``_wsproto``) and the private ``_abort_web_socket()``, exactly as the
library's own ``_send`` does; :func:`abort` uses ``_close_stream()``, and
:func:`accept_websocket` ``_reader_task()`` and ``_get_request()``.
``pyproject.toml`` pins ``trio-websocket`` to 0.12.x and
``tests/test_wire.py`` fails loudly if those names change.
"""

from __future__ import annotations

import struct

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState

_FIN_TEXT = 0x81
_FIN_CLOSE = 0x88


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, unfragmented text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _FIN_TEXT, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame (RFC 6455 5.5.1); reason cut to fit 125 bytes."""
    body = struct.pack("!H", code) + reason.encode()[:123]
    return struct.pack("!BB", _FIN_CLOSE, len(body)) + body


async def accept_websocket(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    request: bytes,
    *,
    message_queue_size: int,
    max_message_size: int,
) -> WebSocketConnection:
    """Complete a server handshake whose request head we already read.

    ``trio_websocket.wrap_server_stream`` does the same but wants to read
    the head from the stream itself; feeding it to wsproto first spares a
    stream wrapper that would sit under every receive of the connection.
    The body is ``wrap_server_stream``'s, with ``receive_data`` added.
    """
    protocol = WSConnection(ConnectionType.SERVER)
    protocol.receive_data(request)
    connection = WebSocketConnection(
        stream,
        protocol,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
    )
    nursery.start_soon(connection._reader_task)
    proposal = await connection._get_request()
    return await proposal.accept()


async def send_framed(ws: WebSocketConnection, data: bytes) -> None:
    """Write already-framed bytes to ``ws``; raise ``ConnectionClosed`` if closed.

    Holds the connection's own stream lock, so pings, pongs and the close
    handshake sent by trio-websocket never interleave with our frames.
    """
    if ws.closed is not None or ws._wsproto.state != ConnectionState.OPEN:
        raise ConnectionClosed(ws.closed)
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws.closed) from None


async def abort(ws: WebSocketConnection) -> None:
    """Drop the transport without a close frame (used after a torn write)."""
    await ws._close_stream()
