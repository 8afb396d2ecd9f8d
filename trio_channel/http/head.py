"""The plain-HTTP front that shares the port with the WebSocket upgrade.

:func:`read_request_head` reads exactly one request head with h11 (bounded to
:data:`MAX_HEAD_BYTES`; the caller bounds the time), keeping the bytes read
past it; :func:`upgrade_request_bytes` turns an upgrade into the canonical
head that trio-websocket is then given (see ``_wire.accept_websocket``).
:func:`is_upgrade` applies PROTOCOL 1 step 1, and :func:`respond` writes one
small response and ends the exchange: every plain HTTP request is answered
with ``Connection: close``.
"""

from __future__ import annotations

import attrs
import h11
import trio

from ..config import normalize_path

MAX_HEAD_BYTES = 16 * 1024
_RECEIVE_BYTES = 4096

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@attrs.frozen
class RequestHead:
    method: str
    #: The raw request target (path and query), as sent.
    target: str
    #: Lower-cased names; repeated headers joined with ", ".
    headers: dict[str, str]
    #: Every byte read from the stream so far (the head and anything after).
    raw: bytes
    #: The bytes read past the head (a client may send its first frame early).
    trailing: bytes = b""


@attrs.frozen
class BadRequest:
    """The head could not be read: answer ``status`` (400 or 431), or drop."""

    status: int


async def read_request_head(
    stream: trio.abc.ReceiveStream, *, max_bytes: int = MAX_HEAD_BYTES
) -> RequestHead | BadRequest | None:
    """Read one request head; None when the peer closed before sending one."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            # h11 hints 400, 431 or (unknown transfer coding) 501; we promise
            # 400 or 431.
            status = exc.error_status_hint
            return BadRequest(status if status in (400, 431) else 400)
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE_BYTES)
            if not data and not raw:
                return None
            raw += data
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            # h11 bounds only an *incomplete* head; bound the complete one too.
            if len(raw) - len(conn.trailing_data[0]) > max_bytes:
                return BadRequest(431)
            headers: dict[str, str] = {}
            for name, value in event.headers:
                key = name.decode("ascii").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            return RequestHead(
                method=event.method.decode("ascii"),
                target=event.target.decode("latin-1"),
                headers=headers,
                raw=bytes(raw),
                trailing=conn.trailing_data[0],
            )
        # ConnectionClosed before a full head, or anything unexpected.
        return None


def is_upgrade(head: RequestHead, path: str) -> bool:
    """PROTOCOL 1 step 1: on ``path``, ``Upgrade`` contains websocket and
    ``Connection`` contains upgrade (case-insensitive)."""
    return (
        head.method == "GET"
        and normalize_path(head.target) == normalize_path(path)
        and "websocket" in head.headers.get("upgrade", "").lower()
        and "upgrade" in head.headers.get("connection", "").lower()
    )


def upgrade_request_bytes(head: RequestHead) -> bytes | BadRequest:
    """The upgrade re-written in the one shape trio-websocket accepts.

    Our rules decide what an upgrade is (PROTOCOL 1: ``Upgrade`` *contains*
    websocket, ``Connection`` *contains* upgrade); wsproto is stricter (it
    wants ``Upgrade: websocket`` exactly). So we check what a handshake
    cannot do without, answer those errors ourselves (instead of leaving a
    connection slot waiting on a handshake that will never come), and hand
    trio-websocket a canonical head, followed by any bytes read past it.
    Subprotocols and extensions are dropped: we negotiate neither, so frames
    are never compressed and are the same bytes for every subscriber.
    """
    key = head.headers.get("sec-websocket-key", "").strip()
    version = head.headers.get("sec-websocket-version", "").strip()
    host = head.headers.get("host", "")
    if not key or not host or "," in key or "," in host or not _idna_ok(host):
        return BadRequest(400)
    if version != "13":
        return BadRequest(426 if version else 400)
    canonical = (
        f"GET {head.target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return canonical.encode("latin-1") + head.trailing


def _idna_ok(host: str) -> bool:
    """wsproto decodes ``Host`` as IDNA and fails the whole task if it cannot."""
    try:
        host.encode("ascii").decode("idna")
    except UnicodeError:
        return False
    return True


def response_bytes(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """A complete ``Connection: close`` response, produced by h11."""
    conn = h11.Connection(h11.SERVER)
    # h11 needs to have seen a request before it will produce a response.
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        ("Cache-Control", "no-store"),
        *(extra_headers or []),
    ]
    reason = _REASONS.get(status, "")
    out = conn.send(
        h11.Response(status_code=status, headers=headers, reason=reason.encode())
    )
    out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out or b""


async def respond(
    stream: trio.abc.SendStream,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    """Send one response; a peer that already left is not an error."""
    try:
        await stream.send_all(response_bytes(status, body, content_type=content_type))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
