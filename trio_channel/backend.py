"""What connections and the HTTP API need of the channel: store, agent, media.

A connection (:mod:`trio_channel.wire.connection`) moves bytes and runs the
protocol core; everything that needs the store, the agent's bus or the disk
goes through the one :class:`ChannelBackend` of the channel, so the rules
live in one place:

- a chat is loaded from the store into the hub before a request uses it;
- a user's message is stored (and durable) before the agent gets it
  (PROTOCOL 4), and the chat's other connections then see it live;
- deleting a chat (HTTP API or ``webui_request``) goes through the same
  ordered writes as everything else;
- attachments are decoded and saved off the event loop, and removed again
  when the message is not taken.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec
import trio

from .clock import WallClock
from .core.events import (
    InboundMessage,
    MediaUrl,
    UserMessageEcho,
    WebuiError,
    WebuiResponse,
    encode_event,
)
from .core.hub import ChatHub
from .core.protocol import ChatMessage, WebuiRequest
from .core.session import ChatLog, ClientSession, Effects
from .http.routes import parse_session_key, session_rows
from .media.ingress import MediaRejected, check_media, discard_media, save_media
from .media.signing import MediaSigner
from .metrics import ChannelMetrics
from .store.base import (
    AppendUserMessage,
    DeleteChat,
    EventPage,
    SessionStore,
    StoreError,
    UpdateChat,
)
from .store.committer import GroupCommitter, StoreUnavailable
from .wire.connection import AgentGone, WsConnection
from .wire.frames import text_frame

__all__ = ["ChannelBackend"]

log = logging.getLogger("trio_channel.backend")

_inbound = msgspec.json.Encoder()

#: Rows a ``sessions.list`` action answers with at most.
SESSIONS_LIMIT: Final = 1000


@attrs.define(eq=False)
class ChannelBackend:
    hub: ChatHub[WsConnection]
    store: SessionStore
    committer: GroupCommitter
    inbound: trio.MemorySendChannel[InboundMessage]
    metrics: ChannelMetrics
    signer: MediaSigner
    media_dir: Path
    clock: WallClock

    # --- chats ------------------------------------------------------------------

    async def load_chat(self, chat_id: str, *, fresh: bool) -> ChatLog:
        """Make sure the hub has the chat's stored state; its log for ``attach``.

        Raises :class:`StoreUnavailable` when the store cannot be read.
        """
        hub = self.hub
        if hub.is_loaded(chat_id) and not fresh:
            return ChatLog()
        # The state exists before the read, so an event stored meanwhile
        # still moves its published seq (see ChatHub.publish).
        hub.chat(chat_id)
        try:
            meta = await self.store.chat(chat_id)
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if meta is None:
            hub.load(chat_id, workspace_scope=None, goal_state=None, last_seq=0)
            return ChatLog()
        hub.load(
            chat_id,
            workspace_scope=meta.workspace_scope,
            goal_state=meta.goal_state,
            last_seq=meta.last_seq,
            epoch=meta.epoch,
            running_since=meta.run_started_at,
        )
        return ChatLog(meta.epoch, meta.first_seq, meta.last_seq)

    def persist_scope(self, chat_id: str, scope: object) -> None:
        self.committer.submit(
            UpdateChat(chat_id, self.clock.now(), workspace_scope=scope)
        )

    async def delete_chat(self, chat_id: str) -> bool:
        """Forget a chat's log; it comes back with a new epoch. Raises
        :class:`StoreUnavailable`."""
        deleted = await self.committer.write(DeleteChat(chat_id))
        self.hub.forget_log(chat_id)
        return bool(deleted)

    async def sessions(self) -> list[dict[str, Any]]:
        try:
            metas = await self.store.chats(SESSIONS_LIMIT)
        except StoreError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return session_rows(metas, self._running_since)

    def _running_since(self, chat_id: str) -> float | None:
        chat = self.hub.chats.get(chat_id)
        return None if chat is None else chat.running_since

    async def read_events(self, chat_id: str, after_seq: int, limit: int) -> EventPage:
        return await self.store.read_events(chat_id, after_seq, limit)

    # --- user messages --------------------------------------------------------------

    async def deliver(self, message: InboundMessage, starts_turn: bool) -> bytes:
        """Store ``message`` (durably), then hand it to the agent; its
        ``user_message``, encoded once, for :meth:`echo`.

        With a shared store the message reaches the agent through the store:
        the one write stores it, puts its ``user_message`` on the other
        nodes' feeds and queues it in its partition's inbox, for whichever
        node owns the partition (:mod:`trio_channel.cluster`), which answers
        once its feed has delivered the ``user_message``.
        """
        shared = self.store.shared
        echo = self._user_message(message, starts_turn)
        await self.committer.write(
            AppendUserMessage(
                message.chat_id,
                message.received_at,
                message.client_id,
                message.content,
                message.media,
                message.turn_id,
                message_id=uuid.uuid4().hex if shared else None,
                inbound=_inbound.encode(message) if shared else None,
                echo=echo if shared else None,
            )
        )
        if shared:
            return echo
        try:
            self.inbound.send_nowait(message)
        except trio.WouldBlock:
            # The agent is behind: wait, and so stop reading this socket.
            await self.inbound.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.error("the agent stopped receiving messages")
            raise AgentGone from None
        return echo

    def echo(self, sender: WsConnection, chat_id: str, user_message: bytes) -> None:
        """The chat's other connections here see the user's message at once
        (other nodes' got it with the write, :meth:`deliver`)."""
        self.hub.broadcast(chat_id, text_frame(user_message), skip=sender)

    def _user_message(self, message: InboundMessage, starts_turn: bool) -> bytes:
        urls = [
            MediaUrl(url=url, name=Path(path).name)
            for path in message.media
            if (url := self.signer.url_for(Path(path))) is not None
        ]
        echo = UserMessageEcho(
            chat_id=message.chat_id,
            text=message.content,
            starts_turn=starts_turn,
            turn_id=message.turn_id,
            media_urls=urls or None,
        )
        return encode_event(echo)

    async def save_media(self, session: ClientSession, request: ChatMessage) -> Effects:
        """Decode and save attachments off the event loop; never leave files behind."""
        checked = await trio.to_thread.run_sync(check_media, request.envelope.media)
        if isinstance(checked, MediaRejected):
            return session.media_rejected(checked.reason)
        saved = await save_media(checked, self.media_dir) if checked else []
        effects = session.finish_message(request, saved)
        if effects.deliver is None and saved:
            await discard_media(saved)
        return effects

    async def discard_media(self, paths: Sequence[str]) -> None:
        await discard_media(paths)

    # --- the web UI's actions ------------------------------------------------

    async def webui_request(self, request: WebuiRequest) -> WebuiResponse:
        """``session.delete`` and ``sessions.list``; anything else is 404 at once."""
        try:
            if request.action == "session.delete":
                key = request.payload.get("key")
                chat_id = parse_session_key(key) if isinstance(key, str) else None
                if chat_id is None:
                    return _refused(request, 400, "invalid session key")
                deleted = await self.delete_chat(chat_id)
                return WebuiResponse(
                    request_id=request.request_id, ok=True, result={"deleted": deleted}
                )
            if request.action == "sessions.list":
                rows = await self.sessions()
                return WebuiResponse(
                    request_id=request.request_id, ok=True, result={"sessions": rows}
                )
        except StoreUnavailable:
            return _refused(request, 503, "store_unavailable")
        return _refused(request, 404, f"unknown action: {request.action!r}")


def _refused(request: WebuiRequest, status: int, message: str) -> WebuiResponse:
    return WebuiResponse(
        request_id=request.request_id,
        ok=False,
        result=msgspec.UNSET,
        error=WebuiError(status=status, message=message),
    )
