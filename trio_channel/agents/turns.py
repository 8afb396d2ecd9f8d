"""Per-chat turns: each chat's turns in order, chats concurrently, bounded.

An agent that answers every message in a task of its own answers ``second``
before ``sleep:1 first`` and says ``idle`` while a turn still runs; one that
answers in its loop makes every chat wait for the slowest. :class:`ChatTurns`
does what clients expect instead:

- a chat's messages are answered one after the other, in the order they came;
- different chats are answered at the same time, at most ``max_concurrent``
  of them (past that, :meth:`ChatTurns.submit` waits: back-pressure on the
  server, which stops reading client sockets);
- at most ``max_queued`` messages wait behind running turns, in all chats;
- the chat's state is reported around its turns: ``goal_status running``
  (with ``started_at``) before the first, a ``turn_end`` with ``latency_ms``
  after each, ``goal_status idle`` only after the last queued one.

The turn function sends only the answer (``Message``, or ``Delta``s and a
``StreamEnd``...) and may return a :class:`TurnEnd` to send instead of the
plain one (with a ``goal_state``, say). If it raises, the error is logged and
the turn still ends, so the chat never stays ``running``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import msgspec
import trio

from ..core.events import AgentEvent, GoalStatus, InboundMessage, TurnEnd

__all__ = ["ChatTurns", "TurnFunction", "run_turns"]

log = logging.getLogger("trio_channel.agents")

TurnFunction = Callable[
    [InboundMessage, trio.MemorySendChannel[AgentEvent]], Awaitable[TurnEnd | None]
]

DEFAULT_MAX_CONCURRENT = 64
DEFAULT_MAX_QUEUED = 1024

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


async def emit(outbound: trio.MemorySendChannel[AgentEvent], event: AgentEvent) -> None:
    """Send without a scheduler pass when there is room (the common case)."""
    try:
        outbound.send_nowait(event)
    except trio.WouldBlock:
        await outbound.send(event)


@attrs.define(eq=False)
class ChatTurns:
    """Runs turns per chat in order; see the module doc.

    Turns run in tasks of *nursery*; :meth:`submit` is called from the
    agent's receive loop.
    """

    outbound: trio.MemorySendChannel[AgentEvent]
    turn: TurnFunction
    nursery: trio.Nursery
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    max_queued: int = DEFAULT_MAX_QUEUED
    #: chat_id -> messages waiting behind its running turn.
    _queues: dict[str, deque[InboundMessage]] = attrs.field(factory=dict, init=False)
    _slots: trio.Semaphore = attrs.field(init=False)
    _room: trio.Semaphore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_queued < 1:
            raise ValueError("max_concurrent and max_queued must be at least 1")
        self._slots = trio.Semaphore(self.max_concurrent)
        self._room = trio.Semaphore(self.max_queued)

    def busy(self, chat_id: str) -> bool:
        """True while a turn of *chat_id* runs or waits."""
        return chat_id in self._queues

    @property
    def running(self) -> int:
        return len(self._queues)

    async def submit(self, message: InboundMessage, *, inline: bool = False) -> None:
        """Queue *message* behind its chat's turns, or start its chat.

        Waits while ``max_concurrent`` chats are busy (for a new chat) or
        ``max_queued`` messages wait (for a busy one). ``inline=True`` runs
        the turn right here when its chat is idle, without a task: for turns
        that never wait (an agent's loop then stays cheap per message).
        """
        chat_id = message.chat_id
        queue = self._queues.get(chat_id)
        if queue is not None:
            await self._room.acquire()
            queue.append(message)
            return
        if inline:
            await self._slots.acquire()
            self._queues[chat_id] = deque()
            await self._run_chat(message)
            return
        await self._slots.acquire()
        self._queues[chat_id] = deque()
        self.nursery.start_soon(self._run_chat, message)

    async def _run_chat(self, first: InboundMessage) -> None:
        chat_id = first.chat_id
        queue = self._queues[chat_id]
        message = first
        try:
            while True:
                await emit(
                    self.outbound,
                    GoalStatus(
                        chat_id=chat_id, status="running", started_at=time.time()
                    ),
                )
                while True:
                    await self._one_turn(message)
                    if not queue:
                        break
                    message = queue.popleft()
                    self._room.release()
                # Still registered while "idle" is sent: a message that comes
                # meanwhile queues up and starts the next busy spell here.
                await emit(self.outbound, GoalStatus(chat_id=chat_id, status="idle"))
                if not queue:
                    return
                message = queue.popleft()
                self._room.release()
        except _GONE:
            return  # the server is gone; nobody is left to answer
        finally:
            for _ in queue:
                self._room.release()
            del self._queues[chat_id]
            self._slots.release()

    async def _one_turn(self, message: InboundMessage) -> None:
        started = trio.current_time()
        end: TurnEnd | None = None
        try:
            end = await self.turn(message, self.outbound)
        except _GONE:
            raise
        except Exception:
            log.exception("a turn of chat %s failed", message.chat_id)
        latency_ms = round((trio.current_time() - started) * 1000)
        if end is None:
            end = TurnEnd(chat_id=message.chat_id, latency_ms=latency_ms)
        elif end.latency_ms is None:
            end = msgspec.structs.replace(end, latency_ms=latency_ms)
        await emit(self.outbound, end)


async def run_turns(
    inbound: trio.MemoryReceiveChannel[InboundMessage],
    outbound: trio.MemorySendChannel[AgentEvent],
    turn: TurnFunction,
    *,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_queued: int = DEFAULT_MAX_QUEUED,
    inline: Callable[[InboundMessage], bool] | None = None,
) -> None:
    """A whole agent: answer every inbound message with *turn*, per chat in
    order, until the server closes the bus.

    ``inline(message)`` true lets an idle chat's turn run without a task of
    its own (see :meth:`ChatTurns.submit`).
    """
    async with inbound, outbound, trio.open_nursery() as nursery:
        turns = ChatTurns(
            outbound,
            turn,
            nursery,
            max_concurrent=max_concurrent,
            max_queued=max_queued,
        )
        async for message in inbound:
            try:
                await turns.submit(message, inline=bool(inline and inline(message)))
            except _GONE:
                return
