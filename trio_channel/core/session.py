"""One client connection's protocol logic (sans-IO).

:class:`ClientSession` turns parsed frames into effects: events to send back
to this connection, subscriptions in the :class:`~trio_channel.hub.ChatHub`,
and :class:`~trio_channel.core.events.InboundMessage` objects for the agent. It never
awaits: the only I/O a message can need, decoding and saving attachments, is
split out (:meth:`ClientSession.on_frame` returns a :class:`NeedsMedia`, the
connection does the I/O, then calls :meth:`ClientSession.finish_message`).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import msgspec

from ..config import ChannelConfig
from . import metadata
from .auth import allow_list_admits
from .events import Attached, Error, InboundMessage, Ready, ServerEvent, SessionUpdated
from .hub import ChatHub, Cursor
from .protocol import (
    MISSING_CONTENT,
    Attach,
    ChatMessage,
    LegacyContent,
    NewChat,
    SetWorkspaceScope,
    parse_frame,
)
from .ratelimit import TokenBucket
from .scope import ScopeAccepted, ScopePolicy, ScopeRejected

WORKSPACE_SCOPE_REJECTED = "workspace_scope_rejected"
IMAGE_REJECTED = "image_rejected"
RATE_LIMITED = "rate_limited"


@attrs.frozen
class Peer:
    """Who is on the other end. ``host`` is "" for a unix-socket peer."""

    host: str
    port: int | None = None

    @property
    def is_loopback(self) -> bool:
        """127.0.0.0/8, ::1 and ::ffff:127.x; a unix-socket peer is not."""
        try:
            addr = ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            return addr.ipv4_mapped.is_loopback
        return addr.is_loopback

    def __str__(self) -> str:
        if not self.host:
            return "unix"
        if self.port is None:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class NeedsMedia:
    """A ``message`` whose attachments must be decoded and saved first."""

    request: ChatMessage


@attrs.frozen
class Effects:
    """What one frame asks of the connection."""

    replies: list[ServerEvent] = attrs.field(factory=list)
    deliver: InboundMessage | None = None
    replay: Replay | None = None


@attrs.frozen
class Replay:
    """Replay ``chat_id`` after ``after_seq`` from the store, then go live.

    The subscription's ``cursor`` is not live until the replay hands over;
    ``then`` (hydration) is sent after the replayed events.
    """

    chat_id: str
    after_seq: int
    cursor: Cursor
    then: list[ServerEvent]


def _new_chat_id() -> str:
    return str(uuid.uuid4())


@attrs.define(eq=False)
class ClientSession:
    """Protocol state of one accepted connection.

    ``key`` identifies the connection in the hub (the server uses the
    connection's outbox). ``wall_clock`` gives Unix seconds for timestamps that
    clients see; rate limiting uses the ``now`` passed in (trio's clock).
    """

    hub: ChatHub[Any]
    key: Hashable
    client_id: str
    peer: Peer
    cfg: ChannelConfig
    scope_policy: ScopePolicy
    wall_clock: Callable[[], float]
    #: Called for every frame dropped by the rate limit (a metrics hook).
    on_rate_limited: Callable[[], None] | None = None
    default_chat: str = attrs.field(factory=_new_chat_id)
    limiter: TokenBucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.limiter = TokenBucket(self.cfg.rate_limit)

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> list[ServerEvent]:
        """``ready`` first, then register, subscribe the default chat, hydrate."""
        replies: list[ServerEvent] = [
            Ready(chat_id=self.default_chat, client_id=self.client_id)
        ]
        self.hub.register(self.key)
        replies += self._subscribe(self.default_chat, hydrate_always=True)
        return replies

    def close(self) -> None:
        """Drop every subscription; safe to call more than once."""
        self.hub.unregister(self.key)

    # --- frames ---------------------------------------------------------------

    def on_frame(self, text: str, now: float) -> Effects | NeedsMedia:
        if not text.strip():
            return Effects()
        if not self.limiter.allow(now):
            if self.on_rate_limited is not None:
                self.on_rate_limited()
            return Effects([Error(detail=RATE_LIMITED)])
        request = parse_frame(text)
        if request is None:
            return Effects()
        if isinstance(request, Error):
            return Effects([request])
        if isinstance(request, LegacyContent):
            return self._legacy(request)
        if isinstance(request, ChatMessage):
            if not self._admitted():
                return Effects()
            media = request.envelope.media
            if media is not None and media != []:
                return NeedsMedia(request)
            return self.finish_message(request, [])
        if isinstance(request, NewChat):
            return self._new_chat(request)
        if isinstance(request, Attach):
            return self._attach(request)
        return self._set_scope(request)

    def media_rejected(self, reason: str) -> Effects:
        return Effects([Error(detail=IMAGE_REJECTED, reason=reason)])

    def finish_message(self, request: ChatMessage, saved: list[str]) -> Effects:
        """PROTOCOL 3.2 steps 6-7, then subscribe, hydrate and deliver.

        When this returns no ``deliver``, the caller must discard ``saved``.
        """
        env = request.envelope
        if not request.content.strip() and not saved:
            return Effects([Error(detail=MISSING_CONTENT)])
        known = self.hub.chats.get(request.chat_id)
        scope = known.workspace_scope if known is not None else None
        if env.workspace_scope is not msgspec.UNSET:
            decision = self._resolve_scope(request.chat_id, env.workspace_scope)
            if isinstance(decision, ScopeRejected):
                return Effects([self._scope_error(decision, request.chat_id)])
            scope = decision.scope
            self.hub.set_scope(request.chat_id, scope)
        meta = metadata.build_metadata(
            remote=str(self.peer),
            webui=env.webui,
            cli_apps=env.cli_apps,
            mcp_presets=env.mcp_presets,
            workspace_scope=scope,
            image_generation=env.image_generation,
            streaming=self.cfg.streaming,
        )
        replies = self._subscribe(request.chat_id, hydrate_always=False)
        message = self._inbound(request.chat_id, request.content, saved, meta)
        return Effects(replies, message)

    # --- handlers -------------------------------------------------------------

    def _legacy(self, request: LegacyContent) -> Effects:
        if not self._admitted():
            return Effects()
        meta = metadata.build_metadata(
            remote=str(self.peer),
            webui=None,
            cli_apps=None,
            mcp_presets=None,
            workspace_scope=self.hub.chat(self.default_chat).workspace_scope,
            image_generation=None,
            streaming=self.cfg.streaming,
        )
        message = self._inbound(self.default_chat, request.content, [], meta)
        return Effects([], message)

    def _new_chat(self, request: NewChat) -> Effects:
        scope: Any = None
        if request.workspace_scope is not msgspec.UNSET:
            decision = self.scope_policy.resolve(
                request.workspace_scope,
                peer_is_loopback=self.peer.is_loopback,
                chat_running=False,
            )
            if isinstance(decision, ScopeRejected):
                return Effects([self._scope_error(decision, None)])
            scope = decision.scope
        chat_id = _new_chat_id()
        self.hub.set_scope(chat_id, scope)
        self.hub.subscribe(self.key, chat_id)
        replies: list[ServerEvent] = [
            Attached(chat_id=chat_id),
            SessionUpdated(chat_id=chat_id, scope="metadata", workspace_scope=scope),
        ]
        replies += self.hub.hydration(chat_id)
        return Effects(replies)

    def _attach(self, request: Attach) -> Effects:
        chat_id, since = request.chat_id, request.since_seq
        cursor = self.hub.subscribe(self.key, chat_id, replay_after=since)
        attached: list[ServerEvent] = [Attached(chat_id=chat_id)]
        hydration: list[ServerEvent] = list(self.hub.hydration(chat_id))
        if since is None:
            return Effects(attached + hydration)
        return Effects(attached, replay=Replay(chat_id, since, cursor, hydration))

    def _set_scope(self, request: SetWorkspaceScope) -> Effects:
        decision = self._resolve_scope(request.chat_id, request.workspace_scope)
        if isinstance(decision, ScopeRejected):
            return Effects([self._scope_error(decision, request.chat_id)])
        self.hub.set_scope(request.chat_id, decision.scope)
        return Effects(
            [
                SessionUpdated(
                    chat_id=request.chat_id,
                    scope="metadata",
                    workspace_scope=decision.scope,
                )
            ]
        )

    # --- helpers --------------------------------------------------------------

    def _admitted(self) -> bool:
        return allow_list_admits(self.cfg.allow_from, self.client_id)

    def _subscribe(self, chat_id: str, *, hydrate_always: bool) -> list[ServerEvent]:
        new = chat_id not in self.hub.connections.get(self.key, ())
        self.hub.subscribe(self.key, chat_id)
        if new or hydrate_always:
            return list(self.hub.hydration(chat_id))
        return []

    def _resolve_scope(
        self, chat_id: str, requested: Any
    ) -> ScopeAccepted | ScopeRejected:
        chat = self.hub.chats.get(chat_id)
        current = chat.workspace_scope if chat is not None else None
        changing = requested != current and not (requested == {} and current is None)
        return self.scope_policy.resolve(
            requested,
            peer_is_loopback=self.peer.is_loopback,
            chat_running=changing and self.hub.is_running(chat_id),
        )

    @staticmethod
    def _scope_error(decision: ScopeRejected, chat_id: str | None) -> Error:
        return Error(
            detail=WORKSPACE_SCOPE_REJECTED, reason=decision.reason, chat_id=chat_id
        )

    def _inbound(
        self, chat_id: str, content: str, media: list[str], meta: dict[str, Any]
    ) -> InboundMessage:
        return InboundMessage(
            chat_id=chat_id,
            client_id=self.client_id,
            content=content,
            media=tuple(media),
            metadata=meta,
            received_at=self.wall_clock(),
        )
