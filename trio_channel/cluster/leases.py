"""Partition leases: which node's agent answers which chats.

Every live node holds a fair share of the partitions (``ceil(P / nodes)``),
through leases in Redis (``SET NX PX``, renewed at a third of their TTL) with
a fencing token from ``INCR`` on each acquisition: the append script refuses
agent output that carries an older token, so a stalled former owner cannot
write into a chat it no longer owns. A node that dies loses its leases when
they expire; the others pick them up. A node that has more than its share
(another one joined) gives the extra partitions back, but only once their
running turns are done, so a rebalance never cuts a reply short.

:func:`plan` is the pure decision; :class:`LeaseKeeper` runs it on trio's
clock against a :class:`LeaseBackend` (Redis in production, a fake in the
tests, under MockClock).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import trio

from ..store.base import StoreError

__all__ = ["LeaseBackend", "LeaseKeeper", "plan"]

log = logging.getLogger("trio_channel.cluster")

DEFAULT_LEASE_TTL_S: Final = 10.0
#: How long a partition being given back waits for its running turns.
HANDOVER_TIMEOUT_S: Final = 30.0


class LeaseBackend(Protocol):
    async def heartbeat(self, node: str, ttl_ms: int) -> int:
        """Say this node is alive; return how many nodes are."""
        ...

    async def acquire(self, partition: int, node: str, ttl_ms: int) -> int | None:
        """Take the partition's lease; its fencing token, or None if taken."""
        ...

    async def renew(self, partition: int, node: str, ttl_ms: int, fence: int) -> bool:
        """Extend the lease; False when it is no longer ours."""
        ...

    async def release(self, partition: int, node: str) -> None: ...


def plan(
    owned: set[int], fair: int, partitions: int, start: int
) -> tuple[list[int], list[int]]:
    """``(to_give_back, to_try)`` to move ``owned`` toward ``fair`` partitions.

    Candidates are tried from ``start`` on (each node starts elsewhere, so
    they do not all fight for partition 0); the partitions given back are
    the ones furthest from ``start``.
    """
    order = [(start + i) % partitions for i in range(partitions)]
    if len(owned) > fair:
        keep = [p for p in order if p in owned][:fair]
        return [p for p in order if p in owned and p not in keep], []
    return [], [p for p in order if p not in owned]


@attrs.define(eq=False)
class LeaseKeeper:
    backend: LeaseBackend
    node: str
    partitions: int
    #: Called with (partition, fencing token) when a lease is won, and with
    #: the partition when it is lost or given back.
    on_gain: Callable[[int, int], None]
    on_lose: Callable[[int], None]
    #: Running turns of a partition (a lease is given back only at 0), and
    #: the lot unparked whenever one ends.
    running_turns: Callable[[int], int] = lambda _p: 0
    turn_ended: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    ttl_s: float = DEFAULT_LEASE_TTL_S
    owned: dict[int, int] = attrs.field(factory=dict, init=False)
    _leaving: set[int] = attrs.field(factory=set, init=False)
    _last_renewed: float = attrs.field(default=0.0, init=False)

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep this node's fair share until cancelled, then give it all back."""
        self._last_renewed = trio.current_time()
        start = sum(self.node.encode()) % self.partitions
        started = False
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        await self._round(nursery, start)
                    except StoreError as exc:
                        log.warning("partition leases: %s", exc)
                        self._expire_if_stale()
                    if not started:
                        task_status.started()
                        started = True
                    await trio.sleep(self.ttl_s / 3)
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 2
                for partition in list(self.owned):
                    self._lose(partition)
                    try:
                        await self.backend.release(partition, self.node)
                    except StoreError:
                        break

    async def _round(self, nursery: trio.Nursery, start: int) -> None:
        nodes = await self.backend.heartbeat(self.node, self._ttl_ms)
        for partition, fence in list(self.owned.items()):
            if not await self.backend.renew(partition, self.node, self._ttl_ms, fence):
                log.warning("lost the lease of partition %d", partition)
                self._lose(partition)
        self._last_renewed = trio.current_time()
        fair = math.ceil(self.partitions / max(1, nodes))
        give_back, candidates = plan(set(self.owned), fair, self.partitions, start)
        for partition in give_back:
            if partition not in self._leaving:
                self._leaving.add(partition)
                nursery.start_soon(self._give_back, partition)
        for partition in candidates:
            if len(self.owned) >= fair:
                break
            token = await self.backend.acquire(partition, self.node, self._ttl_ms)
            if token is not None:
                self.owned[partition] = token
                self.on_gain(partition, token)

    async def _give_back(self, partition: int) -> None:
        """Stop taking its messages, let its turns finish, then release it."""
        fence = self.owned.get(partition)
        self.on_lose(partition)
        with trio.move_on_after(HANDOVER_TIMEOUT_S):
            while self.running_turns(partition):
                await self.turn_ended.park()
        if self.owned.get(partition) == fence:
            del self.owned[partition]
            try:
                await self.backend.release(partition, self.node)
            except StoreError as exc:
                log.warning("could not release partition %d: %s", partition, exc)
        self._leaving.discard(partition)

    def _lose(self, partition: int) -> None:
        if (
            self.owned.pop(partition, None) is not None
            and partition not in self._leaving
        ):
            self.on_lose(partition)

    def _expire_if_stale(self) -> None:
        """Redis unreachable past the TTL: another node may own them now."""
        if trio.current_time() - self._last_renewed >= self.ttl_s:
            for partition in list(self.owned):
                self._lose(partition)
