"""One daemon among several: feed, leases, inboxes and tokens, composed.

:class:`ClusterNode` is what a :class:`~trio_channel.Channel` runs beside
its own tasks when its store is shared (``--session-store redis://...``):

- the :class:`~.feed.PartitionFeed` brings other nodes' events to this
  node's subscribers;
- the :class:`~.leases.LeaseKeeper` holds this node's share of partitions,
  and the :class:`~.inbox.PartitionInbox` hands their messages to this
  node's agent; the :class:`~.turnbook.TurnBook` ties the agent's output to
  those messages (ids, fencing, acknowledgement);
- :class:`~.tokens.SharedTokens` and the shared media secret let a token or
  a media URL from one node work on every other.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..core.events import InboundMessage
from ..core.hub import ChatHub
from ..store import redis_scripts as lua
from ..store._coredis import Call, Script
from ..store.base import StoreResult
from ..store.committer import GroupCommitter
from ..store.redis import RedisStore
from ..store.redis_layout import MEDIA_SECRET_KEY, NODES_KEY
from .feed import PartitionFeed
from .inbox import PartitionInbox
from .leases import DEFAULT_LEASE_TTL_S, LeaseKeeper
from .tokens import SharedTokens
from .turnbook import TurnBook

__all__ = ["ClusterNode", "RedisLeases"]

_HEARTBEAT = Script("heartbeat", lua.HEARTBEAT)
_ACQUIRE = Script("acquire_lease", lua.ACQUIRE_LEASE)
_RENEW = Script("renew_lease", lua.RENEW_LEASE)
_RELEASE = Script("release_lease", lua.RELEASE_LEASE)
_SECRET = Script("shared_secret", lua.SHARED_SECRET)


@attrs.define(eq=False)
class RedisLeases:
    """The lease backend of :class:`LeaseKeeper`, on the store's Redis."""

    store: RedisStore

    async def heartbeat(self, node: str, ttl_ms: int) -> int:
        return int(
            await self.store.link.run(Call(_HEARTBEAT, [NODES_KEY], [node, ttl_ms]))
        )

    async def acquire(self, partition: int, node: str, ttl_ms: int) -> int | None:
        layout = self.store.layout
        fence = await self.store.link.run(
            Call(
                _ACQUIRE,
                [layout.lease(partition), layout.fence(partition)],
                [node, ttl_ms],
            )
        )
        return None if fence is None else int(fence)

    async def renew(self, partition: int, node: str, ttl_ms: int, fence: int) -> bool:
        layout = self.store.layout
        ok = await self.store.link.run(
            Call(
                _RENEW,
                [layout.lease(partition), layout.fence(partition)],
                [node, ttl_ms, fence],
            )
        )
        return bool(int(ok))

    async def release(self, partition: int, node: str) -> None:
        await self.store.link.run(
            Call(_RELEASE, [self.store.layout.lease(partition)], [node])
        )


@attrs.define(eq=False)
class ClusterNode:
    store: RedisStore
    hub: ChatHub[Any]
    committer: GroupCommitter
    inbound: trio.MemorySendChannel[InboundMessage]
    wall_clock: Callable[[], float]
    published: Callable[[str, StoreResult | None], None]
    token_ttl_s: float
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    on_health: Callable[[str | None], None] | None = None
    book: TurnBook = attrs.field(factory=TurnBook, init=False)
    feed: PartitionFeed = attrs.field(init=False)
    inbox: PartitionInbox = attrs.field(init=False)
    leases: LeaseKeeper = attrs.field(init=False)
    tokens: SharedTokens = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        store = self.store

        def link() -> Any:
            return store.link

        self.feed = PartitionFeed(
            link,
            store.layout,
            store.node,
            self.hub,
            on_health=self.on_health,
            cluster=store.on_cluster,
        )
        self.inbox = PartitionInbox(
            link,
            store.layout,
            self.book,
            self.inbound,
            self.committer,
            self.wall_clock,
            self.published,
            node=store.node,
            reached=self.feed.reached,
        )
        self.leases = LeaseKeeper(
            RedisLeases(store),
            store.node,
            store.partitions,
            on_gain=self.inbox.gained,
            on_lose=self.inbox.lost,
            running_turns=self.book.turns_of,
            ttl_s=self.lease_ttl_s,
        )
        self.book.on_end = self._turn_ended
        self.tokens = SharedTokens(link, self.token_ttl_s)

    def _turn_ended(self) -> None:
        self.leases.turn_ended.unpark_all()

    @property
    def degraded_reason(self) -> str | None:
        return self.feed.degraded_reason

    async def media_secret(self) -> bytes:
        """The signing secret every node shares (made by whichever is first)."""
        mine = secrets.token_hex(32)
        shared = await self.store.link.run(Call(_SECRET, [MEDIA_SECRET_KEY], [mine]))
        return bytes.fromhex(bytes(shared).decode())

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.feed.run)
            await nursery.start(self.inbox.run)
            await nursery.start(self.leases.run)
            task_status.started()
