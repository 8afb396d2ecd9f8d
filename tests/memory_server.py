"""The in-memory server of ``trio_channel.testing``, with test conveniences.

``memory_server`` runs a whole channel over memory streams (the test plays the
agent); ``Client`` wraps a trio-websocket client connection with JSON helpers.
Raw streams are there for tests that misbehave (never answer pings, stop
reading, send half a request head).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
import trio_websocket

from trio_channel.core.session import Peer
from trio_channel.testing import (
    LOOPBACK_PEER,
    InMemoryServer,
    StreamPair,
    serve_in_memory,
)

__all__ = ["LOOPBACK_PEER", "Client", "MemoryServer", "memory_server", "read_head"]


@attrs.define
class MemoryServer:
    inner: InMemoryServer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def hub(self) -> Any:
        return self.inner.channel.hub

    async def ws(
        self, target: str = "/", pair: StreamPair = trio.testing.memory_stream_pair
    ) -> Client:
        return Client(await self.inner.connect(target, pair))


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
    async with serve_in_memory(peer=peer, **config) as server:
        yield MemoryServer(server)
