"""The session store interface: what every backend (SQLite, memory, Redis) offers.

The store is the chat log's source of truth. Everything above it (the
dispatcher, the delivery cursors, resume, the HTTP API) talks to this
``typing.Protocol`` only, and one contract test suite
(``tests/test_store_contract.py``) runs against every implementation, so a
backend joins by passing it.

Writes come as ordered batches of operations (:meth:`SessionStore.write`):
a batch is applied in order and is durable when ``write`` returns (what
"durable" means per backend is in docs/operations.md). The group committer
(:mod:`trio_channel.store.committer`) gathers the batches; backends never see
a single write on its own unless nothing else was queued.

An appended event carries a caller-chosen ``event_id``: appending the same id
again (a retry after a timeout whose outcome was unknown) returns the first
``seq`` and stores nothing new. The event's ``payload`` is its JSON without
``seq``; the store assigns the chat's next ``seq`` and keeps (and returns)
the payload with ``"seq":N`` added, exactly the bytes clients receive.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import msgspec
import trio

__all__ = [
    "AppendEvent",
    "AppendUserMessage",
    "Appended",
    "Broadcast",
    "ChatMeta",
    "DeleteChat",
    "EventPage",
    "Fenced",
    "SessionStore",
    "StoreError",
    "StoreOp",
    "StoreResult",
    "StoredUserMessage",
    "UpdateChat",
    "UserMessage",
    "new_epoch",
    "with_seq",
]

#: Titles are cut to this many characters (PROTOCOL 6).
TITLE_CHARS = 80
#: Previews likewise.
PREVIEW_CHARS = 160


def new_epoch() -> str:
    """An opaque, unguessable epoch (PROTOCOL 5)."""
    return secrets.token_hex(8)


def with_seq(payload: bytes, seq: int) -> bytes:
    """An event's JSON object with ``"seq":N`` added as its last member."""
    return b'%s,"seq":%d}' % (payload[:-1], seq)


class StoreError(Exception):
    """A write or read the store could not do.

    ``transient`` errors (a locked database, a dropped connection) are
    worth retrying at once; the others (disk full, read-only, corrupt) put
    the channel in the degraded state until a retry succeeds.
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@attrs.frozen
class ChatMeta:
    """What the store knows about one chat (not its log)."""

    chat_id: str
    #: Changes whenever the chat's log starts again (PROTOCOL 5).
    epoch: str
    created_at: float
    updated_at: float
    #: The oldest ``seq`` still kept (``last_seq + 1`` when none is).
    first_seq: int = 1
    #: The newest ``seq`` (0: no event yet).
    last_seq: int = 0
    workspace_scope: Any = None
    goal_state: dict[str, Any] | None = None
    title: str | None = None
    preview: str | None = None
    #: Unix seconds while a turn runs, as every node knows it (shared stores
    #: only; a single daemon knows it from its own agent).
    run_started_at: float | None = None


@attrs.frozen
class EventPage:
    """Stored events of one chat after some ``seq``, in order."""

    first_seq: int
    #: ``(seq, payload)``; the payload is the event's JSON as clients get it.
    events: list[tuple[int, bytes]]
    #: The chat's newest ``seq`` when the page was read.
    last_seq: int = 0
    epoch: str | None = None


@attrs.frozen
class UserMessage:
    """A user's message as the history keeps it (no ``seq``: not replayed)."""

    chat_id: str
    #: The chat's ``last_seq`` when it was stored: it sits after that event.
    after_seq: int
    #: Unix seconds.
    at: float
    client_id: str
    content: str
    media: tuple[str, ...] = ()
    turn_id: str | None = None


# --- operations ----------------------------------------------------------


@attrs.frozen
class AppendEvent:
    chat_id: str
    event_id: str
    #: The event's JSON without ``seq``.
    payload: bytes
    #: Unix seconds: the chat's ``updated_at``.
    at: float
    #: The text of a ``message`` event: the chat's preview until it has one.
    text: str | None = None
    #: The fencing token of the agent's partition lease (several daemons):
    #: a write from a node that lost the lease is refused (:class:`Fenced`).
    fence: str | None = None
    #: The inbound entry whose turn this event ends, acknowledged with it.
    ack: str | None = None
    #: Set on a ``delta`` or ``reasoning_delta``: its stream (kind and id).
    #: A committer with ``joins`` may join queued events of one stream.
    stream: str | None = None


@attrs.frozen
class AppendUserMessage:
    chat_id: str
    at: float
    client_id: str
    content: str
    media: tuple[str, ...] = ()
    turn_id: str | None = None
    #: Makes a retried append idempotent where a batch is not atomic (Redis).
    message_id: str | None = None
    #: The message for the agents, encoded, where the store carries it to
    #: them (:attr:`SessionStore.shared`); stored and handed over at once.
    inbound: bytes | None = None
    #: Its ``user_message`` for the other nodes' subscribers (shared
    #: stores): in the same write, ahead of the agent's answer.
    echo: bytes | None = None


@attrs.frozen
class UpdateChat:
    """Create a chat if it is new, and change what is given (UNSET: keep)."""

    chat_id: str
    at: float
    workspace_scope: Any = msgspec.UNSET
    goal_state: Any = msgspec.UNSET
    title: Any = msgspec.UNSET


@attrs.frozen
class DeleteChat:
    """Forget a chat's log and state; it comes back with a new epoch."""

    chat_id: str


@attrs.frozen
class Broadcast:
    """An event that is not in the log, for the subscribers of every node.

    Only a shared store (:attr:`SessionStore.shared`) does anything with it;
    ``running`` keeps a ``goal_status`` visible to every node's hydration
    and sessions list: ``(True, started_at)`` or ``(False, None)``.
    """

    chat_id: str
    payload: bytes
    kind: str
    running: tuple[bool, float | None] | None = None


@attrs.frozen
class MarkTurnStarted:
    """Several daemons: this node's agent got an inbox entry's message.

    Written in order with the turn's output (the committer's queue), so a
    turn that showed anything at all is marked before it did: a node that
    takes the partition over closes it as interrupted before running it
    again (PROTOCOL 4). Only a shared store does anything with it.
    """

    chat_id: str
    partition: int
    entry: str
    attempt: int


StoreOp = (
    AppendEvent
    | AppendUserMessage
    | UpdateChat
    | DeleteChat
    | Broadcast
    | MarkTurnStarted
)


@attrs.frozen
class Appended:
    seq: int
    epoch: str
    #: The stored payload, with ``seq``.
    payload: bytes


@attrs.frozen
class StoredUserMessage:
    after_seq: int
    epoch: str


@attrs.frozen
class Fenced:
    """An agent's append refused: its node no longer owns the partition."""

    reason: str


#: One result per operation: :class:`Appended` (or :class:`Fenced`),
#: :class:`StoredUserMessage`, the chat's :class:`ChatMeta` for
#: :class:`UpdateChat`, for :class:`DeleteChat` whether there was a chat to
#: delete, and for :class:`Broadcast` None.
StoreResult = Appended | Fenced | StoredUserMessage | ChatMeta | bool | None


class SessionStore(Protocol):
    """A chat log backend. See the module docstring for the contract."""

    #: For logs and the start-up line: ``sqlite /path``, ``memory``, ...
    description: str
    #: Several daemons share it: events reach other nodes through the store
    #: and user messages reach the agents through it (Redis).
    shared: bool

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Open the store, report readiness, then serve until cancelled.

        Raises :class:`StoreError` (before ``started``) when the store cannot
        be opened at all; the daemon then names it and exits 2.
        """
        ...

    async def write(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        """Apply ``ops`` in order, all or nothing; durable on return.

        Raises :class:`StoreError`; then none of the batch is applied, and
        retrying the same batch is safe (event ids make appends idempotent).
        """
        ...

    def write_now(self, ops: Sequence[StoreOp]) -> list[StoreResult] | None:
        """Apply ``ops`` like :meth:`write`, synchronously, if that is cheap.

        A store whose write would block the event loop for long (network,
        an fsync, a lock held elsewhere, a large batch) returns None without
        applying anything, and the caller awaits :meth:`write` instead. Why
        it exists: a thread hop costs more than a small SQLite commit (see
        docs/benchmarks.md). Raises :class:`StoreError` like :meth:`write`.
        """
        ...

    async def probe(self) -> None:
        """A small real write, to tell when a failing store takes writes again.

        Raises :class:`StoreError` like :meth:`write`.
        """
        ...

    async def read_events(self, chat_id: str, after_seq: int, limit: int) -> EventPage:
        """Up to ``limit`` stored events with ``seq > after_seq``."""
        ...

    async def chat(self, chat_id: str) -> ChatMeta | None:
        """The chat's metadata, or None when it has none (never created or deleted)."""
        ...

    async def chats(self, limit: int) -> list[ChatMeta]:
        """Up to ``limit`` chats, most recently updated first."""
        ...

    async def user_messages(
        self, chat_id: str, since_seq: int = 0, limit: int = 10_000
    ) -> list[UserMessage]:
        """Up to ``limit`` user messages, ``after_seq >= since_seq``, oldest first."""
        ...
