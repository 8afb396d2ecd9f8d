"""Unix time that follows trio's clock.

Timestamps clients see (``started_at``, a message's ``received_at``, a
chat's ``updated_at``) are Unix seconds. Reading ``time.time()`` for each
would escape ``MockClock``; instead :class:`WallClock` reads the wall clock
once, when the channel starts, and adds trio's clock to it, so a test that
jumps trio's clock an hour sees every timestamp an hour later too.
"""

from __future__ import annotations

import time

import attrs
import trio


@attrs.frozen
class WallClock:
    wall_anchor: float
    trio_anchor: float

    @classmethod
    def start(cls) -> WallClock:
        """Anchor now; call inside ``trio.run``."""
        return cls(time.time(), trio.current_time())

    def now(self) -> float:
        return self.wall_anchor + (trio.current_time() - self.trio_anchor)
