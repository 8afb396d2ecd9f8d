"""Reading the one request head every connection starts with (h11).

:func:`read_request_head` reads exactly one request head with h11, bounded to
:data:`MAX_HEAD_BYTES` (the caller bounds the time). The h11 connection that
parsed it stays in the :class:`RequestHead`: the response (a plain HTTP
answer, a refusal, or the WebSocket ``101``) is written through it, so the
head is parsed once, and after a ``101`` its ``trailing_data`` are the first
WebSocket bytes (a client may send its first frame early).
:func:`is_upgrade` applies PROTOCOL 1 step 1.
"""

from __future__ import annotations

import attrs
import h11
import trio

from ..config import normalize_path

MAX_HEAD_BYTES = 16 * 1024
_RECEIVE_BYTES = 4096


@attrs.frozen
class RequestHead:
    method: str
    #: The raw request target (path and query), as sent.
    target: str
    #: Lower-cased names; repeated headers joined with ", ".
    headers: dict[str, str]
    http_version: str = "1.1"
    #: The h11 connection that read the head; responses are written with it.
    conn: h11.Connection | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@attrs.frozen
class BadRequest:
    """The head could not be read: answer ``status`` (400 or 431), or drop."""

    status: int


async def read_request_head(
    stream: trio.abc.ReceiveStream, *, max_bytes: int = MAX_HEAD_BYTES
) -> RequestHead | BadRequest | None:
    """Read one request head; None when the peer closed before sending one."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
    received = 0
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
            if not data and not received:
                return None
            received += len(data)
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            # h11 bounds only an *incomplete* head; bound the complete one too.
            if received - len(conn.trailing_data[0]) > max_bytes:
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
                http_version=event.http_version.decode("ascii"),
                conn=conn,
            )
        # ConnectionClosed before a full head, or anything unexpected.
        return None


def is_upgrade_request(head: RequestHead) -> bool:
    """``Upgrade`` contains websocket and ``Connection`` contains upgrade."""
    return (
        head.method == "GET"
        and "websocket" in head.headers.get("upgrade", "").lower()
        and "upgrade" in head.headers.get("connection", "").lower()
    )


def is_upgrade(head: RequestHead, path: str) -> bool:
    """PROTOCOL 1 step 1: an upgrade request on ``path`` (case-insensitive)."""
    return is_upgrade_request(head) and normalize_path(head.target) == normalize_path(
        path
    )
