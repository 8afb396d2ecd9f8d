"""The token bucket, driven by hand-picked ``now`` values (no clock, no sleep)."""

from __future__ import annotations

import pytest

from trio_channel.core.ratelimit import TokenBucket


def _burst(bucket: TokenBucket, now: float) -> int:
    """How many events pass in a row at ``now``."""
    count = 0
    while bucket.allow(now):
        count += 1
        assert count < 10_000, "bucket never empties"
    return count


@pytest.mark.parametrize(
    ("rate", "burst", "expected"),
    [
        (4.0, None, 8),  # default burst is 2 x rate
        (100.0, None, 200),
        (2.5, None, 5),
        (4.0, 3.0, 3),
        (4.0, 3.5, 3),  # only whole events pass
        (0.25, None, 1),  # never below one event
        (4.0, 0.5, 1),
    ],
)
def test_starts_full(rate: float, burst: float | None, expected: int) -> None:
    assert _burst(TokenBucket(rate, burst), now=1_000.0) == expected


@pytest.mark.parametrize(
    ("elapsed", "refilled"),
    [
        (0.0, 0),
        (0.125, 0),  # half a token
        (0.25, 1),
        (0.5, 2),
        (1.0, 4),
        (2.0, 8),  # back to full
        (60.0, 8),  # capped at burst, not 240
    ],
)
def test_refills_continuously_up_to_burst(elapsed: float, refilled: int) -> None:
    bucket = TokenBucket(rate=4.0)
    assert _burst(bucket, 10.0) == 8
    assert _burst(bucket, 10.0 + elapsed) == refilled


def test_fractions_accumulate_across_calls() -> None:
    bucket = TokenBucket(rate=4.0)
    _burst(bucket, 0.0)
    assert not bucket.allow(0.125)  # half a token so far
    assert bucket.allow(0.25)  # the other half arrives
    assert not bucket.allow(0.25)


def test_steady_rate_passes_and_faster_is_dropped() -> None:
    bucket = TokenBucket(rate=4.0)
    _burst(bucket, 0.0)
    # Exactly 4 per second keeps passing...
    assert all(bucket.allow(i / 4) for i in range(1, 41))
    # ...8 per second passes only every other event.
    results = [bucket.allow(10.0 + i / 8) for i in range(1, 41)]
    assert results == [False, True] * 20


@pytest.mark.parametrize("burst", [None, 5.0])
def test_rate_zero_is_unlimited(burst: float | None) -> None:
    bucket = TokenBucket(rate=0, burst=burst)
    assert all(bucket.allow(0.0) for _ in range(10_000))


def test_time_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=4.0)
    _burst(bucket, 100.0)
    assert _burst(bucket, 50.0) == 0
    assert _burst(bucket, 100.25) == 1  # measured from 100.0, not 50.0


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": -1.0}, {"rate": 1.0, "burst": 0.0}, {"rate": 1.0, "burst": -2.0}],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TokenBucket(**kwargs)
