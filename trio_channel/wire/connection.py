"""One accepted WebSocket connection on wsproto: one reader, one writer.

The connection's own task reads the socket, feeds ``wsproto`` and hands each
message to the protocol core (:class:`~trio_channel.core.session.ClientSession`)
and, for what needs I/O, to the channel's :class:`Backend`. Everything this
connection sends goes through one queue and one writer task: events from the
dispatcher, replies, pongs, pings and the close frame, so a close frame never
lands inside another frame. The writer exists only while there is something
to send or a chat to catch up, so an idle connection is one task.

Closing (:meth:`WsConnection.close`) is a decision, not a cancellation: the
close frame joins the queue behind what the writer is sending, and the whole
connection gets a deadline. A client that stalled and reads again within it
receives whole frames and then the close frame; one that never reads again
is dropped at the deadline. Keepalive and stall timers live in the server's
one :class:`~.timekeeper.Timekeeper`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import attrs
import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from ..batchqueue import BatchQueue, LazyParkingLot
from ..core.delivery import HISTORY_RESET, catch_up_page
from ..core.events import (
    Error,
    InboundMessage,
    ServerEvent,
    encode_event,
)
from ..core.protocol import ChatMessage, Request
from ..core.session import (
    STORE_UNAVAILABLE,
    ClientSession,
    Effects,
    NeedsMedia,
)
from ..store.base import StoreError
from ..store.committer import StoreUnavailable
from .contract import AgentGone, Backend, ConnectionLimits
from .frames import text_frame
from .timekeeper import Timekeeper

__all__ = [
    "AgentGone",
    "Backend",
    "ConnectionLimits",
    "WsConnection",
]

log = logging.getLogger("trio_channel.connection")

NORMAL = 1000
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

RECEIVE_BYTES: Final = 64 * 1024
#: The most one ``send_all`` carries, so a slow but reading client makes
#: progress the stall timer can see.
SEND_CHUNK_BYTES: Final = 256 * 1024
#: How long a close frame may take to reach a peer that stopped answering.
DEAD_PEER_CLOSE_S: Final = 1.0
#: Pause before a catch-up read is tried again after a store error.
CATCH_UP_RETRY_S: Final = 0.5


@attrs.define(eq=False)
class _Closing:
    code: int
    reason: str
    #: Nobody answers: drop the transport once the close frame is out.
    peer_dead: bool = False


@attrs.define(eq=False)
class WsConnection:
    stream: trio.abc.Stream
    ws: Connection
    session: ClientSession
    backend: Backend
    limits: ConnectionLimits
    timekeeper: Timekeeper
    outbox: BatchQueue[bytes] = attrs.field(init=False)
    #: Chats this connection catches up from the store, in turn.
    catching_up: dict[str, None] = attrs.field(factory=dict, init=False)
    send_since: float | None = attrs.field(default=None, init=False)
    ping_sent_at: float | None = attrs.field(default=None, init=False)
    #: The reader waits on the store or the agent, so it reads no pong.
    busy: bool = attrs.field(default=False, init=False)
    closing: _Closing | None = attrs.field(default=None, init=False)
    #: The close code the connection ended with (ours or the peer's).
    close_code: int = attrs.field(default=1006, init=False)
    _writing: bool = attrs.field(default=False, init=False)
    #: Unparked whenever the writer sent a batch or ended.
    _written: LazyParkingLot = attrs.field(factory=LazyParkingLot, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _parts: list[str | bytes] = attrs.field(factory=list, init=False)
    _size: int = attrs.field(default=0, init=False)
    _discarding: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.outbox = BatchQueue(self.limits.send_queue_frames)

    # --- what the hub calls ------------------------------------------------------

    def deliver(self, frame: bytes) -> bool:
        if self.closing is not None:
            return True  # nothing more goes out; resume covers the rest
        if not self.outbox.put(frame):
            return False
        self._kick()
        return True

    def fell_behind(self, chat_id: str) -> None:
        self.catching_up[chat_id] = None
        self.backend.metrics.caught_up()
        self._kick()

    def log_reset(self, chat_id: str, epoch: str) -> None:
        self.send_events(
            [Error(detail=HISTORY_RESET, chat_id=chat_id, epoch=epoch, first_seq=1)]
        )

    # --- what the timekeeper calls -----------------------------------------------

    def ping(self, now: float) -> None:
        if self.closing is None and self.ping_sent_at is None and not self.busy:
            self.ping_sent_at = now
            self._send_raw(self.ws.send(Ping(b"tc")))

    def check_pong(self, now: float) -> None:
        sent = self.ping_sent_at
        if self.busy or self.closing is not None or sent is None:
            return
        if now - sent < self.limits.ping_timeout_s:
            return
        log.info(
            "closing %s: no pong within %ss",
            self.session.client_id,
            self.limits.ping_timeout_s,
        )
        self.close(
            INTERNAL_ERROR, "keepalive ping timeout", discard=True, peer_dead=True
        )

    def stalled(self, now: float) -> None:
        if self.closing is not None:
            return
        log.info(
            "closing %s: its socket took no bytes (slow consumer)",
            self.session.client_id,
        )
        self.backend.metrics.slow_consumer_closed()
        self.close(TRY_AGAIN_LATER, "slow consumer", discard=True)

    # --- closing -------------------------------------------------------------------

    def close(
        self, code: int, reason: str, *, discard: bool = False, peer_dead: bool = False
    ) -> None:
        """Decide to close: the close frame follows what is being sent.

        ``discard`` drops what is queued but not yet being sent. The whole
        connection then has ``close_timeout_s`` (a second for a dead peer)
        to finish.
        """
        if self.closing is not None:
            return
        self.closing = _Closing(code, reason, peer_dead)
        self.close_code = code
        if discard:
            self.outbox.take()
            self.catching_up.clear()
        if self.ws.state is ConnectionState.OPEN:
            self.outbox.force(self.ws.send(CloseConnection(code, reason)))
        self._kick()
        if self._nursery is not None:
            grace = DEAD_PEER_CLOSE_S if peer_dead else self.limits.close_timeout_s
            scope = self._nursery.cancel_scope
            scope.deadline = min(scope.deadline, trio.current_time() + grace)

    # --- the connection's task -----------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it is closed; the caller closes the stream."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.timekeeper.add(self)
                try:
                    self.send_events(self.session.start())
                    await self._read()
                except Exception:
                    # A bug of ours: tell the client (1011), then propagate
                    # so the server logs it.
                    self.close(INTERNAL_ERROR, "internal error", discard=True)
                    with trio.move_on_after(DEAD_PEER_CLOSE_S):
                        while self._writing:
                            await self._written.park()
                    raise
                finally:
                    self.timekeeper.discard(self)
                    self.session.close()
                    self.catching_up.clear()
                    if self.closing is None:
                        # The peer is gone without a close frame: nothing
                        # more can be sent.
                        nursery.cancel_scope.cancel()
        finally:
            self._nursery = None

    async def _read(self) -> None:
        ws = self.ws
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    await self._on_data(event)
                elif isinstance(event, Ping):
                    if ws.state is ConnectionState.OPEN:
                        self._send_raw(ws.send(event.response()))
                elif isinstance(event, Pong):
                    self.ping_sent_at = None
                elif isinstance(event, CloseConnection):
                    self._on_close(event)
                    return
            if self._nursery is not None and self._nursery.cancel_scope.cancel_called:
                return
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            ws.receive_data(bytes(data) if data else None)

    def _on_close(self, event: CloseConnection) -> None:
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            # The peer closes: what was queued for it is pointless now.
            self.outbox.take()
            self.catching_up.clear()
            self.close_code = event.code
            self.closing = _Closing(event.code, event.reason or "")
            self.outbox.force(self.ws.send(event.response()))
            self._kick()
            if self._nursery is not None:
                scope = self._nursery.cancel_scope
                scope.deadline = min(
                    scope.deadline, trio.current_time() + self.limits.close_timeout_s
                )
        elif self.closing is None:
            self.close_code = event.code  # 1006: the transport went away

    async def _on_data(self, event: TextMessage | BytesMessage) -> None:
        if self._discarding or self.closing is not None:
            return
        chunk = event.data if isinstance(event.data, str) else bytes(event.data)
        self._parts.append(chunk)
        if isinstance(chunk, str):
            self._size += len(chunk) if chunk.isascii() else len(chunk.encode())
        else:
            self._size += len(chunk)
        if self._size > self.limits.max_message_bytes:
            self._discarding = True
            self._parts.clear()
            self.close(MESSAGE_TOO_BIG, "message too big")
            return
        if not event.message_finished:
            return
        parts, size = self._parts, self._size
        self._parts, self._size = [], 0
        self.backend.metrics.frame_in(size)
        if isinstance(chunk, str):
            text = "".join(parts)  # type: ignore[arg-type]
        else:
            try:
                text = b"".join(parts).decode("utf-8")  # type: ignore[arg-type]
            except UnicodeDecodeError:
                log.info("ignoring a binary message that is not UTF-8")
                return
        await self._on_text(text)

    async def _on_text(self, text: str) -> None:
        # A client that sends faster than it reads our answers is not read
        # until the writer catches up: replies stay bounded without closing
        # it (only a socket that takes nothing at all gets 1013).
        if len(self.outbox) >= self.limits.send_queue_frames:
            self.busy = True
            try:
                while (
                    len(self.outbox) >= self.limits.send_queue_frames
                    and self.closing is None
                ):
                    await self._written.park()
            finally:
                self.busy = False
        session = self.session
        request = session.parse(text, trio.current_time())
        if isinstance(request, list):
            self.send_events(request)
            return
        effects = await self._handle(request)
        if effects.scope_change is not None:
            self.backend.persist_scope(*effects.scope_change)
        self.send_events(effects.replies)
        if effects.webui is not None:
            self.send_events([await self.backend.webui_request(effects.webui)])
        if effects.deliver is not None:
            await self._deliver(effects.deliver)

    async def _handle(self, request: Request) -> Effects:
        session = self.session
        chat_id = session.chat_to_load(request)
        log_state = None
        if chat_id is not None:
            self.busy = True
            try:
                log_state = await self.backend.load_chat(
                    chat_id, fresh=not isinstance(request, ChatMessage)
                )
            except StoreUnavailable:
                return Effects([Error(detail=STORE_UNAVAILABLE, chat_id=chat_id)])
            finally:
                self.busy = False
        effects = session.handle(request, log_state)
        if isinstance(effects, NeedsMedia):
            effects = await self.backend.save_media(session, effects.request)
        return effects

    async def _deliver(self, message: InboundMessage) -> None:
        self.busy = True
        starts_turn = self.session.claim_turn(message.chat_id)
        try:
            echo = await self.backend.deliver(message, starts_turn)
        except StoreUnavailable:
            self.session.release_turn(message.chat_id, starts_turn)
            await self.backend.discard_media(message.media)
            self.send_events([self.session.store_unavailable(message)])
            return
        except AgentGone:
            self.session.release_turn(message.chat_id, starts_turn)
            await self.backend.discard_media(message.media)
            self.close(INTERNAL_ERROR, "the agent is not running")
            return
        finally:
            self.busy = False
        self.send_events(self.session.delivered(message, starts_turn))
        self.backend.echo(self, message.chat_id, echo)

    # --- sending ---------------------------------------------------------------------

    def send_events(self, events: Sequence[ServerEvent]) -> None:
        """Queue replies to this connection (they are not refused when full)."""
        for event in events:
            self._send_raw(text_frame(encode_event(event)))

    def _send_raw(self, data: bytes) -> None:
        if self.closing is not None:
            return
        self.outbox.force(data)
        self._kick()

    def _kick(self) -> None:
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._write)

    async def _write(self) -> None:
        try:
            while True:
                if len(self.outbox):
                    await self._send(self.outbox.take())
                elif self.catching_up and self.closing is None:
                    await self._catch_up()
                else:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The peer is gone: the reader sees it too; stop both now.
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        finally:
            self._writing = False
            self._written.unpark_all()

    async def _send(self, frames: list[bytes]) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        view = memoryview(data)
        for start in range(0, len(data), SEND_CHUNK_BYTES):
            self.send_since = trio.current_time()
            self.timekeeper.sending(self)
            try:
                await self.stream.send_all(view[start : start + SEND_CHUNK_BYTES])
            finally:
                self.send_since = None
        self.backend.metrics.frames_out(len(frames), len(data))
        self._written.unpark_all()
        closing = self.closing
        done = closing is not None and (
            closing.peer_dead or self.ws.state is ConnectionState.CLOSED
        )
        if done and not len(self.outbox) and self._nursery is not None:
            # The close frame is out and nobody will answer (or the peer
            # already did): drop the transport now.
            self._nursery.cancel_scope.cancel()

    async def _catch_up(self) -> None:
        """One page of one chat from the store (round robin between chats)."""
        hub = self.backend.hub
        chat_id = next(iter(self.catching_up))
        del self.catching_up[chat_id]
        cursor = hub.cursor(self, chat_id)
        if cursor is None or cursor.live:
            return
        if not cursor.must_read and cursor.try_go_live(hub.chat(chat_id).published_seq):
            self._handed_over(chat_id, cursor.rehydrate)
            cursor.rehydrate = False
            return
        limit = self.limits.catch_up_page
        # Set again if the feed breaks during the read: then this page may
        # be older than what that break is about, and is not the last read.
        must_read, cursor.must_read = cursor.must_read, False
        try:
            page = await self.backend.read_events(chat_id, cursor.next_seq - 1, limit)
        except StoreError as exc:
            log.warning("catch-up of %s paused: %s", chat_id, exc)
            cursor.must_read = cursor.must_read or must_read
            self.catching_up[chat_id] = None
            await trio.sleep(CATCH_UP_RETRY_S)
            return
        if hub.cursor(self, chat_id) is not cursor or self.closing is not None:
            return  # re-attached or closing meanwhile
        step = catch_up_page(cursor, chat_id, page.first_seq, page.events, limit=limit)
        if step.notice is not None:
            self.send_events([step.notice])
        for payload in step.payloads:
            self.outbox.force(text_frame(payload))
        if (
            step.exhausted
            and not cursor.must_read
            and cursor.try_go_live(hub.chat(chat_id).published_seq)
        ):
            self._handed_over(chat_id, cursor.rehydrate)
            cursor.rehydrate = False
        else:
            self.catching_up[chat_id] = None

    def _handed_over(self, chat_id: str, fell_behind: bool) -> None:
        """Live again: the chat's current state, computed now (PROTOCOL 3.4, 4).

        After falling behind while live, the client may have missed status
        events: it gets the whole state (scope, goal, running or idle).
        """
        hub = self.backend.hub
        self.send_events(
            hub.hydration(chat_id, after_catch_up=fell_behind, with_scope=fell_behind)
        )
