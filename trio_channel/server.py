"""``Channel.serve()``: listeners, one task per connection, and the dispatcher.

Everything runs under one nursery owned by :meth:`Channel.serve`: the accept
loops, a connection nursery holding one task per client, and the dispatcher
that fans agent events out. Cancelling ``serve()`` stops accepting, closes
every client with 1001 (each under a deadline) and returns; nothing outlives
it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio
import trio_websocket

from . import listeners as _listeners
from ._wire import text_frame
from .auth import Accept, IssuedTokenStore, decide_handshake, split_target
from .bus import ServerBusEnds
from .config import ChannelConfig
from .connection import ConnectionLimits, run_connection
from .events import AgentEvent, StreamEnd, encode_event
from .http import (
    BadRequest,
    ReplayStream,
    RequestHead,
    is_upgrade,
    read_request_head,
    respond,
)
from .hub import ChatHub
from .outbox import Outbox
from .routes import route_http
from .scope import DefaultScopePolicy, ScopePolicy
from .session import ClientSession, Peer

log = logging.getLogger("trio_channel.server")

#: trio-websocket's own inbox, between its reader task and ours. Small: the
#: bound that matters is the bus, and a full inbox stops reading the socket.
WS_INBOX_MESSAGES = 4
#: A connection is closed at once when its queue reaches this many times the
#: ``send_queue_frames`` soft limit.
HARD_LIMIT_FACTOR = 4


@attrs.define(eq=False)
class Channel:
    """A trio WebSocket channel between one agent and its clients.

    Give it the server's ends of :func:`~trio_channel.open_bus` and run
    :meth:`serve` in a nursery; the agent runs beside it with the other ends.
    """

    config: ChannelConfig
    bus: ServerBusEnds
    scope_policy: ScopePolicy = attrs.field(factory=DefaultScopePolicy)
    #: Names the peer of an accepted stream; tests over memory streams pass
    #: their own (a memory stream has no address).
    peer_of: Callable[[trio.abc.Stream], Peer] = _listeners.peer_of
    hub: ChatHub[Outbox] = attrs.field(factory=ChatHub, init=False)
    tokens: IssuedTokenStore = attrs.field(init=False)
    open_connections: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.tokens = IssuedTokenStore(ttl_s=self.config.token_ttl_s)

    @property
    def media_dir(self) -> Path:
        return Path(self.config.data_dir).expanduser() / "media"

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind the configured listener, serve until cancelled.

        Reports the URLs it listens on (``ws://127.0.0.1:PORT/``, ``wss://…``
        or ``unix://PATH``) through ``task_status``, with the real port when
        ``port`` is 0.
        """
        bound = await _listeners.open_listeners(self.config)
        try:
            await self.serve_listeners(
                bound.listeners, urls=bound.urls, task_status=task_status
            )
        finally:
            bound.cleanup()

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        urls: list[str] | None = None,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on listeners you opened yourself (tests use memory listeners)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dispatch)
            async with trio.open_nursery() as connections:
                await connections.start(
                    trio.serve_listeners,
                    self._handle_stream,
                    list(listeners),
                )
                task_status.started(urls or [])
            nursery.cancel_scope.cancel()

    # --- connections -----------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        try:
            await self.handle_stream(stream, self.peer_of(stream))
        except* Exception:
            log.exception("connection task failed; the server goes on")
        finally:
            await trio.aclose_forcefully(stream)

    async def handle_stream(self, stream: trio.abc.Stream, peer: Peer) -> None:
        """Serve one client stream: one HTTP request, or one WebSocket."""
        cfg = self.config
        with trio.move_on_after(cfg.handshake_timeout_s) as head_scope:
            head = await read_request_head(stream)
        if head_scope.cancelled_caught or head is None:
            return
        if isinstance(head, BadRequest):
            await respond(stream, head.status, b"Bad Request")
            return
        if not is_upgrade(head, cfg.path):
            answer = route_http(head, cfg, self.tokens, trio.current_time())
            await respond(
                stream, answer.status, answer.body, content_type=answer.content_type
            )
            return
        await self._upgrade(stream, head, peer)

    async def _upgrade(
        self, stream: trio.abc.Stream, head: RequestHead, peer: Peer
    ) -> None:
        cfg = self.config
        _, query = split_target(head.target)
        decision = decide_handshake(
            cfg,
            self.tokens,
            query,
            now=trio.current_time(),
            open_connections=self.open_connections,
        )
        if not isinstance(decision, Accept):
            await respond(stream, decision.status, decision.body.encode())
            return
        self.open_connections += 1
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(cfg.handshake_timeout_s) as accept_scope:
                    request = await trio_websocket.wrap_server_stream(
                        nursery,
                        ReplayStream(stream, head.raw),
                        message_queue_size=WS_INBOX_MESSAGES,
                        max_message_size=cfg.max_message_bytes,
                    )
                    ws = await request.accept()
                if accept_scope.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    return
                await self._run(ws, decision.client_id, peer)
                nursery.cancel_scope.cancel()
        finally:
            self.open_connections -= 1

    async def _run(
        self, ws: trio_websocket.WebSocketConnection, client_id: str, peer: Peer
    ) -> None:
        cfg = self.config
        outbox = Outbox(
            soft_limit=cfg.send_queue_frames,
            hard_limit=cfg.send_queue_frames * HARD_LIMIT_FACTOR,
        )
        session = ClientSession(
            hub=self.hub,
            key=outbox,
            client_id=client_id,
            peer=peer,
            cfg=cfg,
            scope_policy=self.scope_policy,
            wall_clock=time.time,
        )
        await run_connection(
            ws,
            session,
            outbox,
            inbound=self.bus.inbound,
            limits=ConnectionLimits(
                max_message_bytes=cfg.max_message_bytes,
                ping_interval_s=cfg.ping_interval_s,
                ping_timeout_s=cfg.ping_timeout_s,
                slow_consumer_timeout_s=cfg.slow_consumer_timeout_s,
                close_timeout_s=min(cfg.shutdown_grace_s, 5.0) or 0.1,
            ),
            media_dir=self.media_dir,
        )

    # --- agent → clients ----------------------------------------------------

    async def _dispatch(self) -> None:
        """Fan every agent event out; never waits on a client socket."""
        async with self.bus.outbound:
            async for event in self.bus.outbound:
                try:
                    self.publish(event)
                except (TypeError, ValueError, AttributeError):
                    log.exception("dropping an event the agent sent: %r", event)

    def publish(self, event: AgentEvent) -> int:
        """Encode ``event`` once and queue the same frame for every target.

        Returns the number of connections it was queued for.
        """
        targets = self.hub.targets(event)
        if isinstance(event, StreamEnd):
            # The assembled text is where the markdown media rewrite will plug
            # in; unchanged text is not repeated on the wire (PROTOCOL 4).
            self.hub.finish_stream(event)
        data = text_frame(encode_event(event))
        count = 0
        for outbox in targets:
            outbox.put(data)
            count += 1
        return count
