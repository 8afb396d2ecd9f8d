"""Live delivery across nodes: ``XREAD BLOCK`` loops over the fan-out streams.

Every append (and every event that is not in the log) also lands in its
partition's fan-out stream. Each node reads all of them in one loop (16
keys in one call; SCALEOUT measured 0.4-0.5 ms median delivery) and hands
what other nodes wrote to its own subscribers through the hub, where the
cursor rule drops duplicates and turns gaps into catch-ups from the log.
What this node wrote itself it already fanned out when its commit returned.
On a Redis Cluster one call cannot span hash slots, so there is one loop
per partition, each on the shard that holds it.

When a loop breaks (Redis restarting, a network blip), nothing is lost:
once Redis answers again the loop fixes its new start (Redis's clock, the
shard's own on a Cluster) and only then sends the local cursors of its
partitions behind, to catch up from the chat logs: the logs hold everything
before that start, the feed everything after. No PubSub: it drops what is
published while a node reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import attrs
import msgspec
import trio

from ..core.agentcheck import AGENT_EVENT_TYPES
from ..core.events import AgentEvent
from ..core.hub import ChatHub, Subscriber
from ..store._coredis import Call, RedisLink, Script
from ..store.base import StoreError
from ..store.redis_layout import Layout, partition_of
from ..wire.frames import text_frame

__all__ = ["PartitionFeed"]

log = logging.getLogger("trio_channel.cluster")

READ_COUNT: Final = 512
BLOCK_MS: Final = 5000
RETRY_DELAYS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

_TAGS: Final = frozenset(str(t.__struct_config__.tag) for t in AGENT_EVENT_TYPES)
_agent_event = msgspec.json.Decoder(AgentEvent)
_TIME = Script("time", "return redis.call('TIME')")


@attrs.define(eq=False)
class PartitionFeed:
    link: Callable[[], RedisLink]
    layout: Layout
    node: str
    hub: ChatHub[Subscriber]
    #: Why the feed does not work now, or None (``/healthz``).
    degraded_reason: str | None = attrs.field(default=None, init=False)
    on_health: Callable[[str | None], None] | None = None
    #: A Redis Cluster: one loop per partition instead of one for all.
    cluster: bool = False
    #: The loops that fail now (by their first partition).
    _failing: set[int] = attrs.field(factory=set, init=False)
    #: Fan-out stream -> the last entry id this node has handled, as ints.
    _read: dict[str, tuple[int, int]] = attrs.field(factory=dict, init=False)
    #: Set (and replaced) whenever a loop has handled a read.
    _progress: trio.Event = attrs.field(factory=trio.Event, init=False)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        every = list(range(self.layout.partitions))
        groups = [[p] for p in every] if self.cluster else [every]
        async with trio.open_nursery() as nursery:
            for group in groups:
                nursery.start_soon(self._follow, group)
            task_status.started()

    async def reached(self, partition: int, entry_id: str) -> None:
        """Return once this node has handled ``partition``'s fan-out entry
        ``entry_id`` (or started reading after it, after a break).

        The inbox waits on it to answer a message only after its
        ``user_message`` reached this node's subscribers.
        """
        stream = self.layout.fan(partition)
        wanted = _entry(entry_id)
        while self._read.get(stream, (0, 0)) < wanted:
            await self._progress.wait()

    def _handled(self, last: dict[str, str]) -> None:
        for stream, entry_id in last.items():
            self._read[stream] = max(self._read.get(stream, (0, 0)), _entry(entry_id))
        self._progress.set()
        self._progress = trio.Event()

    async def _follow(self, partitions: list[int]) -> None:
        """Read the fan-out streams of ``partitions`` for good."""
        streams = [self.layout.fan(p) for p in partitions]
        loop = partitions[0]
        last: dict[str, str] = {}
        failures = 0
        resync = False
        while True:
            try:
                if not last:
                    # From now on, by Redis's clock (entry ids are its
                    # milliseconds): "$" would skip what arrives between two
                    # reads. The stream named routes the call to its shard.
                    now = await self.link().run(Call(_TIME, streams[:1], []))
                    since = f"{int(now[0]) * 1000 + int(now[1]) // 1000}-0"
                    last = dict.fromkeys(streams, since)
                    self._handled(last)
                    if resync:
                        # Only now, with the feed's new start fixed: the
                        # logs cover everything before it, the feed
                        # everything after. A catch-up that finished while
                        # Redis was still away would miss what was written
                        # in between.
                        resync = False
                        self._everyone_behind(partitions)
                answer = await self.link().xread(
                    last, count=READ_COUNT, block_ms=BLOCK_MS
                )
            except StoreError as exc:
                failures += 1
                self._degrade(loop, str(exc))
                # Entries written while we were away may be gone (or the
                # streams may have started again): catch up from the logs,
                # at once (what can be read now) and again once the feed
                # has a new start.
                last = {}
                resync = True
                self._everyone_behind(partitions)
                await trio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS)) - 1])
                continue
            if failures:
                failures = 0
                self._recover(loop)
            for stream, entries in answer:
                for entry_id, fields in entries:
                    last[stream] = entry_id
                    self.deliver(fields)
            if answer:
                self._handled(last)

    def deliver(self, fields: dict[str, bytes]) -> None:
        """Hand one fan-out entry of another node to local subscribers."""
        if fields.get("n", b"").decode() == self.node:
            return
        chat_id = fields.get("c", b"").decode()
        seq = fields.get("s", b"")
        payload = fields.get("e", b"")
        if seq:
            epoch = fields.get("ep", b"").decode() or None
            self.hub.publish(chat_id, int(seq), text_frame(payload), epoch)
            return
        kind = fields.get("k", b"").decode()
        if kind == "deleted":
            self.hub.forget_log(chat_id)
            return
        if kind in _TAGS:
            try:
                self.hub.observe(_agent_event.decode(payload))
            except msgspec.DecodeError:
                return
        self.hub.broadcast(chat_id, text_frame(payload))

    def _everyone_behind(self, partitions: list[int]) -> None:
        mine = set(partitions)
        count = self.layout.partitions
        for chat_id, chat in self.hub.chats.items():
            if len(mine) < count and partition_of(chat_id, count) not in mine:
                continue
            for sub, cursor in chat.subscribers.items():
                # Those already catching up too: a read that began before
                # the feed's new start must not be the one that ends it. And
                # what this node saw published is not all there is now.
                cursor.lost_track()
                sub.fell_behind(chat_id)

    def _degrade(self, loop: int, reason: str) -> None:
        if not self._failing:
            log.error("redis feed: %s; retrying", reason)
            if self.on_health is not None:
                self.on_health(reason)
        self._failing.add(loop)
        self.degraded_reason = f"redis feed: {reason}"

    def _recover(self, loop: int) -> None:
        self._failing.discard(loop)
        if not self._failing and self.degraded_reason is not None:
            log.warning("redis feed works again")
            self.degraded_reason = None
            if self.on_health is not None:
                self.on_health(None)


def _entry(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<n>``) as comparable ints."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)
