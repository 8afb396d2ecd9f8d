"""One accepted WebSocket connection: reader, writer, heartbeat and watchdog.

The four tasks share one nursery owned by :func:`run_connection`; whichever
ends the connection (the client closing, a ping timeout, a stalled or
overflowing send queue, server shutdown) cancels the others, and the close
code is sent exactly once on the way out. Subscriptions are dropped in a
``finally``, so every way a connection ends cleans up the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ..core.events import Error, InboundMessage, ServerEvent, encode_event
from ..core.protocol import ChatMessage
from ..core.session import ClientSession, Effects, NeedsMedia, Replay
from ..media.ingress import MediaRejected, check_media, discard_media, save_media
from ..metrics import ChannelMetrics, payload_bytes
from ..store.sqlite import SessionStore
from .frames import abort, close_frame, send_framed, text_frame
from .outbox import Outbox

log = logging.getLogger("trio_channel.connection")

GOING_AWAY = 1001
INTERNAL_ERROR = 1011
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013

#: How long the closing handshake may take once we decided to close.
CLOSE_TIMEOUT_S = 5.0
#: Events read from the store per replay step.
REPLAY_BATCH = 256
HISTORY_TRUNCATED = "history_truncated"


def frame(event: ServerEvent) -> bytes:
    return text_frame(encode_event(event))


@attrs.define
class ConnectionLimits:
    max_message_bytes: int
    ping_interval_s: float
    ping_timeout_s: float
    slow_consumer_timeout_s: float
    close_timeout_s: float = CLOSE_TIMEOUT_S


@attrs.define(eq=False)
class _CloseState:
    """Why the connection ends, decided by whichever task ends it first."""

    code: int = GOING_AWAY
    reason: str = ""
    decided: bool = False
    #: True while a ``send_all`` is in flight: cancelling it may leave a
    #: partial frame, after which a close frame would be garbage.
    writing: bool = False
    #: The peer stopped answering: waiting for its closing handshake is
    #: pointless, so the transport is dropped at once.
    peer_dead: bool = False
    #: A keepalive ping is out, waiting for its pong.
    pinging: bool = False
    #: Set when the writer task has ended (drained, or the peer went away).
    writer_done: trio.Event = attrs.field(factory=trio.Event)

    def decide(self, code: int, reason: str, scope: trio.CancelScope) -> None:
        if not self.decided:
            self.code, self.reason, self.decided = code, reason, True
        scope.cancel()


async def run_connection(
    ws: WebSocketConnection,
    session: ClientSession,
    outbox: Outbox,
    *,
    inbound: trio.MemorySendChannel[InboundMessage],
    store: SessionStore,
    limits: ConnectionLimits,
    media_dir: Path,
    metrics: ChannelMetrics,
    keepalive: dict[Outbox, Callable[[], None]],
) -> int:
    """Serve ``ws`` until it ends; return the close code we used (or saw).

    Two tasks run for the whole connection (reader and writer). The ping
    and the slow-consumer watchdog are started only when needed: the server's
    one keepalive task calls the function this connection registers in
    ``keepalive``, and the outbox starts the watchdog when it first fills up.
    """
    state = _CloseState()
    outbox.put_many([frame(e) for e in session.start()])
    try:
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            nursery.start_soon(_writer, ws, outbox, state, scope, metrics)

            def ping_now() -> None:
                if not state.pinging:
                    state.pinging = True
                    nursery.start_soon(_ping, ws, limits, state, scope)

            def start_watchdog() -> None:
                nursery.start_soon(_watchdog, outbox, limits, state, scope, metrics)

            outbox.on_full = start_watchdog
            keepalive[outbox] = ping_now
            await _reader(
                ws, session, outbox, inbound, store, limits, media_dir, state, metrics
            )
            # Let the writer finish what it is sending (say, the error that
            # came before a 1009) so the close frame never follows half a frame.
            outbox.close()
            with trio.move_on_after(limits.close_timeout_s):
                await state.writer_done.wait()
            state.decide(ws.closed.code if ws.closed else 1000, "", scope)
    except* Exception:
        # A bug in our own code: tell the client, then let the server log it.
        state.code, state.reason = INTERNAL_ERROR, "internal error"
        raise
    finally:
        keepalive.pop(outbox, None)
        session.close()
        outbox.close()
        with trio.CancelScope(shield=True), trio.move_on_after(limits.close_timeout_s):
            await _close(ws, state)
    return state.code


async def _close(ws: WebSocketConnection, state: _CloseState) -> None:
    if ws.closed is not None:
        return
    if state.peer_dead and not state.writing:
        # Nobody answers: say why in a close frame, but do not wait for a
        # closing handshake that will not come.
        with trio.move_on_after(1):
            await send_framed(ws, close_frame(state.code, state.reason))
    if state.writing or state.peer_dead:
        # A frame may be half-written, or nobody is listening: drop TCP.
        await abort(ws)
        return
    await ws.aclose(state.code, state.reason or None)


async def _reader(
    ws: WebSocketConnection,
    session: ClientSession,
    outbox: Outbox,
    inbound: trio.MemorySendChannel[InboundMessage],
    store: SessionStore,
    limits: ConnectionLimits,
    media_dir: Path,
    state: _CloseState,
    metrics: ChannelMetrics,
) -> None:
    max_bytes = limits.max_message_bytes
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed:
            return
        metrics.frame_in(payload_bytes(message))
        if isinstance(message, bytes):
            try:
                text = message.decode("utf-8")
            except UnicodeDecodeError:
                log.info("ignoring a binary frame that is not UTF-8")
                continue
        else:
            text = message
            # trio-websocket bounds characters; the contract bounds bytes.
            if len(text) * 4 > max_bytes and len(text.encode()) > max_bytes:
                state.code, state.reason, state.decided = (
                    MESSAGE_TOO_BIG,
                    "message too big",
                    True,
                )
                return
        effects = session.on_frame(text, trio.current_time())
        if isinstance(effects, NeedsMedia):
            effects = await _with_media(session, effects.request, media_dir)
        outbox.put_many([frame(e) for e in effects.replies])
        if effects.replay is not None:
            await _replay(store, outbox, effects.replay)
        if effects.deliver is not None and not await _deliver(
            inbound, store, effects.deliver
        ):
            state.code, state.reason, state.decided = (
                INTERNAL_ERROR,
                "the agent is not running",
                True,
            )
            return


async def _with_media(
    session: ClientSession, request: ChatMessage, media_dir: Path
) -> Effects:
    """Decode and save attachments off the event loop; never leave files behind."""
    checked = await trio.to_thread.run_sync(check_media, request.envelope.media)
    if isinstance(checked, MediaRejected):
        return session.media_rejected(checked.reason)
    saved = await save_media(checked, media_dir) if checked else []
    effects = session.finish_message(request, saved)
    if effects.deliver is None and saved:
        await discard_media(saved)
    return effects


async def _replay(store: SessionStore, outbox: Outbox, replay: Replay) -> None:
    """Send the chat's persisted events after ``after_seq``, then go live.

    Reads in batches and waits for the client to drain between them. The
    hand-over is gap-free: ``read_events`` returns without a checkpoint after
    merging the events still in flight, and the cursor goes live in that same
    step, so the next event the dispatcher publishes is admitted live.
    """
    cursor = replay.cursor
    page = await store.read_events(replay.chat_id, replay.after_seq, REPLAY_BATCH)
    if page.first_seq > replay.after_seq + 1:
        outbox.put(
            frame(
                Error(
                    detail=HISTORY_TRUNCATED,
                    chat_id=replay.chat_id,
                    first_seq=page.first_seq,
                )
            )
        )
    while True:
        for seq, payload in page.events:
            outbox.put(text_frame(payload))
            cursor.next_seq = seq + 1
        if len(page.events) < REPLAY_BATCH:
            # A since_seq beyond the chat's last seq must not make the cursor
            # skip the next live events.
            cursor.next_seq = min(cursor.next_seq, page.last_seq + 1)
            cursor.live = True
            break
        await outbox.wait_for_room()
        page = await store.read_events(
            replay.chat_id, cursor.next_seq - 1, REPLAY_BATCH
        )
    outbox.put_many([frame(e) for e in replay.then])


async def _deliver(
    inbound: trio.MemorySendChannel[InboundMessage],
    store: SessionStore,
    message: InboundMessage,
) -> bool:
    """Hand ``message`` to the agent; False when the agent stopped receiving."""
    try:
        # The user's message joins the chat's history, then goes to the agent.
        await store.wait_for_room()
        store.append_user_message(
            message.chat_id, message.client_id, message.content, message.media
        )
        try:
            inbound.send_nowait(message)
        except trio.WouldBlock:
            # The agent is behind: wait, and so stop reading this socket.
            await inbound.send(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.error("the agent stopped receiving messages; closing the connection")
        if message.media:
            await discard_media(message.media)
        return False
    except BaseException:
        if message.media:
            with trio.CancelScope(shield=True):
                await discard_media(message.media)
        raise
    return True


async def _writer(
    ws: WebSocketConnection,
    outbox: Outbox,
    state: _CloseState,
    scope: trio.CancelScope,
    metrics: ChannelMetrics,
) -> None:
    try:
        while True:
            try:
                data = await outbox.take_all()
            except trio.EndOfChannel:
                return
            frames = outbox.last_batch
            # One scheduler pass lets the dispatcher queue what it has in hand
            # (say, the rest of a turn), so one send_all carries more frames.
            await trio.lowlevel.cancel_shielded_checkpoint()
            more = outbox.take_nowait()
            if more:
                data += more
                frames += outbox.last_batch
            state.writing = True
            try:
                await send_framed(ws, data)
            except ConnectionClosed:
                state.writing = False
                scope.cancel()
                return
            state.writing = False
            metrics.frames_out(frames, len(data))
    finally:
        state.writer_done.set()


async def _ping(
    ws: WebSocketConnection,
    limits: ConnectionLimits,
    state: _CloseState,
    scope: trio.CancelScope,
) -> None:
    """One keepalive ping; no pong within ``ping_timeout_s`` closes the peer."""
    try:
        with trio.move_on_after(limits.ping_timeout_s) as ping_scope:
            try:
                await ws.ping()
            except ConnectionClosed:
                scope.cancel()
                return
    finally:
        state.pinging = False
    if ping_scope.cancelled_caught:
        log.info("closing a connection: no pong within %ss", limits.ping_timeout_s)
        state.peer_dead = True
        state.decide(INTERNAL_ERROR, "keepalive ping timeout", scope)


async def _watchdog(
    outbox: Outbox,
    limits: ConnectionLimits,
    state: _CloseState,
    scope: trio.CancelScope,
    metrics: ChannelMetrics,
) -> None:
    await outbox.wait_until_stalled(limits.slow_consumer_timeout_s)
    log.info("closing a slow consumer (send queue stayed full)")
    metrics.slow_consumer_closed()
    state.decide(TRY_AGAIN_LATER, "slow consumer", scope)
