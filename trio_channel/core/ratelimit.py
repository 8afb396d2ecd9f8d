"""A token bucket: the per-connection message rate limit.

Sans-IO like the rest of the protocol core: the caller passes ``now``
(``trio.current_time()``), so tests step time by hand and MockClock works.
"""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    """Allow ``rate`` events per second on average, in bursts of ``burst``.

    The bucket starts full and refills continuously with elapsed time,
    capped at ``burst`` (default ``2 * rate``): a client that was quiet may
    send a short burst, but not bank an unbounded one. The capacity is never
    below one event, so a small ``rate`` still lets messages through,
    one at a time. ``rate == 0`` means unlimited.
    """

    rate: float = attrs.field(validator=attrs.validators.ge(0))
    burst: float | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.gt(0)),
    )
    _capacity: float = attrs.field(init=False)
    _tokens: float = attrs.field(init=False)
    _last: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        burst = 2 * self.rate if self.burst is None else self.burst
        self._capacity = max(1.0, burst)
        self._tokens = self._capacity

    def allow(self, now: float) -> bool:
        """Take one token if there is one; ``False`` means drop the event.

        A ``now`` earlier than the previous call refills nothing (it is not
        an error), so the bucket never over-fills on a clock hiccup.
        """
        if self.rate == 0:
            return True
        if self._last is None or now > self._last:
            if self._last is not None:
                elapsed = now - self._last
                self._tokens = min(self._capacity, self._tokens + elapsed * self.rate)
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
