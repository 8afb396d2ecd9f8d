"""Group commit in front of a session store: durable before visible, cheaply.

Every write goes through one :class:`GroupCommitter`. Its task takes
whatever queued while the previous batch was being written and writes it as
one batch (:meth:`SessionStore.write`), so batches grow with load and an idle
channel commits a lone write at once. A store that can commit a lone write
without waiting (:meth:`SessionStore.write_now`: memory, SQLite with
``synchronous=NORMAL``) is written in the producer's own task instead
(:meth:`GroupCommitter.commit_now`): the dispatcher after each batch of agent
events, a connection for its user's message. That saves two task switches
and a thread hop per commit, most of a round trip's cost.

With :attr:`GroupCommitter.joins` (a shared store, where every write is a
network call and stream deltas are most of them), a stream's queued deltas
join into one append; with :attr:`GroupCommitter.join_window_s` too, a
batch holding nothing but deltas waits up to that long for more to join.
Anything else queued (a user's message, a ``stream_end``, a broadcast)
ends the wait at once, so only deltas are ever held back, and never for
longer than the window.

After a batch commits, each item's ``then`` runs, in queue order: that is
where an agent event is fanned out to clients, so nothing reaches a client
before the store holds it. Items with no write (``after``) keep their place
in that order: a ``goal_status`` the agent sent after a ``turn_end`` is
never seen first.

Failures are never silent. A transient error is retried at once, a few
times; a persistent one (disk full, read-only, corrupt) makes the committer
*degraded*: the batch is kept and retried with back-off until it succeeds,
writes that a caller waits for (a user's message, a delete) are refused
with :class:`StoreUnavailable` so the client can send again later, and
``on_health`` tells the server (``/healthz`` answers 503). The queue is
bounded: while it is full the dispatcher stops taking agent events, which
back-pressures the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import attrs
import trio

from ..batchqueue import BatchQueue
from .base import AppendEvent, SessionStore, StoreError, StoreOp, StoreResult

__all__ = ["GroupCommitter", "StoreUnavailable"]

log = logging.getLogger("trio_channel.store")

DEFAULT_CAPACITY: Final = 8192
#: Operations written in one transaction at most.
MAX_BATCH: Final = 2048
#: Transient failures in a row before the committer reports itself degraded.
TRANSIENT_ATTEMPTS: Final = 3
#: Seconds between retries, by attempt; the last one repeats.
RETRY_DELAYS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: While degraded with nothing queued, the store is probed this often.
PROBE_INTERVAL_S: Final = 1.0

Then = Callable[[StoreResult | None], None]


class StoreUnavailable(Exception):
    """The store cannot take writes now; the client should try again later."""


@attrs.define(eq=False, slots=True)
class _Item:
    op: StoreOp | None
    then: Then | None
    #: Someone waits for it: refused while degraded instead of retried.
    waited: bool = False
    done: trio.Event | None = None
    result: StoreResult | None = None
    error: StoreUnavailable | None = None
    #: Taken for a write once: never changed again (a retry sends it as is).
    sealed: bool = False


@attrs.define(eq=False)
class GroupCommitter:
    store: SessionStore
    capacity: int = DEFAULT_CAPACITY
    #: Called after each batch with (seconds, operations): metrics.
    on_batch: Callable[[float, int], None] | None = None
    #: Called with a reason when writes start failing, None when they work.
    on_health: Callable[[str | None], None] | None = None
    #: Joins a chat's queued append with the next one, or returns None:
    #: with a shared store, a stream's queued deltas become one write.
    joins: Callable[[AppendEvent, AppendEvent], AppendEvent | None] | None = None
    #: With ``joins``: seconds a batch of nothing but stream deltas waits for
    #: more of them to join before it is written (0: write at once).
    join_window_s: float = 0.0
    degraded_reason: str | None = attrs.field(default=None, init=False)
    _queue: BatchQueue[_Item] = attrs.field(init=False)
    _busy: bool = attrs.field(default=False, init=False)
    #: Chat -> its last queued, not yet taken item (only with ``joins``).
    _last: dict[str, _Item] = attrs.field(factory=dict, init=False)
    #: Set when something queued may not wait for the join window.
    _urgent: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._queue = BatchQueue(self.capacity)

    # --- producers ------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing queued or being written: an ``after`` could run at once."""
        return not self._busy and not len(self._queue)

    @property
    def full(self) -> bool:
        return self._queue.full

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def wait_for_room(self) -> None:
        await self._queue.wait_for_room()

    def submit(self, op: StoreOp, then: Then | None = None) -> None:
        """Queue a write that must happen (retried until stored), then ``then``.

        Never blocks; the caller keeps the queue bounded by checking
        :attr:`full` and waiting for room first. With :attr:`joins`, an
        append may join the chat's last queued one instead (its ``then`` is
        then that one's: both publish what the store returns).
        """
        if self.joins is not None and isinstance(op, AppendEvent):
            last = self._last.get(op.chat_id)
            if (
                last is not None
                and not last.sealed
                and isinstance(last.op, AppendEvent)
            ):
                joined = self.joins(last.op, op)
                if joined is not None:
                    last.op = joined
                    return
        self._enqueue(_Item(op, then))

    def _enqueue(self, item: _Item) -> None:
        self._queue.force(item)
        if not _may_wait(item.op) or self._queue.full:
            self._urgent.set()
        if self.joins is not None and item.op is not None:
            # Whatever comes next for this chat may only join this item.
            self._last[item.op.chat_id] = item

    def _take(self) -> list[_Item]:
        batch = self._queue.take(MAX_BATCH)
        for item in batch:
            item.sealed = True
        self._last.clear()
        return batch

    def _unseal(self, batch: list[_Item]) -> None:
        for item in batch:
            item.sealed = False
            if self.joins is not None and item.op is not None:
                self._last[item.op.chat_id] = item

    def _calm(self) -> None:
        """Everything queued was taken for good: the next batch may wait."""
        if not len(self._queue) and self._urgent.is_set():
            self._urgent = trio.Event()

    def after(self, then: Callable[[], object]) -> None:
        """Run ``then`` once everything queued so far is stored."""

        def run(_result: StoreResult | None) -> None:
            then()

        self._queue.force(_Item(None, run))
        self._urgent.set()

    async def write(self, op: StoreOp) -> StoreResult:
        """Write ``op`` and wait until it is stored.

        Raises :class:`StoreUnavailable` at once while degraded, or when the
        store fails persistently while this write waits.
        """
        if self.degraded_reason is not None:
            raise StoreUnavailable(self.degraded_reason)
        if self.full:
            await self.wait_for_room()
        item = _Item(op, None, waited=True, done=trio.Event())
        self._enqueue(item)
        assert item.done is not None
        self.commit_now()
        if item.done.is_set():
            await trio.lowlevel.checkpoint()
        else:
            await item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def commit_now(self) -> None:
        """Write what is queued, in the caller's task, if the store can at once.

        Nothing happens while a batch is being written or the store is
        degraded, or when the store declines (:meth:`SessionStore.write_now`
        returns None, or fails): the committing task, already woken by the
        queue, then writes the batch with its retries.
        """
        if self._busy or self.degraded_reason is not None or not len(self._queue):
            return
        batch = self._take()
        ops = [item.op for item in batch if item.op is not None]
        self._busy = True
        try:
            if ops:
                start = trio.current_time()
                stored = self.store.write_now(ops)
                if stored is None:
                    # Declined, nothing sent: the batch is as it was, and
                    # (when it was the whole queue) what comes next may
                    # still join it.
                    whole = not len(self._queue)
                    self._queue.put_back(batch)
                    if whole:
                        self._unseal(batch)
                    return
                if self.on_batch is not None:
                    self.on_batch(trio.current_time() - start, len(ops))
            else:
                stored = []
        except Exception:
            # A full disk or a bug alike: the task's retries, logs and
            # health reports take the batch from here (its first attempt
            # fails the same way, loudly).
            self._queue.put_back(batch)
            return
        finally:
            self._busy = False
        self._calm()
        results = iter(stored)
        self._finish(
            batch, [None if item.op is None else next(results) for item in batch]
        )

    # --- the committing task -----------------------------------------------------

    async def run(
        self,
        *,
        flush_timeout_s: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Commit batches until cancelled, then flush what is queued.

        The final flush gets ``flush_timeout_s``; what it cannot store in
        that time is lost, and the log says how much.
        """
        task_status.started()
        try:
            while True:
                if self.degraded_reason is None:
                    await self._queue.wait_for_items()
                else:
                    with trio.move_on_after(PROBE_INTERVAL_S):
                        await self._queue.wait_for_items()
                    if not len(self._queue):
                        await self._probe()
                        continue
                await self._join_window()
                await self._commit_next()
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + flush_timeout_s
                while len(self._queue) and not scope.cancel_called:
                    await self._commit_next()
            if len(self._queue):
                log.error(
                    "shutdown: %d store writes were still failing after %ss; "
                    "they are lost",
                    len(self._queue),
                    flush_timeout_s,
                )

    async def _join_window(self) -> None:
        """Give a batch of nothing but stream deltas time to join more.

        Measured from when the committer finds the batch; anything that may
        not wait (:func:`_may_wait`) or a full queue ends it at once.
        """
        if (
            self.join_window_s <= 0
            or self.joins is None
            or self.degraded_reason is not None
        ):
            return
        with trio.move_on_after(self.join_window_s):
            await self._urgent.wait()

    async def _commit_next(self) -> None:
        batch = self._take()
        self._calm()
        self._busy = True
        try:
            results = await self._write_until_stored(batch)
        except BaseException:
            # Cancelled mid-write: the batch goes back to the front, and the
            # final flush stores it (appends are idempotent by event id).
            self._queue.put_back(item for item in batch if item.error is None)
            self._urgent.set()
            raise
        finally:
            self._busy = False
        self._finish(batch, results)

    def _finish(self, batch: list[_Item], results: list[StoreResult | None]) -> None:
        """Tell waiters and run callbacks, in queue order, once stored."""
        for item, result in zip(batch, results, strict=True):
            if item.error is not None:
                continue
            item.result = result
            if item.done is not None:
                item.done.set()
            if item.then is not None:
                try:
                    item.then(result)
                except Exception:
                    log.exception("a store callback failed; the server goes on")

    async def _write_until_stored(self, batch: list[_Item]) -> list[StoreResult | None]:
        """Write ``batch``'s operations, retrying; refused items get None."""
        attempt = 0
        while True:
            live = [
                item for item in batch if item.error is None and item.op is not None
            ]
            if not live:
                return [None] * len(batch)
            start = trio.current_time()
            try:
                stored = await self.store.write([i.op for i in live if i.op])
            except StoreError as exc:
                attempt += 1
                if not exc.transient or attempt >= TRANSIENT_ATTEMPTS:
                    self._degrade(str(exc), batch)
                await trio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1])
                continue
            except Exception as exc:
                # A bug, not a full disk: say so loudly, keep the batch.
                log.exception("the session store failed unexpectedly")
                attempt += 1
                self._degrade(f"internal error: {exc!r}", batch)
                await trio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1])
                continue
            if self.on_batch is not None:
                self.on_batch(trio.current_time() - start, len(live))
            self._recover()
            by_item = dict(zip(map(id, live), stored, strict=True))
            return [by_item.get(id(item)) for item in batch]

    async def _probe(self) -> None:
        """Degraded and idle: find out whether the store takes writes again.

        Nothing else would tell: while degraded, writes someone waits for
        are refused without trying.
        """
        try:
            await self.store.probe()
        except StoreError as exc:
            self.degraded_reason = str(exc)
            return
        except Exception as exc:
            log.exception("the session store failed unexpectedly")
            self.degraded_reason = f"internal error: {exc!r}"
            return
        self._recover()

    def _degrade(self, reason: str, batch: list[_Item]) -> None:
        if self.degraded_reason is None:
            log.error("session store: writes fail (%s); retrying", reason)
            if self.on_health is not None:
                self.on_health(reason)
        self.degraded_reason = reason
        # Whoever waits is told now; their writes leave the batch and the queue.
        refused = StoreUnavailable(reason)
        waiting = [item for item in batch if item.waited and item.error is None]
        for item in self._queue.take():
            if item.waited:
                waiting.append(item)
            else:
                self._queue.force(item)
        for item in waiting:
            item.error = refused
            if item.done is not None:
                item.done.set()

    def _recover(self) -> None:
        if self.degraded_reason is not None:
            log.warning("session store: writes work again")
            self.degraded_reason = None
            if self.on_health is not None:
                self.on_health(None)


def _may_wait(op: StoreOp | None) -> bool:
    """Whether ``op`` may wait for the join window: a stream's delta only."""
    return isinstance(op, AppendEvent) and op.stream is not None and op.ack is None
