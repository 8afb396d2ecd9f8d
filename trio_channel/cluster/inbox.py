"""The agents' inboxes: each partition's accepted user messages, in order.

A user's message is stored, with an entry in its partition's inbox stream,
by whichever node the client is connected to. The node that owns the
partition (:mod:`.leases`) reads the inbox with a consumer group and hands
each message to its own agent; the entry is acknowledged, in the same write
as the turn's ``turn_end`` (:class:`~.turnbook.TurnBook`), so a message whose
turn never ended is still pending when its node dies.

The new owner of a partition reads the pending entries first, in order.
The owner marks each entry it hands over as started (the ``started`` hash
names its attempt) through the committer, in order with the turn's output:
a turn that showed anything was marked first. One whose turn had started gets a
``turn_end`` with ``interrupted: true`` appended first (PROTOCOL 4), then
runs again as the next attempt: clients keep the cut reply as interrupted
and never see two attempts spliced into one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import attrs
import msgspec
import trio

from ..core.events import InboundMessage, TurnEnd, encode_event
from ..store import redis_scripts as lua
from ..store._coredis import Call, RedisLink, Script
from ..store.base import AppendEvent, MarkTurnStarted, StoreError, StoreResult
from ..store.committer import GroupCommitter
from ..store.redis import AGENTS_GROUP
from ..store.redis_layout import Layout
from .turnbook import Turn, TurnBook

__all__ = ["PartitionInbox"]

log = logging.getLogger("trio_channel.cluster")

#: The one consumer of each group: only the partition's owner reads, so the
#: pending entries of a dead owner are simply the group's pending entries.
CONSUMER: Final = "owner"
READ_COUNT: Final = 64
BLOCK_MS: Final = 2000
RETRY_S: Final = 0.5
#: The longest a message waits for its ``user_message`` to come through
#: this node's feed (a broken feed catches up from the logs anyway).
ECHO_WAIT_S: Final = 0.5

_STARTED = Script("started", "return redis.call('HGET', KEYS[1], ARGV[1])")
_inbound = msgspec.json.Decoder(InboundMessage)


@attrs.define(eq=False)
class PartitionInbox:
    link: Callable[[], RedisLink]
    layout: Layout
    book: TurnBook
    inbound: trio.MemorySendChannel[InboundMessage]
    committer: GroupCommitter
    wall_clock: Callable[[], float]
    #: Fans a stored event out on this node (the dispatcher's own step).
    published: Callable[[str, StoreResult | None], None]
    #: This node's id, and its feed's :meth:`~.feed.PartitionFeed.reached`:
    #: a message from another node is answered once its ``user_message``
    #: is here, so no subscriber sees the answer first.
    node: str = ""
    reached: Callable[[int, str], Awaitable[None]] | None = None
    _readers: dict[int, trio.CancelScope] = attrs.field(factory=dict, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def gained(self, partition: int, fence: int) -> None:
        """This node owns ``partition`` now (fencing token ``fence``)."""
        assert self._nursery is not None
        self.lost(partition)
        scope = self._readers[partition] = trio.CancelScope()
        self._nursery.start_soon(self._read, partition, str(fence), scope)

    def lost(self, partition: int) -> None:
        scope = self._readers.pop(partition, None)
        if scope is not None:
            scope.cancel()

    async def _read(self, partition: int, fence: str, scope: trio.CancelScope) -> None:
        stream = self.layout.inbox(partition)
        with scope:
            while True:
                try:
                    await self.link().ensure_group(stream, AGENTS_GROUP)
                    await self._pending(partition, fence)
                    await self._new(partition, fence)
                except StoreError as exc:
                    log.warning("inbox of partition %d: %s", partition, exc)
                    await trio.sleep(RETRY_S)

    async def _pending(self, partition: int, fence: str) -> None:
        """A former owner's unfinished turns, in order."""
        stream = self.layout.inbox(partition)
        while True:
            answer = await self.link().xreadgroup(
                AGENTS_GROUP, CONSUMER, {stream: "0"}, count=READ_COUNT, block_ms=None
            )
            entries = [e for _, rows in answer for e in rows if e[1]]
            if not entries:
                return
            for entry_id, fields in entries:
                started = await self.link().run(
                    Call(_STARTED, [self.layout.started(partition)], [entry_id])
                )
                attempt = int(started) if started else 0
                message = _decode(fields)
                if attempt and message is not None:
                    self._interrupt(message, entry_id, attempt, fence)
                await self._hand(partition, fence, entry_id, attempt + 1, message)
            if len(entries) < READ_COUNT:
                return

    async def _new(self, partition: int, fence: str) -> None:
        stream = self.layout.inbox(partition)
        while True:
            answer = await self.link().xreadgroup(
                AGENTS_GROUP,
                CONSUMER,
                {stream: ">"},
                count=READ_COUNT,
                block_ms=BLOCK_MS,
            )
            for _, rows in answer:
                for entry_id, fields in rows:
                    await self._echoed(partition, fields)
                    await self._hand(partition, fence, entry_id, 1, _decode(fields))

    async def _echoed(self, partition: int, fields: dict[str, bytes]) -> None:
        """Wait (briefly) until the message's ``user_message`` is here."""
        echo = fields.get("f", b"").decode()
        if not echo or self.reached is None or fields.get("n") == self.node.encode():
            return  # none, or this node's own: its subscribers have it
        with trio.move_on_after(ECHO_WAIT_S):
            await self.reached(partition, echo)

    def _interrupt(
        self, message: InboundMessage, entry_id: str, attempt: int, fence: str
    ) -> None:
        """Close the cut turn before it runs again (PROTOCOL 4)."""
        end = TurnEnd(chat_id=message.chat_id, interrupted=True)
        self.committer.submit(
            AppendEvent(
                message.chat_id,
                f"{entry_id}:{attempt}:interrupted",
                encode_event(end),
                at=self.wall_clock(),
                fence=fence,
            ),
            partial(self.published, message.chat_id),
        )

    async def _hand(
        self,
        partition: int,
        fence: str,
        entry_id: str,
        attempt: int,
        message: InboundMessage | None,
    ) -> None:
        if message is None:
            log.error("dropping an unreadable inbox entry %s", entry_id)
            await self.link().run(
                Call(
                    Script("ack", lua.ACK_TURN),
                    [self.layout.inbox(partition), self.layout.started(partition)],
                    [AGENTS_GROUP, entry_id],
                )
            )
            return
        # Not awaited: the mark goes in order with the turn's output, in the
        # same pipeline when they queue together (a round trip less a turn).
        self.committer.submit(
            MarkTurnStarted(message.chat_id, partition, entry_id, attempt)
        )
        self.book.handed(message.chat_id, Turn(entry_id, attempt, partition, fence))
        await self.inbound.send(message)


def _decode(fields: dict[str, bytes]) -> InboundMessage | None:
    try:
        return _inbound.decode(fields.get("m", b""))
    except msgspec.DecodeError:
        return None
