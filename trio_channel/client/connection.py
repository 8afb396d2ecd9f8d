"""The trio client: one WebSocket at a time, reconnected and resumed by itself.

``open_client`` runs one task that owns the connection: it fetches a token
(:mod:`.auth`), opens the WebSocket on trio-websocket's public API
(:mod:`.transport`), re-attaches every followed chat with ``since_seq``
and ``epoch`` (:mod:`.resume`), then reads frames and hands each chat's
events to that chat's bounded channel. When the connection drops it waits a
jittered backoff and does it all again; callers only see events, in order,
each once.

Back-pressure: a chat's channel holds ``chat_buffer`` events. When it is
full the reader waits, so the socket is no longer read; if that lasts, the
server closes the connection (1013) and the client resumes where the
consumer stopped. Nothing is lost, but one unread chat holds up the others:
read every chat you follow, or :meth:`Chat.close` it.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import msgspec
import trio
import trio_websocket

from ..core.events import (
    Attached,
    Delta,
    Error,
    GoalStatus,
    Ready,
    ReasoningDelta,
    ReasoningEnd,
    RuntimeModelUpdated,
    ServerEvent,
    StreamEnd,
    WebuiResponse,
)
from .auth import (
    DEFAULT_URL,
    AuthError,
    ClientError,
    ConnectInfo,
    Credentials,
    ServerAddress,
    ServerUnavailable,
    connect_info,
    http_get,
)
from .handles import Chat, Connected, Disconnected, Notice
from .resume import Admit, Backoff, ChatCursor
from .streams import StreamAssembler
from .transport import open_websocket, single_exception

__all__ = ["Client", "open_client"]

log = logging.getLogger("trio_channel.client")

#: Every frame the server sends, decoded by its ``event`` tag.
_decoder = msgspec.json.Decoder(ServerEvent)
_encoder = msgspec.json.Encoder()

#: A server message can be large (a whole assembled stream).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: turn_ids remembered to route a soft error back to its chat.
TURN_IDS_KEPT = 1024


@attrs.define(eq=False)
class Client:
    """A connection to a trio_channel daemon that survives restarts.

    Made by :func:`open_client`; see there.
    """

    address: ServerAddress
    credentials: Credentials
    client_id: str
    ssl_context: ssl.SSLContext | None = None
    chat_buffer: int = 1024
    connect_timeout: float = 10.0
    backoff: Backoff = attrs.field(factory=Backoff)
    #: Notices (:data:`Notice`) waiting to be read; a full buffer drops new
    #: ones (they are advisory; chat events are never dropped).
    notices: trio.MemoryReceiveChannel[Notice] = attrs.field(init=False)
    #: The model name the server last announced (bootstrap or
    #: ``runtime_model_updated``).
    model_name: str | None = attrs.field(default=None, init=False)
    #: The current connection's default chat, when connected.
    default_chat_id: str | None = attrs.field(default=None, init=False)
    _notice_send: trio.MemorySendChannel[Notice] = attrs.field(init=False)
    _chats: dict[str, Chat] = attrs.field(factory=dict, init=False)
    _streams: StreamAssembler = attrs.field(factory=StreamAssembler, init=False)
    _ws: trio_websocket.WebSocketConnection | None = attrs.field(
        default=None, init=False
    )
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _new_chat_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _new_chat: trio.MemorySendChannel[Chat] | None = attrs.field(
        default=None, init=False
    )
    _turns: OrderedDict[str, str] = attrs.field(factory=OrderedDict, init=False)
    _api: ConnectInfo | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _ever_connected: bool = attrs.field(default=False, init=False)
    #: Counts connections made, so a waiter can tell "a new one" apart.
    _generation: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._notice_send, self.notices = trio.open_memory_channel[Notice](64)

    # --- public ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def chats(self) -> Mapping[str, Chat]:
        """The chats followed, by id."""
        return self._chats

    async def new_chat(self, **fields: Any) -> Chat:
        """Open a new chat on the server and follow it (``new_chat``).

        Sent again on the next connection if this one drops first.
        """
        async with self._new_chat_lock:
            send, receive = trio.open_memory_channel[Chat](1)
            self._new_chat = send
            try:
                while True:
                    await self._send_frame({"type": "new_chat", **fields})
                    generation = self._generation
                    waited = 0.0
                    while self._generation == generation and self.connected:
                        with trio.move_on_after(0.25):
                            return await receive.receive()
                        waited += 0.25
                        if waited >= self.connect_timeout:
                            raise ClientError("the server did not answer new_chat")
            finally:
                self._new_chat = None

    async def attach(self, chat_id: str, *, since_seq: int | None = None) -> Chat:
        """Follow an existing chat; with ``since_seq``, replay what came after.

        Without ``since_seq`` only new events are delivered. Returns once
        the server confirmed (``attached``); re-attaching a followed chat
        returns it as it is.
        """
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._follow(ChatCursor(chat_id, last_seq=since_seq))
            await self._send_frame(chat.cursor.attach_frame())
        await chat.attached.wait()
        return chat

    async def list_chats(self) -> list[dict[str, Any]]:
        """The server's chats (``GET /api/sessions``), newest first."""
        token = await self._api_token()
        answer = await http_get(
            self.address,
            "/api/sessions",
            [("Authorization", f"Bearer {token}")] if token else [],
            ssl_context=self.ssl_context,
        )
        if answer.status != 200:
            raise ClientError(f"/api/sessions answered HTTP {answer.status}")
        sessions = msgspec.json.decode(answer.body).get("sessions", [])
        return [s for s in sessions if isinstance(s, dict)]

    # --- the connection task ----------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Connect, then keep connected until cancelled or closed.

        The first connection's failure is raised (:class:`AuthError`,
        :class:`ServerUnavailable`); later ones are retried with backoff.
        """
        while not self._closing:
            first = not self._ever_connected
            reason, code = "closed", None
            try:
                await self._connect_once(first, task_status)
            except (AuthError, ServerUnavailable) as exc:
                if first:
                    raise
                reason = str(exc)
            except trio_websocket.ConnectionRejected as exc:
                if first:
                    raise ServerUnavailable(
                        f"the WebSocket handshake was refused (HTTP {exc.status_code})"
                    ) from None
                reason = f"handshake refused (HTTP {exc.status_code})"
            except (trio_websocket.HandshakeError, OSError, trio.TooSlowError) as exc:
                if first:
                    raise ServerUnavailable(f"cannot connect: {exc!r}") from None
                reason = f"cannot connect: {type(exc).__name__}"
            except trio_websocket.ConnectionClosed as exc:
                code = exc.reason.code if exc.reason is not None else None
                reason = f"connection closed ({code})"
            except Exception:
                if not self._closing:
                    raise
            self._disconnected()
            if self._closing:
                return
            delay = self.backoff.next_delay()
            log.info("disconnected (%s); reconnecting in %.2f s", reason, delay)
            self._notify(Disconnected(reason, delay, code))
            await trio.sleep(delay)

    async def _connect_once(
        self, first: bool, task_status: trio.TaskStatus[None]
    ) -> None:
        info = await connect_info(
            self.address,
            self.credentials,
            timeout_s=self.connect_timeout,
            ssl_context=self.ssl_context,
        )
        self._api = info
        if info.model_name:
            self.model_name = info.model_name
        async with self._open_websocket(info) as ws:
            with trio.fail_after(self.connect_timeout):
                ready = _decoder.decode(await ws.get_message())
            if not isinstance(ready, Ready):
                raise ServerUnavailable(f"expected ready, got {ready!r}")
            self.default_chat_id = ready.chat_id
            for chat in list(self._chats.values()):
                await ws.send_message(
                    _encoder.encode(chat.cursor.attach_frame()).decode()
                )
            self._ws = ws
            self._generation += 1
            self._ever_connected = True
            self._wake()
            self.backoff.reset()
            if first:
                task_status.started()
            self._notify(Connected(ready.client_id, ready.chat_id, not first))
            await self._read(ws)

    def _open_websocket(
        self, info: ConnectInfo
    ) -> contextlib.AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        url = urlsplit(info.url_with(self.client_id))
        return open_websocket(
            self.address,
            f"{url.path or '/'}?{url.query}",
            ssl_context=self.ssl_context,
            timeout_s=self.connect_timeout,
            max_message_bytes=MAX_FRAME_BYTES,
        )

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            raw = await ws.get_message()
            try:
                event = _decoder.decode(raw)
            except msgspec.DecodeError as exc:
                # Unknown event types (newer servers) and malformed frames.
                log.debug("skipping a frame: %s", exc)
                continue
            await self._route(event)

    def _disconnected(self) -> None:
        self._ws = None
        self.default_chat_id = None
        for chat in self._chats.values():
            chat.cursor.disconnected()
        self._wake()

    # --- routing ----------------------------------------------------------------

    async def _route(self, event: ServerEvent) -> None:
        if isinstance(event, Attached):
            return await self._on_attached(event)
        if isinstance(event, RuntimeModelUpdated):
            self.model_name = event.model_name
            return self._notify(event)
        if isinstance(event, Error):
            return await self._on_error(event)
        if isinstance(event, Ready | WebuiResponse):
            return self._notify(event) if isinstance(event, WebuiResponse) else None
        chat = self._chats.get(event.chat_id)
        if chat is None:
            return  # a chat we do not follow (the connection's default chat)
        if event.persisted:
            seq = getattr(event, "seq", 0)
            verdict = chat.cursor.admit(seq)
            if verdict is Admit.DUPLICATE:
                return
            if verdict is Admit.GAP:
                log.warning(
                    "chat %s: events before seq %d are missing", chat.chat_id, seq
                )
            event = self._assemble(event)
        elif isinstance(event, GoalStatus):
            chat.status = event.status
        await self._deliver(chat, event)

    def _assemble(self, event: ServerEvent) -> ServerEvent:
        streams = self._streams
        if isinstance(event, Delta):
            streams.add(event.chat_id, event.stream_id, event.text)
        elif isinstance(event, ReasoningDelta):
            streams.add(event.chat_id, event.stream_id, event.text, reasoning=True)
        elif isinstance(event, StreamEnd):
            text = streams.finish(event.chat_id, event.stream_id, event.text)
            return msgspec.structs.replace(event, text=text)
        elif isinstance(event, ReasoningEnd):
            streams.finish(event.chat_id, event.stream_id, reasoning=True)
        return event

    async def _on_attached(self, event: Attached) -> None:
        chat = self._chats.get(event.chat_id)
        if chat is None:
            if self._new_chat is None:
                return
            chat = self._follow(ChatCursor(event.chat_id, last_seq=0))
            self._new_chat.send_nowait(chat)
            self._new_chat = None
        resumed = chat.cursor.on_attached(event)
        chat.attached.set()
        await self._deliver(chat, event)
        if resumed and chat.status == "running":
            chat.status = "idle"
            await self._deliver(chat, GoalStatus(chat_id=chat.chat_id, status="idle"))

    async def _on_error(self, event: Error) -> None:
        chat_id = event.chat_id or (self._turns.get(event.turn_id or "") or None)
        chat = self._chats.get(chat_id) if chat_id else None
        if chat is None:
            return self._notify(event)
        if chat.cursor.on_error(event):
            self._streams.drop_chat(chat.chat_id)
        await self._deliver(chat, event)

    async def _deliver(self, chat: Chat, event: ServerEvent) -> None:
        # A closed chat: nobody follows it any more.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await chat._send.send(event)

    # --- helpers ----------------------------------------------------------------

    def _follow(self, cursor: ChatCursor) -> Chat:
        send, receive = trio.open_memory_channel[ServerEvent](self.chat_buffer)
        chat = Chat(self, cursor.chat_id, cursor, send, receive)
        self._chats[cursor.chat_id] = chat
        return chat

    def _notify(self, notice: Notice) -> None:
        try:
            self._notice_send.send_nowait(notice)
        except trio.WouldBlock:
            log.debug("notice buffer full; dropping %r", notice)
        except trio.ClosedResourceError:
            pass

    def _remember_turn(self, turn_id: str, chat_id: str) -> None:
        self._turns[turn_id] = chat_id
        while len(self._turns) > TURN_IDS_KEPT:
            self._turns.popitem(last=False)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        """Send on the current connection; wait for one; retry on a new one."""
        text = _encoder.encode(frame).decode()
        while True:
            if self._closing:
                raise trio.ClosedResourceError("the client is closed")
            ws = self._ws
            if ws is None:
                await self._changed.wait()
                continue
            try:
                await ws.send_message(text)
                return
            except trio_websocket.ConnectionClosed:
                while self._ws is ws:
                    await self._changed.wait()

    async def _api_token(self) -> str:
        info = self._api
        if info is not None and trio.current_time() < info.expires_at:
            return info.api_token
        info = await connect_info(
            self.address,
            self.credentials,
            timeout_s=self.connect_timeout,
            ssl_context=self.ssl_context,
        )
        # This token is never spent on a WebSocket, so it stays an API token.
        self._api = info
        return info.api_token

    async def aclose(self) -> None:
        """Close the connection (1000) and end every chat's events."""
        self._closing = True
        for chat in list(self._chats.values()):
            chat._send.close()
        self._notice_send.close()
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(2.0):
                await ws.aclose()
        self._wake()


@asynccontextmanager
async def open_client(
    url: str = DEFAULT_URL,
    *,
    client_id: str | None = None,
    token: str | None = None,
    secret: str | None = None,
    environ: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    chat_buffer: int = 1024,
    connect_timeout: float = 10.0,
    backoff: Backoff | None = None,
) -> AsyncIterator[Client]:
    """Connect to the daemon at *url* and keep connected until the block ends.

    *url* is the daemon's ``http(s)://`` address (the page's) or its
    ``ws(s)://`` endpoint. Credentials: *token* (a static token) or *secret*
    (the server's ``token_issue_secret``), else ``TRIO_CHANNEL_TOKEN`` /
    ``TRIO_CHANNEL_TOKEN_ISSUE_SECRET`` from *environ* (default
    ``os.environ``), else none (loopback bootstrap). Returns once connected;
    raises :class:`AuthError` or :class:`ServerUnavailable` if the first
    connection fails. Later drops are repaired by reconnecting (jittered
    backoff) and resuming every followed chat. Leaving the block, or
    cancelling it, closes the connection with 1000 and ends every chat's
    iteration.
    """
    env_creds = Credentials.from_env(environ)
    credentials = Credentials(
        token=env_creds.token if token is None else token,
        secret=env_creds.secret if secret is None else secret,
    )
    client = Client(
        address=ServerAddress.parse(url),
        credentials=credentials,
        client_id=client_id or f"py-{uuid.uuid4().hex[:12]}",
        ssl_context=ssl_context,
        chat_buffer=chat_buffer,
        connect_timeout=connect_timeout,
        backoff=backoff or Backoff(),
    )
    # One task raised (the first connection failed, or the caller's block
    # did): that exception itself is raised, as trio-websocket does.
    with single_exception():
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
