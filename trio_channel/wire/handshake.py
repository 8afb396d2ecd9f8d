"""The server's half of the WebSocket opening handshake (RFC 6455 4.2).

h11 already read the request head (:mod:`trio_channel.http.head`); this
module checks what a handshake cannot do without, writes the ``101`` through
that same h11 connection (the accept token from ``wsproto.utilities``) and
hands the bytes h11 read past the head to a ``wsproto`` frame connection. No
extension or subprotocol is ever negotiated, so frames are never compressed
and every subscriber gets the same bytes.
"""

from __future__ import annotations

import h11
from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import generate_accept_token

from ..http.head import RequestHead

__all__ = ["accept", "handshake_problem"]


def handshake_problem(head: RequestHead) -> int | None:
    """The status to refuse an upgrade that cannot be a handshake, else None.

    400 without a key or ``Host``; 426 (or 400 when missing) for a version
    other than 13. Checked before the auth steps, so it never spends a token.
    """
    key = head.headers.get("sec-websocket-key", "").strip()
    version = head.headers.get("sec-websocket-version", "").strip()
    if not key or "," in key or not key.isascii() or not head.headers.get("host"):
        return 400
    if version != "13":
        return 426 if version else 400
    conn = head.conn
    if conn is None:
        return 400
    if conn.their_state is h11.SEND_BODY:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return 400
        if not isinstance(event, h11.EndOfMessage):
            return 400  # an upgrade request carries no body
    return None


def accept(head: RequestHead) -> tuple[bytes, Connection]:
    """The ``101`` to send, and the frame connection that takes over.

    Call only after :func:`handshake_problem` returned None.
    """
    conn = head.conn
    assert conn is not None
    key = head.headers["sec-websocket-key"].strip().encode("ascii")
    response = conn.send(
        h11.InformationalResponse(
            status_code=101,
            headers=[
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", generate_accept_token(key)),
            ],
            reason=b"Switching Protocols",
        )
    )
    trailing, _ = conn.trailing_data
    return response or b"", Connection(ConnectionType.SERVER, trailing_data=trailing)
