"""One client connection's protocol logic (sans-IO).

:class:`ClientSession` turns parsed frames into effects: events to send back
to this connection, subscriptions in the :class:`~trio_channel.core.hub.ChatHub`,
and :class:`~trio_channel.core.events.InboundMessage` objects for the agent. It
never awaits. The I/O a frame can need is done by the connection between
the steps: loading the chat from the store before :meth:`ClientSession.handle`
(:meth:`ClientSession.chat_to_load` says which), decoding and saving
attachments (:class:`NeedsMedia`, then :meth:`ClientSession.finish_message`),
storing the user's message before the agent gets it, and the web UI's
actions (:class:`~trio_channel.core.protocol.WebuiRequest`).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import msgspec

from . import metadata
from .auth import allow_list_admits
from .delivery import resume_from
from .events import (
    Attached,
    Error,
    InboundMessage,
    MessageAccepted,
    Ready,
    ServerEvent,
    SessionUpdated,
)
from .hub import ChatHub
from .protocol import (
    MISSING_CONTENT,
    Attach,
    ChatMessage,
    LegacyContent,
    NewChat,
    Request,
    SetWorkspaceScope,
    WebuiRequest,
    parse_frame,
)
from .ratelimit import TokenBucket
from .scope import ScopeAccepted, ScopePolicy, ScopeRejected

WORKSPACE_SCOPE_REJECTED = "workspace_scope_rejected"
IMAGE_REJECTED = "image_rejected"
RATE_LIMITED = "rate_limited"
STORE_UNAVAILABLE = "store_unavailable"


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
class ChatLog:
    """Where a chat's stored log stands, for ``attach`` (from the store)."""

    epoch: str | None = None
    first_seq: int = 1
    last_seq: int = 0


@attrs.frozen
class Effects:
    """What one frame asks of the connection."""

    replies: list[ServerEvent] = attrs.field(factory=list)
    #: A user's message: store it, then hand it to the agent.
    deliver: InboundMessage | None = None
    #: A chat's new workspace scope, to store: ``(chat_id, scope)``.
    scope_change: tuple[str, Any] | None = None
    #: An action of the web UI for the connection to carry out.
    webui: WebuiRequest | None = None


def _new_chat_id() -> str:
    return str(uuid.uuid4())


@attrs.define(eq=False)
class ClientSession:
    """Protocol state of one accepted connection.

    ``key`` identifies the connection in the hub (the server uses the
    connection itself). ``wall_clock`` gives Unix seconds for timestamps
    that clients see; rate limiting uses the ``now`` passed in (trio's
    clock).
    """

    hub: ChatHub[Any]
    key: Hashable
    client_id: str
    peer: Peer
    allow_from: tuple[str, ...]
    streaming: bool
    rate_limit: float
    scope_policy: ScopePolicy
    wall_clock: Callable[[], float]
    #: Called for every frame dropped by the rate limit (a metrics hook).
    on_rate_limited: Callable[[], None] | None = None
    default_chat: str = attrs.field(factory=_new_chat_id)
    limiter: TokenBucket = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.limiter = TokenBucket(self.rate_limit)

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

    def parse(self, text: str, now: float) -> Request | list[ServerEvent]:
        """Classify one frame; a list is the whole answer (maybe empty)."""
        if not text.strip():
            return []
        if not self.limiter.allow(now):
            if self.on_rate_limited is not None:
                self.on_rate_limited()
            return [Error(detail=RATE_LIMITED)]
        request = parse_frame(text)
        if request is None:
            return []
        if isinstance(request, Error):
            return [request]
        return request

    def chat_to_load(self, request: Request) -> str | None:
        """The chat whose stored state :meth:`handle` needs in the hub."""
        if isinstance(request, LegacyContent):
            return self.default_chat
        if isinstance(request, ChatMessage | Attach | SetWorkspaceScope):
            return request.chat_id
        return None

    def handle(
        self, request: Request, log: ChatLog | None = None
    ) -> Effects | NeedsMedia:
        """Answer a parsed request; ``log`` is the chat's stored log (``attach``)."""
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
            return self._attach(request, log or ChatLog())
        if isinstance(request, WebuiRequest):
            return Effects(webui=request)
        return self._set_scope(request)

    def media_rejected(self, reason: str) -> Effects:
        return Effects([Error(detail=IMAGE_REJECTED, reason=reason)])

    def finish_message(self, request: ChatMessage, saved: list[str]) -> Effects:
        """PROTOCOL 3.2 steps 6-7, then subscribe, hydrate and deliver.

        When this returns no ``deliver``, the caller must discard ``saved``.
        """
        env = request.envelope
        if not request.content.strip() and not saved:
            return Effects([self._error(MISSING_CONTENT, request)])
        chat = self.hub.chat(request.chat_id)
        scope = chat.workspace_scope
        scope_change = None
        if env.workspace_scope is not msgspec.UNSET:
            decision = self._resolve_scope(request.chat_id, env.workspace_scope)
            if isinstance(decision, ScopeRejected):
                return Effects([self._scope_error(decision, request.chat_id, request)])
            if decision.scope != scope:
                scope = chat.workspace_scope = decision.scope
                scope_change = (request.chat_id, scope)
        meta = metadata.build_metadata(
            remote=str(self.peer),
            webui=env.webui,
            cli_apps=env.cli_apps,
            mcp_presets=env.mcp_presets,
            workspace_scope=scope,
            image_generation=env.image_generation,
            streaming=self.streaming,
        )
        replies = self._subscribe(request.chat_id, hydrate_always=False)
        message = self._inbound(
            request.chat_id, request.content, saved, meta, request.turn_id
        )
        return Effects(replies, message, scope_change)

    def store_unavailable(self, message: InboundMessage) -> Error:
        """The soft error for a message the store could not take."""
        return Error(
            detail=STORE_UNAVAILABLE, chat_id=message.chat_id, turn_id=message.turn_id
        )

    def claim_turn(self, chat_id: str) -> bool:
        """Before a message of ``chat_id`` is stored: whether it starts a turn.

        True when no turn of the chat runs or waits; from now on one waits,
        so a second message sent meanwhile does not start one too. Decided
        before the write because, with several daemons, the message's
        ``user_message`` travels with it (:meth:`release_turn` if the write
        fails).
        """
        chat = self.hub.chat(chat_id)
        starts_turn = chat.running_since is None and not chat.turn_pending
        chat.turn_pending = True
        return starts_turn

    def release_turn(self, chat_id: str, starts_turn: bool) -> None:
        """The message :meth:`claim_turn` was for was not stored after all."""
        if starts_turn:
            self.hub.chat(chat_id).turn_pending = False

    def delivered(
        self, message: InboundMessage, starts_turn: bool
    ) -> list[ServerEvent]:
        """After ``message`` is stored and with the agent: what its sender gets.

        ``message_accepted``, when it asked for it (a string ``turn_id`` and
        ``webui: true``), with ``starts_turn`` from :meth:`claim_turn`; the
        chat's *other* subscribers get the ``user_message`` (the backend's
        ``echo``).
        """
        replies: list[ServerEvent] = []
        if message.turn_id is not None and message.metadata.get("webui") is True:
            replies.append(
                MessageAccepted(
                    chat_id=message.chat_id,
                    turn_id=message.turn_id,
                    starts_turn=starts_turn,
                )
            )
        return replies

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
            streaming=self.streaming,
        )
        message = self._inbound(self.default_chat, request.content, [], meta, None)
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
        chat = self.hub.chat(chat_id)
        chat.loaded, chat.workspace_scope = True, scope
        self.hub.subscribe(self.key, chat_id)
        replies: list[ServerEvent] = [
            Attached(chat_id=chat_id, last_seq=0),
            SessionUpdated(chat_id=chat_id, scope="metadata", workspace_scope=scope),
        ]
        replies += self.hub.hydration(chat_id)
        # The chat is kept from now on (it is listed before anything is said).
        return Effects(replies, scope_change=(chat_id, scope))

    def _attach(self, request: Attach, log: ChatLog) -> Effects:
        chat_id = request.chat_id
        published = self.hub.chat(chat_id).published_seq
        last_seq = max(log.last_seq, published)
        resume = resume_from(
            chat_id,
            since_seq=request.since_seq,
            epoch=request.epoch,
            chat_epoch=log.epoch,
            first_seq=log.first_seq,
            last_seq=last_seq,
        )
        self.hub.subscribe(self.key, chat_id, resume)
        replies: list[ServerEvent] = [
            Attached(chat_id=chat_id, epoch=log.epoch, last_seq=last_seq)
        ]
        if resume.notice is not None:
            replies.append(resume.notice)
        if not resume.replay:
            # A replay hydrates when it hands over to live delivery.
            replies += self.hub.hydration(chat_id)
        return Effects(replies)

    def _set_scope(self, request: SetWorkspaceScope) -> Effects:
        decision = self._resolve_scope(request.chat_id, request.workspace_scope)
        if isinstance(decision, ScopeRejected):
            return Effects([self._scope_error(decision, request.chat_id)])
        self.hub.chat(request.chat_id).workspace_scope = decision.scope
        return Effects(
            [
                SessionUpdated(
                    chat_id=request.chat_id,
                    scope="metadata",
                    workspace_scope=decision.scope,
                )
            ],
            scope_change=(request.chat_id, decision.scope),
        )

    # --- helpers --------------------------------------------------------------

    def _admitted(self) -> bool:
        return allow_list_admits(self.allow_from, self.client_id)

    def _subscribe(self, chat_id: str, *, hydrate_always: bool) -> list[ServerEvent]:
        new = not self.hub.is_subscribed(self.key, chat_id)
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
    def _error(detail: str, request: ChatMessage) -> Error:
        return Error(detail=detail, turn_id=request.turn_id)

    @staticmethod
    def _scope_error(
        decision: ScopeRejected, chat_id: str | None, request: ChatMessage | None = None
    ) -> Error:
        return Error(
            detail=WORKSPACE_SCOPE_REJECTED,
            reason=decision.reason,
            chat_id=chat_id,
            turn_id=None if request is None else request.turn_id,
        )

    def _inbound(
        self,
        chat_id: str,
        content: str,
        media: list[str],
        meta: dict[str, Any],
        turn_id: str | None,
    ) -> InboundMessage:
        return InboundMessage(
            chat_id=chat_id,
            client_id=self.client_id,
            content=content,
            media=tuple(media),
            metadata=meta,
            received_at=self.wall_clock(),
            turn_id=turn_id,
        )
