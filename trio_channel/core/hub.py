"""Chat ↔ connection bookkeeping and fan-out (pure: no trio, no sockets).

:class:`ChatHub` knows which connections are subscribed to which chats, where
each one stands in each chat's log (a :class:`~.delivery.Cursor`), the state
hydration needs (goal state, running turn, scope), the current runtime
model, and the open stream buffers keyed by ``(chat_id, stream_id)``.

Fan-out applies the cursor rule (:mod:`.delivery`) and hands the same
pre-framed bytes to every subscriber through the two methods of
:class:`Subscriber`; moving bytes is the connection's job. A subscriber whose
queue is full is not closed: its cursor falls behind and it catches up from
the store at its own pace.

Chat state is a cache of what the store keeps: a chat with no subscriber and
no running turn may be forgotten at any time (at most :data:`MAX_CHATS` are
kept) and is loaded again (:meth:`ChatHub.load`) when a connection needs it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

import attrs
import msgspec

from .delivery import Cursor, Offer, Resume
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

__all__ = ["MAX_CHATS", "ChatHub", "ChatState", "StreamBuffers", "Subscriber"]

#: Chat states kept in memory; beyond it the oldest chats with no subscriber
#: and no running turn are forgotten (the session store keeps them).
MAX_CHATS = 20_000
#: Open streams (started, not yet ended) kept at once; the oldest is dropped.
MAX_OPEN_STREAMS = 10_000
#: Characters kept per open stream; beyond it the buffer stops growing.
MAX_STREAM_CHARS = 16 * 1024 * 1024

_key_encoder = msgspec.json.Encoder()


class Subscriber(Hashable, Protocol):
    """What fan-out needs of a connection."""

    def deliver(self, frame: bytes) -> bool:
        """Queue one frame; False when the queue has no room (never blocks)."""
        ...

    def fell_behind(self, chat_id: str) -> None:
        """Start (or keep) catching ``chat_id`` up from the store."""
        ...

    def log_reset(self, chat_id: str, epoch: str) -> None:
        """The chat's log started again (a new epoch): tell the client
        (``history_reset``) and replay it from the start."""
        ...


S = TypeVar("S", bound=Subscriber)


@attrs.define
class ChatState(Generic[S]):
    subscribers: dict[S, Cursor] = attrs.field(factory=dict)
    workspace_scope: Any = None
    goal_state: dict[str, Any] | None = None
    #: Unix seconds when the running turn started; None when idle.
    running_since: float | None = None
    #: The newest ``seq`` offered to subscribers (all of it is stored).
    published_seq: int = 0
    #: Whether the store's state (scope, goal, seq) was merged in.
    loaded: bool = False
    #: A user's message went to the agent since the chat was last idle.
    turn_pending: bool = False
    #: The epoch of the log being published (None: not known yet).
    epoch: str | None = None


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
    """Subscriptions, per-chat state and fan-out. One per server."""

    max_chats: int = MAX_CHATS
    chats: dict[str, ChatState[S]] = attrs.field(factory=dict)
    #: Every open connection with the chats it is subscribed to.
    connections: dict[S, set[str]] = attrs.field(factory=dict)
    streams: StreamBuffers = attrs.field(factory=StreamBuffers)
    model_name: str | None = None

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

    def is_subscribed(self, sub: S, chat_id: str) -> bool:
        return chat_id in self.connections.get(sub, ())

    def subscribe(self, sub: S, chat_id: str, resume: Resume | None = None) -> Cursor:
        """Subscribe ``sub``: live from now on, or catching up per ``resume``.

        A subscriber that is already subscribed keeps its cursor unless a
        ``resume`` replays (the client asked to start over from a seq).
        """
        chats = self.connections.get(sub)
        if chats is None:
            raise KeyError("subscribe() before register()")
        chats.add(chat_id)
        chat = self.chat(chat_id)
        cursor = chat.subscribers.get(sub)
        if resume is not None and resume.replay:
            cursor = chat.subscribers[sub] = Cursor(resume.next_seq, live=False)
            sub.fell_behind(chat_id)
        elif cursor is None:
            cursor = chat.subscribers[sub] = Cursor(chat.published_seq + 1)
        return cursor

    def cursor(self, sub: S, chat_id: str) -> Cursor | None:
        chat = self.chats.get(chat_id)
        return None if chat is None else chat.subscribers.get(sub)

    def chat(self, chat_id: str) -> ChatState[S]:
        """The chat's state, created (not yet loaded) when unknown."""
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = self.chats[chat_id] = ChatState()
            self._evict_idle(keep=chat_id)
        return chat

    def is_loaded(self, chat_id: str) -> bool:
        chat = self.chats.get(chat_id)
        return chat is not None and chat.loaded

    def load(
        self,
        chat_id: str,
        *,
        workspace_scope: Any,
        goal_state: dict[str, Any] | None,
        last_seq: int,
        epoch: str | None = None,
        running_since: float | None = None,
    ) -> ChatState[S]:
        """Merge what the store keeps of a chat into its state (once)."""
        chat = self.chat(chat_id)
        chat.published_seq = max(chat.published_seq, last_seq)
        if chat.epoch is None:
            chat.epoch = epoch
        if not chat.loaded:
            chat.loaded = True
            if chat.workspace_scope is None:
                chat.workspace_scope = workspace_scope
            if chat.goal_state is None:
                chat.goal_state = goal_state or None
            if chat.running_since is None:
                chat.running_since = running_since
        return chat

    def forget_log(self, chat_id: str) -> None:
        """The chat was deleted: its next log starts at seq 1, a new epoch."""
        chat = self.chats.get(chat_id)
        if chat is None:
            return
        chat.published_seq = 0
        chat.epoch = None
        chat.goal_state = chat.workspace_scope = None
        for cursor in chat.subscribers.values():
            cursor.next_seq, cursor.live = 1, True

    def is_running(self, chat_id: str) -> bool:
        chat = self.chats.get(chat_id)
        return chat is not None and chat.running_since is not None

    # --- fan-out -----------------------------------------------------------

    def publish(
        self, chat_id: str, seq: int, frame: bytes, epoch: str | None = None
    ) -> int:
        """Offer a stored event to every subscriber; return how many got it.

        A chat with no state here has no subscriber: nothing to do. (A
        connection about to subscribe creates the state before it reads the
        store, so an event stored meanwhile still counts in ``published_seq``.)
        An event of another ``epoch`` than the one published so far means
        the log started again (the store lost it, or it expired): every
        subscriber is told and replays the new log from its start.
        """
        chat = self.chats.get(chat_id)
        if chat is None:
            return 0
        if epoch is not None and epoch != chat.epoch:
            if chat.epoch is not None:
                self._reset(chat_id, chat, epoch)
            chat.epoch = epoch
        if seq > chat.published_seq:
            chat.published_seq = seq
        count = 0
        for sub, cursor in chat.subscribers.items():
            verdict = cursor.offer(seq)
            if verdict is Offer.SEND:
                if sub.deliver(frame):
                    count += 1
                    continue
                cursor.next_seq = seq
                cursor.fall_behind()
                sub.fell_behind(chat_id)
            elif verdict is Offer.CATCH_UP:
                sub.fell_behind(chat_id)
        return count

    def _reset(self, chat_id: str, chat: ChatState[S], epoch: str) -> None:
        chat.published_seq = 0
        for sub in chat.subscribers:
            chat.subscribers[sub] = Cursor(1, live=False)
            sub.log_reset(chat_id, epoch)
            sub.fell_behind(chat_id)

    def broadcast(self, chat_id: str, frame: bytes, *, skip: S | None = None) -> int:
        """A frame that is not in the log, to the chat's live subscribers.

        A subscriber with no room falls behind: the catch-up ends with
        hydration, which restores what it missed of this kind.
        """
        chat = self.chats.get(chat_id)
        if chat is None:
            return 0
        count = 0
        for sub, cursor in chat.subscribers.items():
            if sub is skip or not cursor.live:
                continue
            if sub.deliver(frame):
                count += 1
            else:
                cursor.fall_behind()
                sub.fell_behind(chat_id)
        return count

    def broadcast_all(self, frame: bytes) -> int:
        """A frame for every open connection (``runtime_model_updated``)."""
        return sum(1 for sub in self.connections if sub.deliver(frame))

    # --- events from the agent ------------------------------------------

    def observe(self, event: AgentEvent) -> None:
        """Update the state an agent event carries (model, turn, goal, scope)."""
        if isinstance(event, RuntimeModelUpdated):
            self.model_name = event.model_name
            return
        chat_id = event.chat_id
        if isinstance(event, Delta):
            self.streams.append(chat_id, event.stream_id, event.text)
        elif isinstance(event, GoalStatus):
            if event.status == "running":
                self.chat(chat_id).running_since = event.started_at or 0.0
            elif (state := self.chats.get(chat_id)) is not None:
                state.running_since = None
                state.turn_pending = False
                self._maybe_forget(chat_id, state)
        elif isinstance(event, GoalState | TurnEnd) and event.goal_state is not None:
            # turn_end may carry the goal state the turn ended with.
            self.chat(chat_id).goal_state = event.goal_state or None
        elif (
            isinstance(event, SessionUpdated)
            and event.workspace_scope is not msgspec.UNSET
        ):
            self.chat(chat_id).workspace_scope = event.workspace_scope

    def finish_stream(self, event: StreamEnd) -> str:
        return self.streams.finish(event.chat_id, event.stream_id)

    def hydration(
        self, chat_id: str, *, after_catch_up: bool = False, with_scope: bool = False
    ) -> list[GoalState | GoalStatus | SessionUpdated]:
        """What a subscriber needs to restore its status strip (PROTOCOL 3.4).

        After a catch-up the status is sent even when idle (the client may
        have missed the ``idle``), and ``with_scope`` adds the chat's
        ``session_updated``, which is not in the log either.
        """
        chat = self.chats.get(chat_id)
        out: list[GoalState | GoalStatus | SessionUpdated] = []
        if chat is None:
            return out
        if with_scope:
            out.append(
                SessionUpdated(
                    chat_id=chat_id,
                    scope="metadata",
                    workspace_scope=chat.workspace_scope,
                )
            )
        if chat.goal_state:
            out.append(GoalState(chat_id=chat_id, goal_state=chat.goal_state))
        if chat.running_since is not None:
            out.append(
                GoalStatus(
                    chat_id=chat_id, status="running", started_at=chat.running_since
                )
            )
        elif after_catch_up:
            out.append(GoalStatus(chat_id=chat_id, status="idle"))
        return out

    def subscribers(self, chat_id: str) -> Iterable[S]:
        chat = self.chats.get(chat_id)
        return chat.subscribers.keys() if chat is not None else ()

    # --- bounds ------------------------------------------------------------

    def _maybe_forget(self, chat_id: str, chat: ChatState[S]) -> None:
        if not chat.subscribers and chat.running_since is None:
            del self.chats[chat_id]

    def _evict_idle(self, keep: str) -> None:
        if len(self.chats) <= self.max_chats:
            return
        # Oldest first; chats with subscribers or a running turn are kept, and
        # so is the chat being created. The store has the rest.
        for chat_id in list(self.chats):
            if len(self.chats) <= self.max_chats:
                break
            chat = self.chats[chat_id]
            if chat_id != keep and not chat.subscribers and chat.running_since is None:
                del self.chats[chat_id]
