"""The per-connection send queue: ordering, closing, slow-consumer detection.

Time comes from pytest-trio's ``autojump_clock`` (a MockClock): no real sleeps.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_channel.wire.outbox import Outbox


def filled(outbox: Outbox, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        assert outbox.put(b"%d;" % n)


async def test_take_all_joins_frames_in_order() -> None:
    outbox = Outbox(soft_limit=10, hard_limit=20)
    for frame in (b"a", b"bc", b"", b"d"):
        assert outbox.put(frame)
    assert len(outbox) == 4
    assert await outbox.take_all() == b"abcd"
    assert len(outbox) == 0
    assert outbox.put_many([b"e", b"f"])
    assert await outbox.take_all() == b"ef"


async def test_take_all_waits_for_a_put(autojump_clock: trio.testing.MockClock) -> None:
    outbox = Outbox(soft_limit=10, hard_limit=20)
    got: list[tuple[float, bytes]] = []

    async def writer() -> None:
        data = await outbox.take_all()
        got.append((trio.current_time(), data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(5)
        assert got == []
        outbox.put(b"late")
    assert got == [(5.0, b"late")]


async def test_close_drains_then_ends() -> None:
    outbox = Outbox(soft_limit=10, hard_limit=20)
    outbox.put_many([b"1", b"2"])
    outbox.close()
    assert not outbox.put(b"3")
    assert not outbox.put_many([b"4"])
    assert await outbox.take_all() == b"12"
    with pytest.raises(trio.EndOfChannel):
        await outbox.take_all()


async def test_close_wakes_a_waiting_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(soft_limit=10, hard_limit=20)
    ended_at: list[float] = []

    async def writer() -> None:
        with pytest.raises(trio.EndOfChannel):
            await outbox.take_all()
        ended_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(3)
        outbox.close()
    assert ended_at == [3.0]


async def test_full_since_set_at_soft_limit_and_cleared_by_take_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(soft_limit=3, hard_limit=10)
    await trio.sleep(1)
    filled(outbox, 2)
    assert outbox.full_since is None
    await trio.sleep(1)
    filled(outbox, 1, start=2)
    assert outbox.full_since == 2.0
    await trio.sleep(1)
    filled(outbox, 2, start=3)  # past the soft limit: still accepted,
    assert outbox.full_since == 2.0  # and "full since" does not move
    assert await outbox.take_all() == b"0;1;2;3;4;"
    assert outbox.full_since is None
    assert not outbox.overflowed


async def test_stall_is_reported_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(soft_limit=3, hard_limit=10)
    async with trio.open_nursery() as nursery:

        async def fill_later() -> None:
            await trio.sleep(4)
            filled(outbox, 3)

        nursery.start_soon(fill_later)
        await outbox.wait_until_stalled(10)
    assert trio.current_time() == 14.0
    assert len(outbox) == 3  # the watchdog decides; frames are still queued


@pytest.mark.parametrize("refill_after", [1.0, 20.0])
async def test_drain_in_between_restarts_the_timer(
    autojump_clock: trio.testing.MockClock, refill_after: float
) -> None:
    outbox = Outbox(soft_limit=3, hard_limit=10)
    filled(outbox, 3)  # full at t=0
    async with trio.open_nursery() as nursery:

        async def slow_client() -> None:
            await trio.sleep(9)
            await outbox.take_all()  # drained just in time
            await trio.sleep(refill_after)
            filled(outbox, 3)  # full again

        nursery.start_soon(slow_client)
        await outbox.wait_until_stalled(10)
    # Not at t=10: the queue was drained at 9 and full again at 9 + refill.
    assert trio.current_time() == 9 + refill_after + 10


async def test_drained_queue_never_stalls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(soft_limit=3, hard_limit=10)
    filled(outbox, 3)
    async with trio.open_nursery() as nursery:

        async def drain() -> None:
            await trio.sleep(5)
            await outbox.take_all()

        nursery.start_soon(drain)
        with trio.move_on_after(1000) as scope:
            await outbox.wait_until_stalled(10)
    assert scope.cancelled_caught


async def test_closed_outbox_never_stalls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(soft_limit=3, hard_limit=10)
    outbox.close()
    with trio.move_on_after(1000) as scope:
        await outbox.wait_until_stalled(10)
    assert scope.cancelled_caught


async def test_hard_limit_overflows(autojump_clock: trio.testing.MockClock) -> None:
    outbox = Outbox(soft_limit=3, hard_limit=5)
    filled(outbox, 5)
    assert not outbox.overflowed
    assert not outbox.put(b"one too many")
    assert outbox.overflowed
    assert not outbox.put(b"after")
    assert not outbox.put_many([b"x"])
    start = trio.current_time()
    await outbox.wait_until_stalled(10)  # at once, no timeout
    assert trio.current_time() == start
    # nothing is sent to a connection that is being closed
    with pytest.raises(trio.EndOfChannel):
        await outbox.take_all()


async def test_overflow_wakes_a_waiting_watchdog(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(soft_limit=3, hard_limit=5)
    async with trio.open_nursery() as nursery:

        async def burst() -> None:
            await trio.sleep(2)
            filled(outbox, 5)  # full at t=2
            await trio.sleep(1)
            outbox.put(b"overflow")  # at t=3, long before the 10 s timeout

        nursery.start_soon(burst)
        await outbox.wait_until_stalled(10)
    assert trio.current_time() == 3.0
