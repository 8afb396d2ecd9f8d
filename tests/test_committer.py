"""Group commit: batches, order of callbacks, failures, degraded state, shutdown.

A fake store records each batch and fails on demand; time is MockClock's.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import msgspec
import pytest
import trio
import trio.testing

from trio_channel.core.events import Delta, encode_event
from trio_channel.dispatch import join_queued_deltas
from trio_channel.store.base import (
    Appended,
    AppendEvent,
    AppendUserMessage,
    StoredUserMessage,
    StoreError,
    StoreOp,
    StoreResult,
)
from trio_channel.store.committer import GroupCommitter, StoreUnavailable


@attrs.define(slots=False)
class FakeStore:
    description: str = "fake"
    batches: list[list[StoreOp]] = attrs.field(factory=list)
    #: Errors raised by the next writes, in turn.
    failures: list[StoreError] = attrs.field(factory=list)
    write_time: float = 0.01
    seq: int = 0
    #: Whether :meth:`write_now` writes (else it declines, like Redis).
    inline: bool = False
    inline_batches: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def probe(self) -> None:
        await trio.sleep(self.write_time)
        if self.failures:
            raise self.failures.pop(0)

    async def write(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        await trio.sleep(self.write_time)
        return self._apply(ops)

    def write_now(self, ops: Sequence[StoreOp]) -> list[StoreResult] | None:
        """Only while ``inline``: like SQLite with synchronous=normal."""
        if not self.inline:
            return None
        self.inline_batches += 1
        return self._apply(ops)

    def _apply(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append(list(ops))
        results: list[StoreResult] = []
        for op in ops:
            if isinstance(op, AppendEvent):
                self.seq += 1
                results.append(Appended(self.seq, "e", op.payload))
            else:
                results.append(StoredUserMessage(self.seq, "e"))
        return results


def ev(n: int) -> AppendEvent:
    return AppendEvent("c", f"id{n}", b'{"n":%d}' % n, at=0.0)


def user(text: str = "hi") -> AppendUserMessage:
    return AppendUserMessage("c", 0.0, "me", text)


FULL = StoreError("database or disk is full", transient=False)
BUSY = StoreError("database is locked", transient=True)


@pytest.fixture
async def running(
    nursery: trio.Nursery,
) -> tuple[FakeStore, GroupCommitter, list[object]]:
    store = FakeStore()
    health: list[object] = []
    committer = GroupCommitter(store, capacity=100, on_health=health.append)
    await nursery.start(
        lambda task_status: committer.run(flush_timeout_s=1.0, task_status=task_status)
    )
    return store, committer, health


async def test_what_queues_during_a_commit_is_the_next_batch(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, _ = running
    done: list[int] = []
    committer.submit(ev(1), lambda r: done.append(r.seq))  # type: ignore[union-attr]
    await trio.testing.wait_all_tasks_blocked()  # the first commit is under way
    for n in range(2, 6):
        committer.submit(ev(n), lambda r: done.append(r.seq))  # type: ignore[union-attr]
    assert not committer.idle
    await trio.sleep(1)
    assert [len(b) for b in store.batches] == [1, 4]
    assert done == [1, 2, 3, 4, 5]
    assert committer.idle


async def test_after_runs_behind_what_was_queued_before_it(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    _store, committer, _ = running
    order: list[str] = []
    committer.submit(ev(1), lambda r: order.append("stored 1"))
    committer.after(lambda: order.append("status"))
    committer.submit(ev(2), lambda r: order.append("stored 2"))
    await trio.sleep(1)
    assert order == ["stored 1", "status", "stored 2"]


async def test_write_waits_until_stored(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, _ = running
    start = trio.current_time()
    result = await committer.write(user())
    assert isinstance(result, StoredUserMessage)
    assert trio.current_time() - start == pytest.approx(0.01)
    assert store.batches == [[user()]]


async def test_commit_now_writes_in_the_callers_task_in_queue_order(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, _ = running
    store.inline = True
    order: list[str] = []
    committer.submit(ev(1), lambda r: order.append("stored 1"))
    committer.after(lambda: order.append("status"))
    committer.submit(ev(2), lambda r: order.append("stored 2"))
    start = trio.current_time()
    committer.commit_now()
    # Done before this task yielded once: no task switch, no thread.
    assert order == ["stored 1", "status", "stored 2"]
    assert store.batches == [[ev(1), ev(2)]] and store.inline_batches == 1
    assert committer.idle
    result = await committer.write(user())
    assert isinstance(result, StoredUserMessage)
    assert trio.current_time() == start  # not the task's 10 ms write
    assert store.inline_batches == 2


async def test_commit_now_leaves_to_the_task_what_the_store_declines(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, _ = running
    done: list[int] = []
    committer.submit(ev(1), lambda r: done.append(r.seq))  # type: ignore[union-attr]
    committer.commit_now()  # declined: the store is not inline
    assert done == [] and len(committer._queue) == 1
    await trio.sleep(1)
    assert done == [1] and store.batches == [[ev(1)]]


async def test_commit_now_failing_hands_the_batch_to_the_tasks_retries(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, _ = running
    store.inline = True
    store.failures = [FULL]
    done: list[int] = []
    committer.submit(ev(1), lambda r: done.append(r.seq))  # type: ignore[union-attr]
    committer.commit_now()
    assert done == []
    await trio.sleep(1)
    # The task tried again (the fake's write takes the same failures list)
    # and the batch was stored once, in order.
    assert done == [1] and store.batches == [[ev(1)]]


async def test_commit_now_waits_behind_a_batch_being_written(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, _ = running
    done: list[int] = []
    committer.submit(ev(1), lambda r: done.append(r.seq))  # type: ignore[union-attr]
    await trio.testing.wait_all_tasks_blocked()  # the task is writing it
    store.inline = True
    committer.submit(ev(2), lambda r: done.append(r.seq))  # type: ignore[union-attr]
    committer.commit_now()  # must not overtake the batch in flight
    assert done == []
    await trio.sleep(1)
    assert done == [1, 2]


async def test_transient_errors_are_retried_without_fuss(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, health = running
    store.failures = [BUSY, BUSY]
    assert isinstance(await committer.write(user()), StoredUserMessage)
    assert health == [] and committer.degraded_reason is None


async def test_a_persistent_error_degrades_refuses_waiters_and_keeps_events(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, health = running
    store.failures = [FULL] * 20
    stored: list[int] = []
    committer.submit(ev(1), lambda r: stored.append(r.seq))  # type: ignore[union-attr]
    with pytest.raises(StoreUnavailable):
        await committer.write(user("waiting when it broke"))
    assert health == ["database or disk is full"]
    with pytest.raises(StoreUnavailable):
        await committer.write(user("sent while degraded"))  # at once
    assert stored == []
    # The event is retried until the store takes it again.
    await trio.sleep(60)
    assert stored == [1]
    assert health[-1] is None and committer.degraded_reason is None
    flat = [op for batch in store.batches for op in batch]
    assert flat == [ev(1)]  # neither user message was stored
    assert isinstance(await committer.write(user()), StoredUserMessage)


async def test_an_idle_degraded_store_is_probed_until_it_takes_writes(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, health = running
    store.failures = [FULL] * 8
    with pytest.raises(StoreUnavailable):
        await committer.write(user())  # nothing else will ever be written
    assert committer.degraded_reason is not None
    await trio.sleep(30)  # probes use up the failures, then one succeeds
    assert store.failures == []
    assert committer.degraded_reason is None and health[-1] is None
    assert isinstance(await committer.write(user()), StoredUserMessage)


async def test_a_bug_in_the_store_is_a_loud_degraded_state(
    autojump_clock: trio.testing.MockClock, running, caplog
) -> None:
    store, committer, health = running

    async def broken(ops: Sequence[StoreOp]) -> list[StoreResult]:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("oops")

    store.write = broken  # type: ignore[method-assign]
    committer.submit(ev(1))
    await trio.sleep(1)
    assert health == ["internal error: RuntimeError('oops')"]
    assert "the session store failed unexpectedly" in caplog.text


async def test_back_pressure(autojump_clock: trio.testing.MockClock, nursery) -> None:
    store = FakeStore(write_time=1.0)
    committer = GroupCommitter(store, capacity=3)
    nursery.start_soon(lambda: committer.run(flush_timeout_s=1.0))
    for n in range(3):
        committer.submit(ev(n))
    assert committer.full
    start = trio.current_time()
    await committer.wait_for_room()
    assert trio.current_time() == start  # the committer took the batch at once
    assert not committer.full


async def test_shutdown_flushes_within_its_deadline(
    autojump_clock: trio.testing.MockClock, caplog
) -> None:
    store = FakeStore(write_time=0.5)
    committer = GroupCommitter(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: committer.run(flush_timeout_s=2.0))
        await trio.testing.wait_all_tasks_blocked()
        committer.submit(ev(1))
        committer.submit(ev(2))
        nursery.cancel_scope.cancel()
    assert [op for batch in store.batches for op in batch] == [ev(1), ev(2)]
    # A store that never recovers: the flush gives up at the deadline.
    broken = FakeStore(failures=[FULL] * 1000)
    committer = GroupCommitter(broken)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: committer.run(flush_timeout_s=2.0))
        committer.submit(ev(3))
        await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start <= 2.1
    assert "1 store writes were still failing" in caplog.text


# --- a shared store's queued deltas join --------------------------------------


def delta(chat: str, text: str, stream: str = "s1", n: int = 0) -> AppendEvent:
    event = Delta(chat_id=chat, text=text, stream_id=stream)
    return AppendEvent(
        chat, f"{chat}:{text}:{n}", encode_event(event), at=0.0, stream=f"d:{stream}"
    )


@pytest.fixture
async def joining(nursery: trio.Nursery) -> tuple[FakeStore, GroupCommitter]:
    store = FakeStore()
    committer = GroupCommitter(store, capacity=100, joins=join_queued_deltas)
    await nursery.start(
        lambda task_status: committer.run(flush_timeout_s=1.0, task_status=task_status)
    )
    return store, committer


def texts(batch: list[StoreOp]) -> list[tuple[str, str]]:
    out = []
    for op in batch:
        assert isinstance(op, AppendEvent)
        decoded = msgspec.json.decode(op.payload)
        out.append((op.chat_id, decoded.get("text", decoded["event"])))
    return out


async def test_deltas_queued_behind_a_batch_join_per_chat_and_stream(
    autojump_clock: trio.testing.MockClock, joining
) -> None:
    store, committer = joining
    published: list[bytes] = []

    def then(result: StoreResult | None) -> None:
        assert isinstance(result, Appended)
        published.append(result.payload)

    committer.submit(delta("a", "first"), then)
    await trio.testing.wait_all_tasks_blocked()  # its batch is being written
    # Behind it: two chats interleaved, a second stream, and a non-delta
    # event that ends a run of joinable deltas.
    for op in [
        delta("a", "x"),
        delta("b", "1"),
        delta("a", "y"),
        delta("b", "2"),
        delta("a", "other", stream="s2"),
        delta("a", "z", stream="s2"),
        AppendEvent("a", "end", b'{"event":"stream_end","chat_id":"a"}', at=0.0),
        delta("a", "after", stream="s2"),
    ]:
        committer.submit(op, then)
    await trio.sleep(1)
    assert [texts(b) for b in store.batches] == [
        [("a", "first")],
        [
            ("a", "xy"),
            ("b", "12"),
            ("a", "otherz"),
            ("a", "stream_end"),
            ("a", "after"),
        ],
    ]
    # What clients get is what the store holds: the joined deltas.
    assert [msgspec.json.decode(p).get("text") for p in published] == [
        "first",
        "xy",
        "12",
        "otherz",
        None,
        "after",
    ]


async def test_a_batch_taken_for_writing_never_changes(
    autojump_clock: trio.testing.MockClock, joining
) -> None:
    """A retried batch is the same writes (event ids are idempotent only so)."""
    store, committer = joining
    store.failures = [BUSY]
    committer.submit(delta("a", "one"))
    await trio.testing.wait_all_tasks_blocked()  # written, failed, retrying
    committer.submit(delta("a", "two"))
    await trio.sleep(1)
    assert [texts(b) for b in store.batches] == [[("a", "one")], [("a", "two")]]


async def test_without_joins_every_delta_is_its_own_write(
    autojump_clock: trio.testing.MockClock, running
) -> None:
    store, committer, _ = running
    committer.submit(delta("a", "first"))
    await trio.testing.wait_all_tasks_blocked()
    committer.submit(delta("a", "x"))
    committer.submit(delta("a", "y"))
    await trio.sleep(1)
    assert [texts(b) for b in store.batches] == [
        [("a", "first")],
        [("a", "x"), ("a", "y")],
    ]


def test_deltas_of_agents_with_other_fences_never_join() -> None:
    a, b = delta("a", "x"), delta("a", "y")
    assert join_queued_deltas(attrs.evolve(a, fence="1"), b) is None
    assert join_queued_deltas(attrs.evolve(a, ack="entry"), b) is None
    joined = join_queued_deltas(a, attrs.evolve(b, at=5.0))
    assert joined is not None and joined.at == 5.0 and joined.event_id == a.event_id


# --- the join window: deltas alone may wait a little for more -------------------


@pytest.fixture
async def windowed(nursery: trio.Nursery) -> tuple[FakeStore, GroupCommitter]:
    store = FakeStore(write_time=0.001)
    committer = GroupCommitter(
        store, capacity=100, joins=join_queued_deltas, join_window_s=0.02
    )
    await nursery.start(
        lambda task_status: committer.run(flush_timeout_s=1.0, task_status=task_status)
    )
    return store, committer


async def test_a_streams_deltas_wait_out_the_window_and_join(
    autojump_clock: trio.testing.MockClock, windowed
) -> None:
    store, committer = windowed
    published: list[tuple[float, bytes]] = []
    start = trio.current_time()

    def then(result: StoreResult | None) -> None:
        assert isinstance(result, Appended)
        published.append((trio.current_time() - start, result.payload))

    for text in ("a", "b", "c"):  # a model's tokens, 5 ms apart
        committer.submit(delta("x", text), then)
        await trio.sleep(0.005)
    await trio.sleep(0.1)
    assert [texts(b) for b in store.batches] == [[("x", "abc")]]
    # Clients see one delta, 20 ms (the window) + 1 ms (the write) late.
    ((at, payload),) = published
    assert at == pytest.approx(0.021)
    assert msgspec.json.decode(payload)["text"] == "abc"
    assert committer.idle


async def test_anything_but_a_delta_ends_the_window_at_once(
    autojump_clock: trio.testing.MockClock, windowed
) -> None:
    store, committer = windowed
    stored_at: list[float] = []
    start = trio.current_time()
    committer.submit(delta("x", "a"))
    await trio.sleep(0.005)
    end = AppendEvent("x", "end", b'{"event":"stream_end","chat_id":"x"}', at=0.0)
    committer.submit(end, lambda _r: stored_at.append(trio.current_time() - start))
    await trio.sleep(0.1)
    assert [texts(b) for b in store.batches] == [[("x", "a"), ("x", "stream_end")]]
    assert stored_at == [pytest.approx(0.006)]  # 5 ms, then one 1 ms write


async def test_a_users_message_never_waits_for_the_window(
    autojump_clock: trio.testing.MockClock, windowed
) -> None:
    store, committer = windowed
    committer.submit(delta("x", "a"))
    start = trio.current_time()
    await committer.write(user("hello"))
    assert trio.current_time() - start == pytest.approx(0.001)
    # And after a write the next batch of deltas waits again.
    stored = trio.Event()
    committer.submit(delta("x", "b"), lambda _result: stored.set())
    committer.submit(delta("x", "c"))
    before = trio.current_time()
    await stored.wait()
    assert trio.current_time() - before == pytest.approx(0.021)
    first, second = store.batches
    assert texts(first[:1]) == [("x", "a")] and first[1] == user("hello")
    assert texts(second) == [("x", "bc")]


async def test_a_store_that_declines_inline_writes_keeps_deltas_joinable(
    autojump_clock: trio.testing.MockClock, windowed
) -> None:
    """The dispatcher offers every batch of agent events for an inline write
    (:meth:`GroupCommitter.commit_now`); Redis declines, and the deltas it
    was offered must still join the next ones."""
    store, committer = windowed
    for text in ("a", "b", "c"):
        committer.submit(delta("x", text))
        committer.commit_now()
        await trio.sleep(0.002)
    await trio.sleep(0.1)
    assert [texts(b) for b in store.batches] == [[("x", "abc")]]
