"""What the client hands out: a followed :class:`Chat`, and connection notices."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..core.events import Error, RuntimeModelUpdated, ServerEvent, WebuiResponse
from .resume import ChatCursor

if TYPE_CHECKING:
    from .connection import Client

__all__ = ["Chat", "Connected", "Disconnected", "Notice", "media_item"]


@attrs.frozen
class Connected:
    """The client is connected (again); every followed chat is re-attached."""

    client_id: str
    #: The connection's default chat (``ready``); the client does not follow it.
    default_chat_id: str
    #: True from the second connection on.
    reconnected: bool


@attrs.frozen
class Disconnected:
    """The connection is gone; the client tries again in ``retry_in`` seconds."""

    reason: str
    retry_in: float
    #: The close code when the server closed the connection.
    code: int | None = None


#: Client-level news: connection state, and server events that belong to no
#: chat we follow (``runtime_model_updated``, soft errors without a chat).
Notice = Connected | Disconnected | RuntimeModelUpdated | Error | WebuiResponse


@attrs.define(eq=False)
class Chat:
    """A chat the client follows: send to it, iterate over its events.

    ``async for event in chat`` yields the server's event Structs for this
    chat (:mod:`trio_channel.core.events`), persisted ones once each and in
    ``seq`` order across reconnects. ``StreamEnd.text`` always holds the
    whole stream's text. Also yielded: ``Attached`` after each (re)attach,
    ``Error`` soft errors about this chat (including ``history_truncated``
    and ``history_reset``: on a reset, drop what you show for the chat, the
    whole kept history follows), and a ``GoalStatus(idle)`` after a
    reconnect when the chat was running (the server says ``running`` again
    if it still is).
    """

    client: Client
    chat_id: str
    cursor: ChatCursor
    _send: trio.MemorySendChannel[ServerEvent]
    _receive: trio.MemoryReceiveChannel[ServerEvent]
    attached: trio.Event = attrs.field(factory=trio.Event)
    #: ``running`` or ``idle``, as last told by the server.
    status: str = "idle"

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._receive.__aiter__()

    async def receive(self) -> ServerEvent:
        """The next event (raises ``trio.EndOfChannel`` once closed)."""
        return await self._receive.receive()

    async def send(
        self,
        text: str,
        *,
        media: Sequence[Mapping[str, Any]] = (),
        turn_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Send a ``message``; waits for a connection if there is none.

        ``media`` items are ``{"data_url": "data:image/png;base64,...",
        "name": ...}`` (see :func:`media_item`); other envelope fields
        (``workspace_scope``...) go in ``fields``. Returns the ``turn_id``
        sent, which soft errors about this message carry.
        """
        turn = turn_id or uuid.uuid4().hex
        frame: dict[str, Any] = {
            "type": "message",
            "chat_id": self.chat_id,
            "content": text,
            "turn_id": turn,
            **fields,
        }
        if media:
            frame["media"] = [dict(m) for m in media]
        self.client._remember_turn(turn, self.chat_id)
        await self.client._send_frame(frame)
        return turn

    def stream_text(self, stream_id: Any, *, reasoning: bool = False) -> str:
        """The text of a stream still open in this chat, so far."""
        return self.client._streams.text(self.chat_id, stream_id, reasoning=reasoning)

    def close(self) -> None:
        """Stop following: no more events, no re-attach after a reconnect."""
        self.client._chats.pop(self.chat_id, None)
        self._send.close()


def media_item(data: bytes, mime: str, name: str = "") -> dict[str, str]:
    """A ``media`` entry for :meth:`Chat.send` from a file's bytes."""
    encoded = base64.b64encode(data).decode("ascii")
    item = {"data_url": f"data:{mime};base64,{encoded}"}
    if name:
        item["name"] = name
    return item
