"""What a :class:`~.connection.WsConnection` needs of the channel around it.

Kept apart from the connection so the channel's side (``backend.py``) and
test doubles implement one small Protocol without importing the connection's
I/O code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from ..core.events import InboundMessage, WebuiResponse
from ..core.hub import ChatHub
from ..core.protocol import ChatMessage, WebuiRequest
from ..core.session import ChatLog, ClientSession, Effects
from ..metrics import ChannelMetrics
from ..store.base import EventPage

if TYPE_CHECKING:
    from .connection import WsConnection

__all__ = ["AgentGone", "Backend", "ConnectionLimits"]


class AgentGone(Exception):
    """The agent no longer takes messages: the connection closes (1011)."""


class Backend(Protocol):
    """What a connection needs of the channel beyond its socket."""

    hub: ChatHub[WsConnection]
    metrics: ChannelMetrics

    async def load_chat(self, chat_id: str, *, fresh: bool) -> ChatLog: ...

    async def save_media(
        self, session: ClientSession, request: ChatMessage
    ) -> Effects: ...

    async def deliver(self, message: InboundMessage, starts_turn: bool) -> bytes:
        """Store ``message``, then hand it to the agent; its ``user_message``
        (``starts_turn`` from :meth:`ClientSession.claim_turn`), encoded.

        Raises ``StoreUnavailable`` (nothing was stored) or :class:`AgentGone`.
        """
        ...

    def echo(self, sender: WsConnection, chat_id: str, user_message: bytes) -> None: ...

    def persist_scope(self, chat_id: str, scope: object) -> None: ...

    async def webui_request(self, request: WebuiRequest) -> WebuiResponse: ...

    async def read_events(
        self, chat_id: str, after_seq: int, limit: int
    ) -> EventPage: ...

    async def discard_media(self, paths: Sequence[str]) -> None: ...


@attrs.frozen
class ConnectionLimits:
    max_message_bytes: int
    ping_timeout_s: float
    close_timeout_s: float
    send_queue_frames: int

    @property
    def catch_up_page(self) -> int:
        """Events read per catch-up step: always fits the send queue twice."""
        return max(1, min(256, self.send_queue_frames // 2))
