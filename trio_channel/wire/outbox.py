"""Each connection's bounded send queue of pre-framed bytes.

The dispatcher calls :meth:`Outbox.put` (sync, never blocks), so one stalled
client can never delay the others; the connection's writer task takes
*everything* queued at once (:meth:`Outbox.take_all`) and sends it in one
``send_all``. A queue that holds ``soft_limit`` frames is *full*: it records
when it became full, and the connection's watchdog closes it with 1013 once
it has stayed full for ``slow_consumer_timeout_s``. Frames keep being
accepted past the soft limit, so nothing is lost while a client catches up,
but only up to ``hard_limit``: reaching it marks the outbox ``overflowed``
and the watchdog closes the connection at once. Memory stays bounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
import trio


@attrs.define(eq=False)
class Outbox:
    soft_limit: int
    hard_limit: int
    _frames: deque[bytes] = attrs.field(factory=deque, init=False)
    _writer_lot: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )
    _watch_lot: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )
    _room_lot: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )
    #: trio time at which the queue became full; None while not full.
    full_since: float | None = attrs.field(default=None, init=False)
    overflowed: bool = attrs.field(default=False, init=False)
    #: How many frames the last :meth:`take_all` returned.
    last_batch: int = attrs.field(default=0, init=False)
    #: Called the first time the queue fills up or overflows, so the
    #: connection starts its watchdog only when it may need one (an idle
    #: connection then costs one task less).
    on_full: Callable[[], None] | None = attrs.field(default=None, init=False)
    closed: bool = attrs.field(default=False, init=False)

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> bool:
        """Queue one frame; False when it was refused (closed or overflowed)."""
        if self.closed or self.overflowed:
            return False
        if len(self._frames) >= self.hard_limit:
            self.overflowed = True
            self._frames.clear()
            self._watch_lot.unpark_all()
            self._writer_lot.unpark_all()
            self._notify_full()
            return False
        self._frames.append(frame)
        if len(self._frames) == 1:
            self._writer_lot.unpark_all()
        if self.full_since is None and len(self._frames) >= self.soft_limit:
            self.full_since = trio.current_time()
            self._watch_lot.unpark_all()
            self._notify_full()
        return True

    def _notify_full(self) -> None:
        on_full, self.on_full = self.on_full, None
        if on_full is not None:
            on_full()

    def put_many(self, frames: list[bytes]) -> bool:
        return all(self.put(frame) for frame in frames)

    async def take_all(self) -> bytes:
        """Wait for at least one frame, then return every queued frame joined.

        Raises ``trio.EndOfChannel`` once the outbox is closed and drained.
        """
        while not self._frames:
            if self.closed or self.overflowed:
                raise trio.EndOfChannel
            await self._writer_lot.park()
        return self.take_nowait()

    def take_nowait(self) -> bytes:
        """Every queued frame joined (``b""`` when none); never waits."""
        frames = self._frames
        if not frames:
            self.last_batch = 0
            return b""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.last_batch = len(frames)
        frames.clear()
        self._room_lot.unpark_all()
        if self.full_since is not None:
            self.full_since = None
            self._watch_lot.unpark_all()
        return data

    def close(self) -> None:
        """Refuse new frames; the writer drains what is queued, then stops."""
        self.closed = True
        self._writer_lot.unpark_all()
        self._watch_lot.unpark_all()
        self._room_lot.unpark_all()

    async def wait_for_room(self) -> None:
        """Wait until the queue is below its soft limit (used by replays, which
        produce many frames and must not push a healthy client over the hard
        limit)."""
        while len(self._frames) >= self.soft_limit and not (
            self.closed or self.overflowed
        ):
            await self._room_lot.park()

    async def wait_until_stalled(self, stall_s: float) -> None:
        """Return once the queue overflowed or stayed full for ``stall_s``."""
        while True:
            while self.full_since is None and not self.overflowed:
                if self.closed:
                    await trio.sleep_forever()
                await self._watch_lot.park()
            if self.overflowed:
                return
            started = self.full_since
            assert started is not None
            with trio.move_on_at(started + stall_s):
                while self.full_since == started and not self.overflowed:
                    await self._watch_lot.park()
            if self.overflowed or self.full_since == started:
                return
