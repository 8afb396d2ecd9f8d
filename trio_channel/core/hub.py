"""Chat ↔ connection bookkeeping (pure: no trio, no sockets).

:class:`ChatHub` knows which connections are subscribed to which chats, the
per-chat state that hydration needs (latest goal state, running turn, scope),
the current runtime model, and the open stream buffers keyed by
``(chat_id, stream_id)``. The dispatcher asks it *who* gets an event; moving
bytes is the connection's job.

Subscribers are opaque hashable objects (the server uses its per-connection
outbox). Iteration order is subscription order, so tests are deterministic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import attrs
import msgspec

from .events import (
    AgentEvent,
    Delta,
    GoalState,
    GoalStatus,
    RuntimeModelUpdated,
    SessionUpdated,
    StreamEnd,
    TurnEnd,
)

S = TypeVar("S", bound=Hashable)

#: Chat states kept in memory; beyond it the oldest chats with no subscriber
#: and no running turn are forgotten (the session store keeps history).
MAX_CHATS = 100_000
#: Open streams (started, not yet ended) kept at once; the oldest is dropped.
MAX_OPEN_STREAMS = 10_000
#: Characters kept per open stream; beyond it the buffer stops growing.
MAX_STREAM_CHARS = 16 * 1024 * 1024

_key_encoder = msgspec.json.Encoder()


@attrs.define(eq=False)
class Cursor:
    """Where one connection stands in one chat's event log.

    A live cursor admits each persisted event at or after ``next_seq`` and
    moves past it, so an event already sent (say, by a replay) is never sent
    twice. A cursor that is not live is catching up from the store; the
    dispatcher skips it until the replay hands over (see ``connection.py``).
    """

    live: bool = True
    next_seq: int = 0

    def admit(self, seq: int) -> bool:
        if not self.live or seq < self.next_seq:
            return False
        self.next_seq = seq + 1
        return True


@attrs.frozen
class ChatSeed:
    """Persisted chat state the hub loads when it first sees a chat."""

    workspace_scope: Any = None
    goal_state: dict[str, Any] | None = None


@attrs.define
class ChatState(Generic[S]):
    subscribers: dict[S, Cursor] = attrs.field(factory=dict)
    workspace_scope: Any = None
    goal_state: dict[str, Any] | None = None
    #: Unix seconds when the running turn started; None when idle.
    running_since: float | None = None

    def idle(self) -> bool:
        return (
            not self.subscribers
            and self.running_since is None
            and self.goal_state is None
            and self.workspace_scope is None
        )


@attrs.define
class StreamBuffers:
    """Assembled text of open ``delta`` streams, keyed by (chat_id, stream_id).

    ``stream_id`` may be any JSON value, so the key uses its canonical JSON
    encoding. Bounded in count and size: a stream that never ends cannot grow
    memory without limit.
    """

    max_streams: int = MAX_OPEN_STREAMS
    max_chars: int = MAX_STREAM_CHARS
    _open: OrderedDict[tuple[str, bytes], list[str]] = attrs.field(factory=OrderedDict)
    _sizes: dict[tuple[str, bytes], int] = attrs.field(factory=dict)

    @staticmethod
    def key(chat_id: str, stream_id: Any) -> tuple[str, bytes]:
        return (chat_id, _key_encoder.encode(stream_id))

    def append(self, chat_id: str, stream_id: Any, text: str) -> None:
        key = self.key(chat_id, stream_id)
        parts = self._open.get(key)
        if parts is None:
            if len(self._open) >= self.max_streams:
                old, _ = self._open.popitem(last=False)
                del self._sizes[old]
            parts = self._open[key] = []
            self._sizes[key] = 0
        size = self._sizes[key]
        if size + len(text) <= self.max_chars:
            parts.append(text)
            self._sizes[key] = size + len(text)
        else:
            # Past the bound the buffer stops growing for good: appending a
            # later, smaller chunk would leave a hole in the assembled text.
            self._sizes[key] = self.max_chars + 1

    def finish(self, chat_id: str, stream_id: Any) -> str:
        """Close a stream and return its whole text ("" if never started)."""
        key = self.key(chat_id, stream_id)
        self._sizes.pop(key, None)
        return "".join(self._open.pop(key, ()))

    def __len__(self) -> int:
        return len(self._open)


@attrs.define
class ChatHub(Generic[S]):
    """Subscriptions and per-chat state. One per server."""

    max_chats: int = MAX_CHATS
    chats: dict[str, ChatState[S]] = attrs.field(factory=dict)
    #: Every open connection with the chats it is subscribed to.
    connections: dict[S, set[str]] = attrs.field(factory=dict)
    streams: StreamBuffers = attrs.field(factory=StreamBuffers)
    model_name: str | None = None
    #: Loads persisted state of a chat the hub has not seen (or forgot).
    load_chat: Callable[[str], ChatSeed | None] | None = None
    #: Told when a chat's scope or goal state changes, to persist it.
    on_change: Callable[[str, ChatState[S]], None] | None = None

    # --- connections and subscriptions -------------------------------

    def register(self, sub: S) -> None:
        self.connections.setdefault(sub, set())

    def unregister(self, sub: S) -> None:
        """Forget a connection and every subscription it had."""
        for chat_id in self.connections.pop(sub, ()):
            chat = self.chats.get(chat_id)
            if chat is not None:
                chat.subscribers.pop(sub, None)
                self._maybe_forget(chat_id, chat)

    def subscribe(
        self, sub: S, chat_id: str, *, replay_after: int | None = None
    ) -> Cursor:
        """Subscribe ``sub``; with ``replay_after`` its cursor starts catching up."""
        chats = self.connections.get(sub)
        if chats is None:
            raise KeyError("subscribe() before register()")
        chats.add(chat_id)
        subscribers = self.chat(chat_id).subscribers
        cursor = subscribers.get(sub)
        if cursor is None:
            cursor = subscribers[sub] = Cursor()
        if replay_after is not None:
            cursor.live, cursor.next_seq = False, replay_after + 1
        return cursor

    def subscribers(self, chat_id: str) -> Iterable[S]:
        chat = self.chats.get(chat_id)
        return chat.subscribers.keys() if chat is not None else ()

    def cursors(self, chat_id: str) -> Iterable[tuple[S, Cursor]]:
        chat = self.chats.get(chat_id)
        return chat.subscribers.items() if chat is not None else ()

    def chat(self, chat_id: str) -> ChatState[S]:
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = self.chats[chat_id] = ChatState()
            seed = self.load_chat(chat_id) if self.load_chat is not None else None
            if seed is not None:
                chat.workspace_scope, chat.goal_state = (
                    seed.workspace_scope,
                    seed.goal_state,
                )
            self._evict_idle(keep=chat_id)
        return chat

    def set_scope(self, chat_id: str, scope: Any) -> None:
        chat = self.chat(chat_id)
        chat.workspace_scope = scope
        if self.on_change is not None:
            self.on_change(chat_id, chat)

    def set_goal_state(self, chat_id: str, goal_state: dict[str, Any] | None) -> None:
        chat = self.chat(chat_id)
        chat.goal_state = goal_state or None
        if self.on_change is not None:
            self.on_change(chat_id, chat)

    def is_running(self, chat_id: str) -> bool:
        chat = self.chats.get(chat_id)
        return chat is not None and chat.running_since is not None

    # --- events from the agent ------------------------------------------

    def targets(self, event: AgentEvent) -> Iterable[S]:
        """Who receives ``event``; also updates state the event carries."""
        self.observe(event)
        if isinstance(event, RuntimeModelUpdated):
            return self.connections.keys()
        return self.subscribers(event.chat_id)

    def observe(self, event: AgentEvent) -> None:
        """Update the state an agent event carries (model, turn, goal, scope)."""
        if isinstance(event, RuntimeModelUpdated):
            self.model_name = event.model_name
            return
        chat_id = event.chat_id
        if isinstance(event, Delta):
            self.streams.append(chat_id, event.stream_id, event.text)
        elif isinstance(event, GoalStatus):
            state = self.chat(chat_id)
            state.running_since = (
                (event.started_at or 0.0) if event.status == "running" else None
            )
        elif isinstance(event, GoalState | TurnEnd) and event.goal_state is not None:
            # turn_end may carry the goal state the turn ended with.
            self.set_goal_state(chat_id, event.goal_state)
        elif (
            isinstance(event, SessionUpdated)
            and event.workspace_scope is not msgspec.UNSET
        ):
            self.set_scope(chat_id, event.workspace_scope)

    def finish_stream(self, event: StreamEnd) -> str:
        return self.streams.finish(event.chat_id, event.stream_id)

    def hydration(self, chat_id: str) -> list[GoalState | GoalStatus]:
        """What a newly subscribed connection needs to restore its status strip."""
        chat = self.chats.get(chat_id)
        if chat is None:
            return []
        out: list[GoalState | GoalStatus] = []
        if chat.goal_state:
            out.append(GoalState(chat_id=chat_id, goal_state=chat.goal_state))
        if chat.running_since is not None:
            out.append(
                GoalStatus(
                    chat_id=chat_id, status="running", started_at=chat.running_since
                )
            )
        return out

    # --- bounds ------------------------------------------------------------

    def _maybe_forget(self, chat_id: str, chat: ChatState[S]) -> None:
        if chat.idle():
            del self.chats[chat_id]

    def _evict_idle(self, keep: str) -> None:
        if len(self.chats) <= self.max_chats:
            return
        # Oldest first; chats with subscribers or a running turn are kept, and
        # so is the chat being created. Scope and goal state of an evicted
        # chat come back from the store through ``load_chat``.
        for chat_id in list(self.chats):
            if len(self.chats) <= self.max_chats:
                break
            chat = self.chats[chat_id]
            if chat_id != keep and not chat.subscribers and chat.running_since is None:
                del self.chats[chat_id]
