"""``Channel.serve()``: the composition root of the channel.

Everything runs under :meth:`Channel.serve`: the session store, its group
committer, the dispatcher that fans agent events out, the timekeeper, the
accept loops, and a connection nursery holding one task per client.
Cancelling ``serve()`` stops accepting, closes every client with 1001 (after
what is already queued for it, under ``shutdown_grace_s``), lets the
committer store what is queued (same deadline), then closes the store;
nothing outlives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
import trio

from .backend import ChannelBackend
from .bus import ServerBusEnds
from .clock import WallClock
from .config import ChannelConfig, normalize_path
from .core.auth import (
    SERVICE_UNAVAILABLE,
    Accept,
    IssuedTokenStore,
    decide_handshake,
    host_allowed,
    origin_allowed,
    split_target,
)
from .core.hub import ChatHub
from .core.scope import DefaultScopePolicy, ScopePolicy
from .core.session import ClientSession, Peer
from .dispatch import Dispatcher, join_queued_deltas
from .http.api import HttpApp
from .http.head import BadRequest, RequestHead, is_upgrade_request, read_request_head
from .http.response import Responder
from .logs import log_connection_closed, log_connection_opened, log_handshake_refused
from .media.rewrite import MediaLinker
from .media.signing import MediaSigner, load_or_create_secret
from .metrics import ChannelMetrics
from .store import open_store
from .store.base import SessionStore, StoreError
from .store.committer import GroupCommitter
from .wire import listeners as _listeners
from .wire.connection import GOING_AWAY, ConnectionLimits, WsConnection
from .wire.handshake import accept, handshake_problem
from .wire.timekeeper import Timekeeper

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

log = logging.getLogger("trio_channel.server")

#: The bundled chat page (package data).
WEBUI_DIR: Final = Path(__file__).parent / "webui"
#: The media URL signing secret, inside ``data_dir``.
MEDIA_SECRET_FILE: Final = "media_secret"
#: Used when ``shutdown_grace_s`` is 0: closing frames still get a moment.
MIN_CLOSE_TIMEOUT_S: Final = 0.1


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
    #: The session store; by default the one ``config.session_store`` names.
    store: SessionStore = attrs.field(
        default=attrs.Factory(lambda self: open_store(self.config), takes_self=True)
    )
    hub: ChatHub[WsConnection] = attrs.field(factory=ChatHub, init=False)
    tokens: IssuedTokenStore = attrs.field(init=False)
    metrics: ChannelMetrics = attrs.field(factory=ChannelMetrics, init=False)
    committer: GroupCommitter = attrs.field(init=False)
    timekeeper: Timekeeper = attrs.field(init=False)
    open_connections: int = attrs.field(default=0, init=False)
    #: Built by serve() once the media secret is loaded.
    backend: ChannelBackend | None = attrs.field(default=None, init=False)
    #: With a shared store (Redis): this daemon's part of the cluster.
    cluster: ClusterNode | None = attrs.field(default=None, init=False)
    _http_app: HttpApp | None = attrs.field(default=None, init=False)
    _live: set[WsConnection] = attrs.field(factory=set, init=False)
    _draining: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        self.tokens = IssuedTokenStore(ttl_s=cfg.token_ttl_s)
        self.tokens.on_issue = self.metrics.token_issued
        self.committer = GroupCommitter(
            self.store,
            on_batch=self.metrics.store_flushed,
            on_health=self.metrics.store_health,
            # Redis: a stream's deltas queued behind a batch, or within the
            # window, become one write.
            joins=join_queued_deltas if self.store.shared else None,
            join_window_s=cfg.redis_delta_window_s if self.store.shared else 0.0,
        )
        self.metrics.set_gauge_sources(
            lambda: self.tokens.outstanding(trio.current_time()),
            lambda: self.committer.depth,
        )
        self.timekeeper = Timekeeper(
            ping_interval_s=cfg.ping_interval_s,
            ping_timeout_s=cfg.ping_timeout_s,
            stall_timeout_s=cfg.slow_consumer_timeout_s,
        )

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir)

    @property
    def media_dir(self) -> Path:
        return (
            Path(self.config.media_dir)
            if self.config.media_dir
            else self.data_dir / "media"
        )

    @property
    def http_app(self) -> HttpApp:
        if self._http_app is None:
            raise RuntimeError("serve() or serve_listeners() has not started yet")
        return self._http_app

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

        Raises :class:`~trio_channel.store.base.StoreError` before anything
        is served when the store cannot be opened.
        """
        clock = WallClock.start()
        # The store runs shielded so it outlives the committer's final flush;
        # it is closed once everything above it has stopped.
        store_scope = trio.CancelScope(shield=True)

        async def run_store(*, task_status: trio.TaskStatus[None]) -> None:
            with store_scope:
                await self.store.run(task_status=task_status)

        async with trio.open_nursery() as nursery:
            await nursery.start(run_store)
            try:
                dispatcher = self._dispatcher(clock)
                if self.store.shared:
                    self.cluster = self._cluster_node(clock, dispatcher)
                    dispatcher.turns = self.cluster.book
                backend = await self._build(clock, dispatcher)
                await self._serve_with_store(
                    backend, dispatcher, listeners, urls, task_status
                )
            finally:
                store_scope.cancel()

    def _cluster_node(self, clock: WallClock, dispatcher: Dispatcher) -> ClusterNode:
        """This daemon's part of a cluster sharing a Redis store."""
        # Imported only here: coredis is a third of the daemon's import time.
        from .cluster.node import ClusterNode
        from .store.redis import RedisStore

        assert isinstance(self.store, RedisStore)
        return ClusterNode(
            self.store,
            self.hub,
            self.committer,
            self.bus.inbound,
            clock.now,
            dispatcher.published,
            token_ttl_s=self.config.token_ttl_s,
            lease_ttl_s=self.config.redis_lease_ttl_s,
            on_health=self.metrics.store_health,
        )

    def _dispatcher(self, clock: WallClock) -> Dispatcher:
        return Dispatcher(
            self.bus.outbound, self.hub, self.committer, self.metrics, clock
        )

    async def _build(self, clock: WallClock, dispatcher: Dispatcher) -> ChannelBackend:
        if self.cluster is not None:
            secret = await self.cluster.media_secret()
        else:
            secret = await trio.to_thread.run_sync(
                load_or_create_secret, self.data_dir / MEDIA_SECRET_FILE
            )
        signer = MediaSigner(secret, self.media_dir)
        workspace = self.config.workspace_dir
        dispatcher.linker = MediaLinker(
            signer, self.media_dir, Path(workspace) if workspace else None
        )
        backend = self.backend = ChannelBackend(
            hub=self.hub,
            store=self.store,
            committer=self.committer,
            inbound=self.bus.inbound,
            metrics=self.metrics,
            signer=signer,
            media_dir=self.media_dir,
            clock=clock,
        )
        self._http_app = HttpApp(
            cfg=self.config,
            tokens=self.tokens,
            store=self.store,
            hub=self.hub,
            signer=signer,
            webui_dir=WEBUI_DIR if self.config.webui else None,
            delete_chat=backend.delete_chat,
            metrics_text=self.metrics.render,
            degraded=self.degraded_reason,
            shared_tokens=None if self.cluster is None else self.cluster.tokens,
        )
        return backend

    def degraded_reason(self) -> str | None:
        """Why the channel cannot work fully now (``/healthz``), or None."""
        if self.committer.degraded_reason is not None:
            return self.committer.degraded_reason
        return None if self.cluster is None else self.cluster.degraded_reason

    async def _serve_with_store(
        self,
        backend: ChannelBackend,
        dispatcher: Dispatcher,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        urls: list[str] | None,
        task_status: trio.TaskStatus[list[str]],
    ) -> None:
        cfg = self.config
        async with trio.open_nursery() as root:
            await root.start(
                partial(self.committer.run, flush_timeout_s=cfg.shutdown_grace_s)
            )
            root.start_soon(dispatcher.run)
            await root.start(self.timekeeper.run)
            if self.cluster is not None:
                await root.start(self.cluster.run)
            # Connections live in a shielded nursery: cancelling serve() turns
            # into orderly closes (1001) with a hard deadline (_drain).
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

    async def _drain_on_cancel(
        self, accepting: trio.CancelScope, connections: trio.Nursery
    ) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._draining = True
            accepting.cancel()
            for conn in list(self._live):
                conn.close(GOING_AWAY, "server shutting down")
            connections.cancel_scope.deadline = (
                trio.current_time() + self.config.shutdown_grace_s
            )

    # --- connections -----------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        # trio.serve_listeners closes the stream (aclose_forcefully) after
        # this returns, however it returns: closing it here too doubled the
        # cost of a close, a tenth of a connection's CPU.
        try:
            await self.handle_stream(stream, self.peer_of(stream))
        except* Exception:
            log.exception("connection task failed; the server goes on")

    async def handle_stream(self, stream: trio.abc.Stream, peer: Peer) -> None:
        """Serve one client stream: one HTTP request, or one WebSocket.

        The caller closes ``stream`` afterwards (``trio.serve_listeners`` does).
        """
        cfg = self.config
        with trio.move_on_after(cfg.handshake_timeout_s) as head_scope:
            head = await read_request_head(stream)
        if head_scope.cancelled_caught or head is None:
            return
        out = Responder(
            stream,
            None if isinstance(head, BadRequest) else head,
            cfg.slow_consumer_timeout_s,
        )
        if isinstance(head, BadRequest):
            self.metrics.handshake(head.status)
            log_handshake_refused(head.status, peer, "bad request head")
            await out.text(head.status, b"Bad Request")
            return
        if not is_upgrade_request(head):
            await self.http_app.handle(stream, head, peer)
            return
        if normalize_path(head.target) != normalize_path(cfg.path):
            # PROTOCOL 6: an upgrade on another path is not for the page.
            await out.text(404, b"Not Found")
            return
        await self._upgrade(stream, head, peer, out)

    async def _upgrade(
        self, stream: trio.abc.Stream, head: RequestHead, peer: Peer, out: Responder
    ) -> None:
        cfg = self.config
        status = handshake_problem(head)
        host = head.headers.get("host", "")
        if status is None and not origin_allowed(cfg, head.headers.get("origin"), host):
            status = 403
        if status is None and peer.host and not host_allowed(cfg, host):
            status = 403
        if status is not None:
            self.metrics.handshake(status)
            reason = (
                "origin or host not allowed"
                if status == 403
                else "bad websocket handshake"
            )
            log_handshake_refused(status, peer, reason)
            body = b"Forbidden" if status == 403 else b"Bad WebSocket handshake"
            await out.text(status, body)
            return
        _, query = split_target(head.target)
        if self.cluster is not None:
            try:
                await self.cluster.tokens.take_for_handshake(
                    query.get("token"), self.tokens, trio.current_time()
                )
            except StoreError:
                self.metrics.handshake(503)
                log_handshake_refused(503, peer, "token store unavailable")
                await out.text(503, b"Service Unavailable")
                return
        decision = decide_handshake(
            cfg,
            self.tokens,
            query,
            now=trio.current_time(),
            open_connections=self.open_connections,
        )
        if not isinstance(decision, Accept) or self._draining:
            refusal = SERVICE_UNAVAILABLE if isinstance(decision, Accept) else decision
            self.metrics.handshake(refusal.status)
            log_handshake_refused(refusal.status, peer, refusal.body)
            await out.text(refusal.status, refusal.body.encode())
            return
        self.open_connections += 1
        try:
            await self._run_websocket(stream, head, peer, decision.client_id)
        finally:
            self.open_connections -= 1

    async def _run_websocket(
        self, stream: trio.abc.Stream, head: RequestHead, peer: Peer, client_id: str
    ) -> None:
        cfg = self.config
        backend = self.backend
        assert backend is not None
        response, ws = accept(head)
        # No timeout: the 101 is the first thing this connection sends, so
        # the kernel's send buffer takes it at once (the head's deadline
        # above is what bounds a slow client).
        try:
            await stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        self.metrics.handshake(101)
        session = ClientSession(
            hub=self.hub,
            key=None,
            client_id=client_id,
            peer=peer,
            allow_from=cfg.allow_from,
            streaming=cfg.streaming,
            rate_limit=cfg.rate_limit,
            scope_policy=self.scope_policy,
            wall_clock=backend.clock.now,
            on_rate_limited=self.metrics.rate_limited,
        )
        conn = WsConnection(
            stream,
            ws,
            session,
            backend,
            ConnectionLimits(
                max_message_bytes=cfg.max_message_bytes,
                ping_timeout_s=cfg.ping_timeout_s,
                close_timeout_s=cfg.shutdown_grace_s or MIN_CLOSE_TIMEOUT_S,
                send_queue_frames=cfg.send_queue_frames,
            ),
            self.timekeeper,
        )
        session.key = conn
        opened = trio.current_time()
        self._live.add(conn)
        self.metrics.connection_opened()
        log_connection_opened(client_id, peer)
        try:
            await conn.run()
        finally:
            self._live.discard(conn)
            self.metrics.connection_closed()
            code = None if conn.close_code == 1006 else conn.close_code
            log_connection_closed(client_id, code, trio.current_time() - opened, peer)
