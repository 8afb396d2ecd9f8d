"""The client's WebSocket: trio-websocket's public API over a stream we own.

``open_websocket_url`` of trio-websocket 0.12.2 waits out its whole connect
timeout, and then leaks the socket, when a server closes the connection
during the opening handshake, as a daemon that is shutting down does. So the
client opens the TCP (or TLS) stream itself, hands it to
``trio_websocket.wrap_client_stream``, ends the attempt as soon as the peer
closes the stream, and always closes the stream when done.
"""

from __future__ import annotations

import contextlib
import ssl
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_websocket

from .auth import ServerAddress, ServerUnavailable

__all__ = ["open_websocket", "single_exception"]

#: How long the closing handshake may take when the client leaves.
CLOSE_TIMEOUT_S = 2.0


@asynccontextmanager
async def open_websocket(
    address: ServerAddress,
    resource: str,
    *,
    ssl_context: ssl.SSLContext | None,
    timeout_s: float,
    max_message_bytes: int,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client WebSocket to *address* for *resource* (path and query).

    Connecting and the opening handshake each get *timeout_s*; leaving the
    block closes with 1000 (at most :data:`CLOSE_TIMEOUT_S`), then closes
    the stream whatever happened.
    """
    with single_exception():
        async with trio.open_nursery() as nursery:
            with trio.fail_after(timeout_s):
                stream = await _open_stream(address, ssl_context)
            watched = _EofWatch(stream)
            try:
                with trio.fail_after(timeout_s):
                    ws = await _handshake(
                        nursery, watched, address, resource, max_message_bytes
                    )
                try:
                    yield ws
                finally:
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(CLOSE_TIMEOUT_S),
                    ):
                        await ws.aclose()
            finally:
                await trio.aclose_forcefully(watched)
                nursery.cancel_scope.cancel()


async def _open_stream(
    address: ServerAddress, ssl_context: ssl.SSLContext | None
) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream(address.host, address.port)
    if not address.tls:
        return tcp
    context = ssl_context or ssl.create_default_context()
    tls = trio.SSLStream(tcp, context, server_hostname=address.host)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls


@contextlib.contextmanager
def single_exception() -> typing.Iterator[None]:
    """Raise a lone exception out of a nursery as itself, not in a group.

    ``Cancelled`` beside it is left out: the cancellation is delivered again
    at the next checkpoint, as trio-websocket does for its own nurseries.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        others = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(others) == 1:
            raise others[0] from None
        raise


class _EofWatch(trio.abc.Stream):
    """A stream that tells when the peer closed it (see _open_websocket)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.eof = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self.eof.set()
            raise
        if not data:
            self.eof.set()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _handshake(
    nursery: trio.Nursery,
    stream: _EofWatch,
    address: ServerAddress,
    resource: str,
    max_message_bytes: int,
) -> trio_websocket.WebSocketConnection:
    """The opening handshake, or :class:`ServerUnavailable` on an early EOF."""
    result: list[trio_websocket.WebSocketConnection] = []
    failure: list[BaseException] = []

    async def shake(done: trio.CancelScope) -> None:
        try:
            result.append(
                await trio_websocket.wrap_client_stream(
                    nursery,
                    typing.cast(trio.SocketStream, stream),
                    address.netloc,
                    resource,
                    message_queue_size=16,
                    max_message_size=max_message_bytes,
                )
            )
        except Exception as exc:
            failure.append(exc)
        done.cancel()

    async def watch(done: trio.CancelScope) -> None:
        await stream.eof.wait()
        done.cancel()

    async with trio.open_nursery() as race:
        race.start_soon(shake, race.cancel_scope)
        race.start_soon(watch, race.cancel_scope)
    if failure:
        raise failure[0]
    if not result:
        raise ServerUnavailable("the server closed the connection during the handshake")
    return result[0]
