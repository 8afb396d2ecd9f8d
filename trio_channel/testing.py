"""Test helpers for people who embed the channel: the whole server in memory.

Run the real channel (handshake, protocol, store, fan-out) over in-memory
streams under ``trio.testing.MockClock``, so an agent's test takes
milliseconds and never sleeps for real::

    async def test_my_agent(autojump_clock):
        async with serve_in_memory(agent=my_agent) as server:
            ws = await server.connect()
            ...

:class:`MemoryListener` hands the server one end of a memory stream pair per
:meth:`~MemoryListener.connect`; clients speak over the other end, with
``trio_websocket.wrap_client_stream`` (what :meth:`InMemoryServer.connect`
does) or raw bytes when a test needs to misbehave.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
import trio_websocket

from .bus import AgentBusEnds, open_bus
from .config import ChannelConfig
from .core.events import AgentEvent, InboundMessage
from .core.session import Peer
from .server import Channel
from .store.base import SessionStore

__all__ = ["LOOPBACK_PEER", "InMemoryServer", "MemoryListener", "serve_in_memory"]

#: The peer memory connections claim to come from (loopback, like a local UI).
LOOPBACK_PEER = Peer("127.0.0.1", 40000)

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]
Agent = Callable[
    [trio.MemoryReceiveChannel[InboundMessage], trio.MemorySendChannel[AgentEvent]],
    Awaitable[None],
]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](16)

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()

    async def connect(
        self, pair: StreamPair = trio.testing.memory_stream_pair
    ) -> trio.abc.Stream:
        """Open a connection; returns the client's end.

        ``pair=trio.testing.lockstep_stream_pair`` gives an unbuffered
        stream, for a client that stops reading.
        """
        client, server = pair()
        await self._send.send(server)
        return client


@attrs.define(eq=False)
class InMemoryServer:
    channel: Channel
    listener: MemoryListener
    #: The agent's ends of the bus, for a test that plays the agent itself.
    agent: AgentBusEnds
    nursery: trio.Nursery
    serve_scope: trio.CancelScope

    def stop(self) -> None:
        """Cancel the server only, as SIGTERM does to the daemon."""
        self.serve_scope.cancel()

    async def raw(
        self, pair: StreamPair = trio.testing.memory_stream_pair
    ) -> trio.abc.Stream:
        return await self.listener.connect(pair)

    async def connect(
        self, target: str = "/", pair: StreamPair = trio.testing.memory_stream_pair
    ) -> trio_websocket.WebSocketConnection:
        """A trio-websocket client connection to ``target`` (path and query).

        With ``pair=trio.testing.lockstep_stream_pair`` the server's sends
        wait until the client reads: a client as slow as the test makes it.
        """
        stream = await self.raw(pair)
        # trio-websocket types its stream narrowly but takes any trio Stream.
        return await trio_websocket.wrap_client_stream(
            self.nursery,
            stream,  # type: ignore[arg-type]
            "localhost",
            target,
        )

    async def http(self, request: bytes) -> tuple[int, bytes]:
        """Send one raw HTTP request; return ``(status, body)``."""
        stream = await self.raw()
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body


@asynccontextmanager
async def serve_in_memory(
    config: ChannelConfig | None = None,
    *,
    agent: Agent | None = None,
    peer: Peer = LOOPBACK_PEER,
    store: SessionStore | None = None,
    **overrides: Any,
) -> AsyncIterator[InMemoryServer]:
    """Run a :class:`~trio_channel.Channel` on a :class:`MemoryListener`.

    Without ``config``, one is made from ``overrides`` with token checks off,
    the memory store and a fresh temporary ``data_dir``. With ``agent``, it
    runs beside the channel; without, the test plays the agent through
    :attr:`InMemoryServer.agent`. ``store`` replaces the one the config
    names (a test's own backend). On exit the server stops first (clients
    get 1001, as on SIGTERM), then everything else is cancelled.
    """
    with tempfile.TemporaryDirectory() as data_dir:
        if config is None:
            overrides.setdefault("websocket_requires_token", False)
            overrides.setdefault("session_store", "memory")
            overrides.setdefault("data_dir", data_dir)
            config = ChannelConfig(**overrides)
        server_ends, agent_ends = open_bus(config.bus_capacity)
        extra: dict[str, Any] = {} if store is None else {"store": store}
        channel = Channel(config, server_ends, peer_of=lambda _stream: peer, **extra)
        listener = MemoryListener()
        serve_scope = trio.CancelScope()
        stopped = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                with serve_scope:
                    await channel.serve_listeners([listener], task_status=task_status)
            finally:
                stopped.set()

        async with trio.open_nursery() as nursery:
            if agent is not None:
                nursery.start_soon(agent, agent_ends.inbound, agent_ends.outbound)
            await nursery.start(serve)
            yield InMemoryServer(channel, listener, agent_ends, nursery, serve_scope)
            # Stop the server while the clients can still answer its close
            # frames (as they would on SIGTERM), then cancel the clients.
            serve_scope.cancel()
            await stopped.wait()
            nursery.cancel_scope.cancel()
