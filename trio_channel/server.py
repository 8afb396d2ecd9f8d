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
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path

import attrs
import msgspec
import trio
import trio_websocket

from .bus import ServerBusEnds
from .config import ChannelConfig
from .core.auth import Accept, IssuedTokenStore, decide_handshake, split_target
from .core.events import (
    AgentEvent,
    GoalStatus,
    Message,
    RuntimeModelUpdated,
    StreamEnd,
    encode_event,
)
from .core.hub import ChatHub, ChatSeed, ChatState
from .core.scope import DefaultScopePolicy, ScopePolicy
from .core.session import ClientSession, Peer
from .http.api import HttpApp
from .http.head import (
    BadRequest,
    RequestHead,
    is_upgrade,
    read_request_head,
    respond,
    upgrade_request_bytes,
)
from .logs import log_connection_closed, log_connection_opened, log_handshake_refused
from .media.rewrite import MediaLinker
from .media.signing import MediaSigner, load_or_create_secret
from .metrics import ChannelMetrics
from .store.sqlite import SessionStore
from .wire import listeners as _listeners
from .wire.connection import ConnectionLimits, run_connection
from .wire.frames import accept_websocket, text_frame
from .wire.outbox import Outbox

log = logging.getLogger("trio_channel.server")

#: trio-websocket's own inbox, between its reader task and ours. Small: the
#: bound that matters is the bus, and a full inbox stops reading the socket.
WS_INBOX_MESSAGES = 4
#: Events the dispatcher publishes before it yields to other tasks.
DISPATCH_BATCH = 256
#: The SQLite file of the session store, inside ``data_dir``.
STORE_FILE = "sessions.sqlite3"
#: The bundled chat page (package data).
WEBUI_DIR = Path(__file__).parent / "webui"
#: The media URL signing secret, inside ``data_dir``.
MEDIA_SECRET_FILE = "media_secret"
#: Everything an agent may send (checked before anything else touches it).
AGENT_EVENT_TYPES = typing.get_args(AgentEvent)
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
    hub: ChatHub[Outbox] = attrs.field(init=False)
    store: SessionStore = attrs.field(init=False)
    tokens: IssuedTokenStore = attrs.field(init=False)
    open_connections: int = attrs.field(default=0, init=False)
    metrics: ChannelMetrics = attrs.field(factory=ChannelMetrics, init=False)
    #: Signs media URLs; its secret is loaded from ``data_dir`` by serve().
    signer: MediaSigner | None = attrs.field(default=None, init=False)
    linker: MediaLinker | None = attrs.field(default=None, init=False)
    #: Answers every plain HTTP request; built by serve() with the signer.
    _http_app: HttpApp | None = attrs.field(default=None, init=False)
    #: Each running connection's cancel scope, so a drain can close them all.
    _live: dict[Outbox, trio.CancelScope] = attrs.field(factory=dict, init=False)
    _draining: bool = attrs.field(default=False, init=False)
    _data_dir: Path = attrs.field(init=False)
    _media_dir: Path = attrs.field(init=False)
    #: Each running connection's "send a keepalive ping now".
    _keepalive_pings: dict[Outbox, Callable[[], None]] = attrs.field(
        factory=dict, init=False
    )

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        self._data_dir = Path(cfg.data_dir).expanduser()
        self._media_dir = self._data_dir / "media"
        self.tokens = IssuedTokenStore(ttl_s=cfg.token_ttl_s)
        self.store = SessionStore(
            path=(
                ":memory:"
                if cfg.session_store == "memory"
                else str(self._data_dir / STORE_FILE)
            ),
            history_limit=cfg.history_limit,
            on_flush=self.metrics.store_flushed,
        )
        self.tokens.on_issue = self.metrics.token_issued
        self.metrics.set_gauge_sources(
            lambda: self.tokens.outstanding(trio.current_time()),
            lambda: self.store.queue_depth,
        )
        self.hub = ChatHub(load_chat=self._load_chat, on_change=self._chat_changed)

    def _load_chat(self, chat_id: str) -> ChatSeed | None:
        meta = self.store.chat(chat_id)
        if meta is None:
            return None
        return ChatSeed(meta.workspace_scope, meta.goal_state)

    def _chat_changed(self, chat_id: str, chat: ChatState[Outbox]) -> None:
        self.store.update_chat(
            chat_id, workspace_scope=chat.workspace_scope, goal_state=chat.goal_state
        )

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def media_dir(self) -> Path:
        return self._media_dir

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
        """Serve on listeners you opened yourself (tests use memory listeners).

        Cancelling it drains: accepting stops, every connection is closed
        with 1001 and gets ``shutdown_grace_s`` to finish its closing
        handshake, and the store commits what is queued.
        """
        await self._load_media_secret()
        async with trio.open_nursery() as root:
            # The store loads every chat before the first client can attach.
            await root.start(self.store.run)
            root.start_soon(self._dispatch)
            root.start_soon(self._keepalive)
            # Connections live in a shielded nursery: cancelling serve() must
            # not kill trio-websocket's reader tasks before the closing
            # handshakes are done. _drain_on_cancel turns the cancellation
            # into orderly closes and a hard deadline.
            async with trio.open_nursery() as connections:
                connections.cancel_scope.shield = True
                accepting = trio.CancelScope()
                root.start_soon(self._drain_on_cancel, accepting, connections)
                with accepting:
                    async with trio.open_nursery() as accept_loops:
                        await accept_loops.start(
                            partial(
                                trio.serve_listeners,
                                self._handle_stream,
                                list(listeners),
                                handler_nursery=connections,
                            )
                        )
                        task_status.started(urls or [])

    async def _load_media_secret(self) -> None:
        secret = await trio.to_thread.run_sync(
            load_or_create_secret, self.data_dir / MEDIA_SECRET_FILE
        )
        self.signer = MediaSigner(secret, self.media_dir)
        workspace = self.config.workspace_dir
        self.linker = MediaLinker(
            self.signer, self.media_dir, Path(workspace) if workspace else None
        )
        self._http_app = HttpApp(
            cfg=self.config,
            tokens=self.tokens,
            store=self.store,
            hub=self.hub,
            signer=self.signer,
            metrics_text=self.metrics.render,
            webui_dir=WEBUI_DIR if self.config.webui else None,
        )

    @property
    def http_app(self) -> HttpApp:
        if self._http_app is None:
            raise RuntimeError("serve() or serve_listeners() has not started yet")
        return self._http_app

    async def _keepalive(self) -> None:
        """Ping every connection each ``ping_interval_s``, from one task."""
        while True:
            await trio.sleep(self.config.ping_interval_s)
            for ping in list(self._keepalive_pings.values()):
                ping()

    async def _drain_on_cancel(
        self, accepting: trio.CancelScope, connections: trio.Nursery
    ) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._draining = True
            accepting.cancel()
            for body in list(self._live.values()):
                body.cancel()
            connections.cancel_scope.deadline = (
                trio.current_time() + self.config.shutdown_grace_s
            )

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
            self.metrics.handshake(head.status)
            log_handshake_refused(head.status, peer, "bad request head")
            await respond(stream, head.status, b"Bad Request")
            return
        if not is_upgrade(head, cfg.path):
            await self.http_app.handle(stream, head, peer)
            return
        await self._upgrade(stream, head, peer)

    async def _upgrade(
        self, stream: trio.abc.Stream, head: RequestHead, peer: Peer
    ) -> None:
        cfg = self.config
        # A request that cannot be a handshake is refused before the auth
        # steps, so it never spends a token.
        request_bytes = upgrade_request_bytes(head)
        if isinstance(request_bytes, BadRequest):
            self.metrics.handshake(request_bytes.status)
            log_handshake_refused(request_bytes.status, peer, "bad websocket handshake")
            await respond(stream, request_bytes.status, b"Bad WebSocket handshake")
            return
        _, query = split_target(head.target)
        decision = decide_handshake(
            cfg,
            self.tokens,
            query,
            now=trio.current_time(),
            open_connections=self.open_connections,
        )
        if not isinstance(decision, Accept):
            self.metrics.handshake(decision.status)
            log_handshake_refused(decision.status, peer, decision.body)
            await respond(stream, decision.status, decision.body.encode())
            return
        self.open_connections += 1
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(cfg.handshake_timeout_s) as accept_scope:
                    ws = await accept_websocket(
                        nursery,
                        stream,
                        request_bytes,
                        message_queue_size=WS_INBOX_MESSAGES,
                        max_message_size=cfg.max_message_bytes,
                    )
                if accept_scope.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    return
                self.metrics.handshake(101)
                self.metrics.connection_opened()
                log_connection_opened(decision.client_id, peer)
                opened_at = trio.current_time()
                try:
                    await self._run(ws, decision.client_id, peer)
                finally:
                    self.metrics.connection_closed()
                    code = ws.closed.code if ws.closed is not None else None
                    duration = trio.current_time() - opened_at
                    log_connection_closed(decision.client_id, code, duration, peer)
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
            on_rate_limited=self.metrics.rate_limited,
        )
        if self._draining:
            return
        with trio.CancelScope() as body:
            self._live[outbox] = body
            try:
                await self._run_connection(ws, session, outbox)
            finally:
                del self._live[outbox]

    async def _run_connection(
        self,
        ws: trio_websocket.WebSocketConnection,
        session: ClientSession,
        outbox: Outbox,
    ) -> None:
        cfg = self.config
        await run_connection(
            ws,
            session,
            outbox,
            inbound=self.bus.inbound,
            store=self.store,
            metrics=self.metrics,
            keepalive=self._keepalive_pings,
            limits=ConnectionLimits(
                max_message_bytes=cfg.max_message_bytes,
                ping_interval_s=cfg.ping_interval_s,
                ping_timeout_s=cfg.ping_timeout_s,
                slow_consumer_timeout_s=cfg.slow_consumer_timeout_s,
                close_timeout_s=cfg.shutdown_grace_s or 0.1,
            ),
            media_dir=self.media_dir,
        )

    # --- agent → clients ----------------------------------------------------

    async def _dispatch(self) -> None:
        """Fan every agent event out; never waits on a client socket.

        It waits only when the store's write queue is full (back-pressure on
        the agent), never per event; and it publishes everything already on
        the channel before yielding, so the writers wake up to whole batches.
        """
        store = self.store
        outbound = self.bus.outbound
        async with outbound:
            async for first in outbound:
                for event in _already_queued(first, outbound):
                    if not isinstance(event, AGENT_EVENT_TYPES):
                        log.error("dropping an object that is not an event: %r", event)
                        continue
                    try:
                        self._publish(await self._prepare(event))
                    except (TypeError, ValueError, msgspec.EncodeError):
                        log.exception("dropping an event the agent sent: %r", event)
                    if store.queue_depth >= store.queue_size:
                        await store.wait_for_room()

    async def _prepare(self, event: AgentEvent) -> AgentEvent:
        """Complete an agent event before it is published.

        A ``running`` status without ``started_at`` gets the current time
        (clients show how long the turn has run). ``message`` media get signed
        URLs and local markdown images are rewritten: cheap checks run on the
        loop, file work (stat, copy) only when needed, in a thread. Runs
        before ``seq`` is assigned, so the stored event is exactly what
        clients receive.
        """
        if (
            isinstance(event, GoalStatus)
            and event.status == "running"
            and event.started_at is None
        ):
            return msgspec.structs.replace(event, started_at=time.time())
        linker = self.linker
        if (
            isinstance(event, Message)
            and linker is not None
            and linker.needs_linking(event)
        ):
            return await trio.to_thread.run_sync(linker.link_message, event)
        if isinstance(event, StreamEnd):
            # Close the stream's buffer (PROTOCOL 4: keyed by chat and
            # stream); its assembled text is only sent when the rewrite
            # changed it.
            text = self.hub.finish_stream(event)
            if linker is not None and linker.might_rewrite(text):
                new = await trio.to_thread.run_sync(linker.rewrite_markdown, text)
                if new is not text:
                    return msgspec.structs.replace(event, text=new)
        return event

    def _publish(self, event: AgentEvent) -> int:
        """Encode ``event`` (prepared by :meth:`_prepare`) once and queue the
        same frame for every target.

        A persisted event first gets the chat's next ``seq`` and joins its
        history (even with no subscriber). Returns how many connections the
        frame was queued for.
        """
        hub = self.hub
        hub.observe(event)
        self.metrics.event(type(event).__struct_config__.tag)  # type: ignore[arg-type]
        if isinstance(event, RuntimeModelUpdated):
            data = text_frame(encode_event(event))
            return _put_all(hub.connections, data)
        chat_id = event.chat_id
        if not event.persisted:
            data = text_frame(encode_event(event))
            return _put_all((o for o, c in hub.cursors(chat_id) if c.live), data)
        seq, payload = self.store.append_event(
            chat_id, partial(_encode_with_seq, event)
        )
        data = text_frame(payload)
        count = 0
        for outbox, cursor in hub.cursors(chat_id):
            if cursor.admit(seq):
                outbox.put(data)
                count += 1
        return count


def _already_queued(
    first: AgentEvent, channel: trio.MemoryReceiveChannel[AgentEvent]
) -> Iterator[AgentEvent]:
    """``first``, then what is already waiting on ``channel`` (at most 256)."""
    yield first
    for _ in range(DISPATCH_BATCH - 1):
        try:
            yield channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return


def _encode_with_seq(event: AgentEvent, seq: int) -> bytes:
    return encode_event(msgspec.structs.replace(event, seq=seq))


def _put_all(outboxes: Iterable[Outbox], data: bytes) -> int:
    count = 0
    for outbox in outboxes:
        outbox.put(data)
        count += 1
    return count
