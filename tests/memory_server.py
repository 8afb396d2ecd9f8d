"""A whole trio_channel server over in-memory streams, for MockClock tests.

``MemoryListener`` hands the server one end of a memory stream pair per
``connect()``; clients are trio-websocket client connections over the other
end, or raw streams when a test needs to misbehave (never answer pings, stop
reading, send half a request head).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
import trio_websocket

from trio_channel import ChannelConfig, open_bus
from trio_channel.bus import AgentBusEnds
from trio_channel.core.session import Peer
from trio_channel.server import Channel

LOOPBACK_PEER = Peer("127.0.0.1", 40000)

StreamFactory = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](16)

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()

    async def connect(
        self, pair: StreamFactory = trio.testing.memory_stream_pair
    ) -> trio.abc.Stream:
        client, server = pair()
        await self._send.send(server)
        return client


@attrs.define
class MemoryServer:
    channel: Channel
    listener: MemoryListener
    agent: AgentBusEnds
    nursery: trio.Nursery
    serve_scope: trio.CancelScope

    def stop(self) -> None:
        """Cancel ``serve_listeners`` only, as SIGTERM does in the daemon."""
        self.serve_scope.cancel()

    @property
    def hub(self) -> Any:
        return self.channel.hub

    async def raw(
        self, pair: StreamFactory = trio.testing.memory_stream_pair
    ) -> trio.abc.Stream:
        return await self.listener.connect(pair)

    async def http(self, request: bytes) -> tuple[int, bytes]:
        """Send one raw request; return (status, body)."""
        stream = await self.raw()
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    async def ws(self, target: str = "/") -> Client:
        stream = await self.raw()
        conn = await trio_websocket.wrap_client_stream(
            self.nursery, stream, "localhost", target
        )
        return Client(conn)


@attrs.define
class Client:
    conn: trio_websocket.WebSocketConnection

    async def send(self, frame: str | dict[str, Any]) -> None:
        await self.conn.send_message(
            frame if isinstance(frame, str) else json.dumps(frame)
        )

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(60):
            data = json.loads(await self.conn.get_message())
        assert isinstance(data, dict)
        return data

    async def recv_until(self, event: str, limit: int = 50) -> list[dict[str, Any]]:
        """Frames up to and including the first with ``event``."""
        seen = []
        for _ in range(limit):
            frame = await self.recv()
            seen.append(frame)
            if frame["event"] == event:
                return seen
        raise AssertionError(f"no {event!r} in {seen}")


def upgrade_request(target: str = "/") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()


async def read_head(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    return data


@asynccontextmanager
async def memory_server(
    *,
    peer: Peer = LOOPBACK_PEER,
    **config: Any,
) -> AsyncIterator[MemoryServer]:
    """Run a Channel on a memory listener; the test plays the agent.

    Token checks are off unless the test turns them on; the session store is
    in memory and ``data_dir`` a fresh temporary directory unless given.
    """
    config.setdefault("websocket_requires_token", False)
    config.setdefault("session_store", "memory")
    with tempfile.TemporaryDirectory() as data_dir:
        config.setdefault("data_dir", data_dir)
        async with _serving(ChannelConfig(**config), peer) as server:
            yield server


@asynccontextmanager
async def _serving(cfg: ChannelConfig, peer: Peer) -> AsyncIterator[MemoryServer]:
    server_ends, agent_ends = open_bus(cfg.bus_capacity)
    channel = Channel(cfg, server_ends, peer_of=lambda _stream: peer)
    listener = MemoryListener()
    serve_scope = trio.CancelScope()
    stopped = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            with serve_scope:
                await channel.serve_listeners([listener], task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        yield MemoryServer(channel, listener, agent_ends, nursery, serve_scope)
        # Stop the server while the clients can still answer its close
        # frames (as they would on SIGTERM), then cancel the clients.
        serve_scope.cancel()
        await stopped.wait()
        nursery.cancel_scope.cancel()
