"""Writing one HTTP response (h11) and sending files.

:class:`Responder` is the one response writer of the channel: API answers,
files, handshake refusals and bad requests all go through it, framed by the
h11 connection that read the request (so ``HEAD`` gets no body and
HTTP/1.0 no chunking).

Every ``send_all`` must make progress within a deadline, so a client that
stops reading cannot hold a task; files are opened without following a last
symlink, checked with ``fstat`` and read in a worker thread in
:data:`CHUNK_BYTES` pieces, never whole.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Final

import attrs
import h11
import trio

from .head import RequestHead
from .mediafiles import RangeNotSatisfiable, parse_range
from .routes import HttpResponse

#: Bytes read from a file and sent per step.
CHUNK_BYTES: Final = 256 * 1024
NOSNIFF: Final = ("X-Content-Type-Options", "nosniff")


# --- files (blocking helpers run in worker threads) ------------------------------


def open_regular_file(path: Path) -> tuple[int, int] | None:
    """``(fd, size)`` of a regular file, or None (missing, directory, symlink...).

    The last component is opened without following symlinks and without
    blocking (a FIFO would hang the thread), then checked with ``fstat``, so
    what is checked is what is read. Blocking: run in a worker thread.
    """
    try:
        fd = os.open(path, FILE_FLAGS)
    except (OSError, ValueError):
        return None
    return regular_file(fd)


#: How a file is opened to be served: its last component never followed,
#: and without blocking (a FIFO would hang the thread).
FILE_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def regular_file(fd: int) -> tuple[int, int] | None:
    """``(fd, size)`` if the open ``fd`` is a regular file; else it is closed."""
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info.st_size


async def send_file(
    out: Responder,
    opened: tuple[int, int],
    headers: list[tuple[str, str]],
    *,
    ranges: bool,
) -> None:
    """Send an opened file (or one ``Range`` of it) and close it."""
    fd, size = opened
    try:
        start, length, status = 0, size, 200
        if ranges:
            headers_in = out.head.headers if out.head is not None else {}
            wanted = parse_range(headers_in.get("range"), size)
            if isinstance(wanted, RangeNotSatisfiable):
                extra = [
                    ("Content-Range", f"bytes */{size}"),
                    ("Accept-Ranges", "bytes"),
                ]
                return await out.simple(
                    HttpResponse(416, b"Range Not Satisfiable"), extra
                )
            if wanted is not None:
                start, length, status = wanted.start, wanted.length, 206
                headers = [
                    *headers,
                    ("Content-Range", f"bytes {wanted.start}-{wanted.end}/{size}"),
                ]
        out.start(status, [*headers, ("Content-Length", str(length))])
        offset, end = start, start + length
        while offset < end and not out.head_only:
            chunk = await trio.to_thread.run_sync(
                os.pread, fd, min(CHUNK_BYTES, end - offset), offset
            )
            if not chunk:
                return  # the file shrank: the short body tells the client
            await out.data(chunk)
            offset += len(chunk)
        await out.end()
    finally:
        os.close(fd)


# --- writing responses ------------------------------------------------------------


class PeerGone(Exception):
    """The client left or stopped reading; stop answering."""


@attrs.define(eq=False)
class Responder:
    """Writes one h11 response: head, body pieces, end.

    The head is held back and sent with the first piece of body, so a small
    answer is one ``send_all``. Each ``send_all`` gets ``send_timeout_s``.
    Without a ``Content-Length`` the body is chunked (HTTP/1.1 clients) or
    ends with the connection (HTTP/1.0).
    """

    stream: trio.abc.SendStream
    #: None when no head could be read (a 400 or 431): a plain GET is assumed.
    head: RequestHead | None
    send_timeout_s: float
    _conn: h11.Connection = attrs.field(init=False)
    _pending: bytes = attrs.field(default=b"", init=False)
    #: The status sent (for the access log); None until :meth:`start`.
    status: int | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        conn = self.head.conn if self.head is not None else None
        if conn is None or conn.our_state is not h11.SEND_RESPONSE:
            # h11 only answers a request it saw: give it a plain one.
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.next_event()
        self._conn = conn

    @property
    def head_only(self) -> bool:
        return self.head is not None and self.head.method == "HEAD"

    async def simple(
        self, response: HttpResponse, extra_headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """A complete small response (``Cache-Control: no-store``, ``nosniff``)."""
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            NOSNIFF,
            *extra_headers,
        ]
        self.start(response.status, headers)
        await self.data(response.body)
        await self.end()

    def start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.status = status
        response = h11.Response(
            status_code=status,
            headers=[*headers, ("Connection", "close")],
            reason=HTTPStatus(status).phrase.encode("ascii"),
        )
        self._pending += self._conn.send(response) or b""

    async def data(self, chunk: bytes) -> None:
        if chunk and not self.head_only:
            await self._send(
                self._pending + (self._conn.send(h11.Data(data=chunk)) or b"")
            )
            self._pending = b""

    async def end(self) -> None:
        await self._send(self._pending + (self._conn.send(h11.EndOfMessage()) or b""))
        self._pending = b""

    async def text(self, status: int, body: bytes) -> None:
        """A short plain-text answer (refusals, bad requests); never raises."""
        try:
            await self.simple(HttpResponse(status, body))
        except PeerGone:
            return

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        with trio.move_on_after(self.send_timeout_s) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise PeerGone from None
        if scope.cancelled_caught:
            raise PeerGone
