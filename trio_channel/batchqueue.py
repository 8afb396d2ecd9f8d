"""A bounded queue that is drained in batches: the send queues and the store's.

Producers add items without blocking (:meth:`BatchQueue.put`, False when
full) or wait for room first (:meth:`BatchQueue.wait_for_room`); the one
consumer takes everything queued at once (:meth:`BatchQueue.take`). That is
the shape of both a connection's send queue (the dispatcher must never wait
on one client; the writer sends all queued frames in one ``send_all``) and
the store's write queue (group commit: the next batch is whatever queued
while the last one was written).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["BatchQueue", "LazyParkingLot"]

T = TypeVar("T")


class LazyParkingLot:
    """A :class:`trio.lowlevel.ParkingLot` made when somebody first parks.

    A lot is an ``OrderedDict`` and a list (about 500 bytes); every
    connection has several and most never wait on them.
    """

    __slots__ = ("_lot",)

    def __init__(self) -> None:
        self._lot: trio.lowlevel.ParkingLot | None = None

    async def park(self) -> None:
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        await self._lot.park()

    def unpark_all(self) -> None:
        if self._lot is not None:
            self._lot.unpark_all()


@attrs.define(eq=False, slots=True)
class BatchQueue(Generic[T]):
    """Every connection has one, so it stays small: a list, and parking lots
    made only when somebody first waits (most send queues never wait)."""

    capacity: int = attrs.field(validator=attrs.validators.ge(1))
    _items: list[T] = attrs.field(factory=list, init=False)
    _consumer: LazyParkingLot = attrs.field(factory=LazyParkingLot, init=False)
    _producers: LazyParkingLot = attrs.field(factory=LazyParkingLot, init=False)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def put(self, item: T) -> bool:
        """Add ``item``; False (and nothing added) when the queue is full."""
        if len(self._items) >= self.capacity:
            return False
        self.force(item)
        return True

    def force(self, item: T) -> None:
        """Add ``item`` even past ``capacity`` (for bounded callers' extras)."""
        self._items.append(item)
        if len(self._items) == 1:
            self._consumer.unpark_all()

    def take(self, limit: int | None = None) -> list[T]:
        """Every queued item (at most ``limit``), oldest first; never waits."""
        items = self._items
        if limit is None or limit >= len(items):
            batch, self._items = items, []
        else:
            batch = items[:limit]
            del items[:limit]
        if batch:
            self._producers.unpark_all()
        return batch

    def put_back(self, items: Iterable[T]) -> None:
        """Return taken ``items`` to the front, in order (a batch not done)."""
        self._items[:0] = list(items)

    async def wait_for_items(self) -> None:
        """Return once something is queued (a checkpoint either way)."""
        if self._items:
            await trio.lowlevel.checkpoint()
        while not self._items:
            await self._consumer.park()

    async def wait_for_room(self) -> None:
        """Return once the queue is below ``capacity`` (a checkpoint either way).

        Hot callers test :attr:`full` first and only wait when it is true.
        """
        if not self.full:
            await trio.lowlevel.checkpoint()
        while self.full:
            await self._producers.park()
