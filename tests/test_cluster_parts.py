"""The pieces of several daemons, without Redis: partitions, turns, leases
(on MockClock, against a fake backend), and what the feed does with an entry.
"""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

from trio_channel.cluster.feed import PartitionFeed
from trio_channel.cluster.inbox import ECHO_WAIT_S, PartitionInbox
from trio_channel.cluster.leases import LeaseKeeper, plan
from trio_channel.cluster.turnbook import Turn, TurnBook, TurnOutput
from trio_channel.core.hub import ChatHub
from trio_channel.store._coredis import Call
from trio_channel.store.base import StoreError
from trio_channel.store.redis_layout import Layout, partition_of


def test_partitions_are_stable_and_keys_share_their_hash_tag() -> None:
    assert partition_of("chat-1", 16) == partition_of("chat-1", 16)
    spread = {partition_of(f"c{i}", 16) for i in range(500)}
    assert spread == set(range(16))
    keys = Layout(16).chat("chat-1")
    tag = f"{{{keys.partition}}}"
    chat = (keys.meta, keys.log, keys.eids, keys.users, keys.recent)
    for key in (*chat, keys.fan, keys.inbox):
        assert tag in key  # one slot: one script may touch them all


def test_the_turn_book_names_and_ends_turns() -> None:
    book = TurnBook()
    assert book.output("c") is None  # the agent speaks on its own
    book.handed("c", Turn("1-0", 1, 3, "7"))
    book.handed("c", Turn("2-0", 2, 3, "7"))
    assert book.turns_of(3) == 2
    assert book.output("c") == TurnOutput("1-0:1:1", "7")
    assert book.output("c") == TurnOutput("1-0:1:2", "7")
    assert book.output("c", ends_turn=True) == TurnOutput("1-0:1:3", "7", ack="1-0")
    assert book.output("c") == TurnOutput("2-0:2:1", "7")  # the next one's
    assert book.output("c", ends_turn=True).ack == "2-0"  # type: ignore[union-attr]
    assert len(book) == 0 and book.output("c") is None


@pytest.mark.parametrize(
    ("owned", "fair", "start", "give_back", "first_tries"),
    [
        (set(), 8, 0, [], [0, 1, 2]),
        (set(), 8, 5, [], [5, 6, 7]),
        ({0, 1, 2}, 8, 0, [], [3, 4, 5]),
        (set(range(16)), 8, 0, list(range(8, 16)), []),
        (set(range(16)), 8, 12, [4, 5, 6, 7, 8, 9, 10, 11], []),
    ],
)
def test_plan(owned, fair, start, give_back, first_tries) -> None:
    back, tries = plan(owned, fair, 16, start)
    assert back == give_back
    assert tries[: len(first_tries)] == first_tries
    assert not (set(tries) & owned)


@attrs.define
class FakeLeases:
    """Leases with TTLs on trio's clock, shared by every keeper of a test."""

    holders: dict[int, tuple[str, float]] = attrs.field(factory=dict)
    fences: dict[int, int] = attrs.field(factory=dict)
    beats: dict[str, float] = attrs.field(factory=dict)
    down: bool = False

    def _now(self) -> float:
        if self.down:
            raise StoreError("redis is down", transient=True)
        return trio.current_time()

    async def heartbeat(self, node: str, ttl_ms: int) -> int:
        await trio.lowlevel.checkpoint()
        now = self._now()
        self.beats[node] = now + ttl_ms / 1000
        return sum(1 for until in self.beats.values() if until > now)

    async def acquire(self, partition: int, node: str, ttl_ms: int) -> int | None:
        await trio.lowlevel.checkpoint()
        now = self._now()
        holder = self.holders.get(partition)
        if holder is not None and holder[1] > now and holder[0] != node:
            return None
        if holder is None or holder[1] <= now:
            self.fences[partition] = self.fences.get(partition, 0) + 1
        self.holders[partition] = (node, now + ttl_ms / 1000)
        return self.fences[partition]

    async def renew(self, partition: int, node: str, ttl_ms: int, fence: int) -> bool:
        await trio.lowlevel.checkpoint()
        now = self._now()
        holder = self.holders.get(partition)
        if holder is None or holder[0] != node or self.fences.get(partition) != fence:
            return False
        if holder[1] <= now:
            return False
        self.holders[partition] = (node, now + ttl_ms / 1000)
        return True

    async def release(self, partition: int, node: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.holders.get(partition, ("", 0))[0] == node:
            del self.holders[partition]

    def owners(self) -> dict[str, set[int]]:
        now = trio.current_time()
        out: dict[str, set[int]] = {}
        for p, (node, until) in self.holders.items():
            if until > now:
                out.setdefault(node, set()).add(p)
        return out


def keeper(
    backend: FakeLeases, node: str, log: list[tuple[str, str, int]]
) -> LeaseKeeper:
    return LeaseKeeper(
        backend,
        node,
        16,
        on_gain=lambda p, fence: log.append((node, "gain", p)),
        on_lose=lambda p: log.append((node, "lose", p)),
        ttl_s=9.0,
    )


async def test_two_nodes_share_and_a_dead_one_is_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FakeLeases()
    log: list[tuple[str, str, int]] = []
    a, b = keeper(backend, "a", log), keeper(backend, "b", log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await trio.sleep(1)
        assert len(a.owned) == 16  # alone: everything
        b_scope = trio.CancelScope()

        async def run_b() -> None:
            with b_scope:
                await b.run()

        nursery.start_soon(run_b)
        await trio.sleep(20)  # a sees b, gives half back; b takes it
        owners = backend.owners()
        assert {len(owners["a"]), len(owners["b"])} == {8}
        fences_before = dict(backend.fences)
        # b dies without releasing anything (kill -9).
        b.backend = FakeLeases()  # its last words go nowhere
        b_scope.cancel()
        await trio.sleep(30)  # its leases expire; a takes them over
        assert backend.owners() == {"a": set(range(16))}
        taken = set(owners["b"])
        assert all(backend.fences[p] == fences_before[p] + 1 for p in taken)
        assert ("a", "gain", min(taken)) in log
        nursery.cancel_scope.cancel()
    assert backend.owners() == {}  # a gave everything back on the way out


async def test_a_node_that_cannot_renew_stops_owning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FakeLeases()
    log: list[tuple[str, str, int]] = []
    a = keeper(backend, "a", log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await trio.sleep(1)
        backend.down = True
        await trio.sleep(10)  # past the TTL without a renewal
        assert a.owned == {}
        assert sum(1 for entry in log if entry[1] == "lose") == 16
        backend.down = False
        await trio.sleep(4)
        assert len(a.owned) == 16
        nursery.cancel_scope.cancel()


async def test_a_partition_is_given_back_only_when_its_turns_are_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FakeLeases()
    log: list[tuple[str, str, int]] = []
    busy = {p: 1 for p in range(16)}
    a = keeper(backend, "a", log)
    a.running_turns = lambda p: busy.get(p, 0)
    b = keeper(backend, "b", log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        await trio.sleep(1)
        nursery.start_soon(b.run)
        await trio.sleep(10)
        # a stopped taking messages for half of them, but holds them while
        # their turns run.
        assert len(backend.owners()["a"]) == 16
        lost = {p for node, what, p in log if node == "a" and what == "lose"}
        assert len(lost) == 8
        busy.clear()  # the turns end
        a.turn_ended.unpark_all()
        await trio.sleep(10)
        owners = backend.owners()
        assert owners["b"] == lost and len(owners["a"]) == 8
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class Watcher:
    frames: list[bytes] = attrs.field(factory=list)
    behind: list[str] = attrs.field(factory=list)
    resets: list[str] = attrs.field(factory=list)

    def __hash__(self) -> int:
        return id(self)

    def deliver(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def fell_behind(self, chat_id: str) -> None:
        self.behind.append(chat_id)

    def log_reset(self, chat_id: str, epoch: str) -> None:
        self.resets.append(epoch)


def test_the_feed_hands_other_nodes_entries_to_the_hub() -> None:
    hub: ChatHub[Watcher] = ChatHub()
    watcher = Watcher()
    hub.register(watcher)
    hub.subscribe(watcher, "c")
    feed = PartitionFeed(lambda: None, Layout(16), "me", hub)  # type: ignore[arg-type,return-value]
    event = b'{"event":"message","chat_id":"c","text":"t","seq":1}'
    feed.deliver({"n": b"other", "c": b"c", "s": b"1", "ep": b"E", "e": event})
    feed.deliver({"n": b"me", "c": b"c", "s": b"2", "ep": b"E", "e": b"{}"})  # ours
    feed.deliver({"n": b"other", "c": b"c", "s": b"1", "ep": b"E", "e": event})  # dup
    status = (
        b'{"event":"goal_status","chat_id":"c","status":"running","started_at":5.0}'
    )
    feed.deliver({"n": b"other", "c": b"c", "s": b"", "k": b"goal_status", "e": status})
    assert [f[2:] for f in watcher.frames] == [event, status]
    assert hub.is_running("c")  # hydration on this node knows it
    feed.deliver({"n": b"other", "c": b"c", "s": b"", "k": b"deleted", "e": b""})
    assert hub.chat("c").published_seq == 0
    assert math.isclose(hub.chat("c").running_since or 0, 5.0)


@attrs.define
class OneReadLink:
    """A Redis link whose first ``XREAD`` answers ``entries``, then blocks."""

    entries: list[tuple[str, dict[str, bytes]]]
    stream: str

    async def run(self, call: object) -> list[bytes]:
        return [b"100", b"0"]  # TIME: the feed starts at 100000-0

    async def xread(
        self, streams: object, *, count: int, block_ms: int
    ) -> list[object]:
        await trio.sleep(1)
        entries, self.entries = self.entries, []
        if entries:
            return [(self.stream, entries)]
        await trio.sleep_forever()
        raise AssertionError


async def test_the_inbox_can_wait_until_the_feed_has_handled_an_entry(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub: ChatHub[Watcher] = ChatHub()
    layout = Layout(16)
    echo = b'{"event":"user_message","chat_id":"c","text":"t","starts_turn":true}'
    entry = {"n": b"other", "c": b"c", "s": b"", "k": b"user_message", "e": echo}
    link = OneReadLink([("100500-0", entry)], layout.fan(3))
    feed = PartitionFeed(lambda: link, layout, "me", hub)  # type: ignore[arg-type,return-value]
    watcher = Watcher()
    hub.register(watcher)
    hub.subscribe(watcher, "c")
    await nursery.start(feed.run)
    await feed.reached(3, "99999-7")  # before the feed's start: at once
    assert trio.current_time() == 0
    await feed.reached(3, "100500-0")
    assert trio.current_time() == 1  # once the read came, with the echo
    assert [f[2:] for f in watcher.frames] == [echo]
    with trio.move_on_after(5) as waiting:
        await feed.reached(3, "100500-1")  # never written
    assert waiting.cancelled_caught


async def test_a_message_from_another_node_waits_for_its_echo_briefly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    waited: list[tuple[int, str]] = []

    async def reached(partition: int, entry_id: str) -> None:
        waited.append((partition, entry_id))
        await trio.sleep_forever()  # a feed that never gets there

    inbox = PartitionInbox(
        lambda: None,  # type: ignore[arg-type,return-value]
        Layout(16),
        TurnBook(),
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        lambda: 0.0,
        lambda chat, result: None,
        node="me",
        reached=reached,
    )
    await inbox._echoed(3, {"f": b"5-0", "n": b"me"})  # ours: here already
    await inbox._echoed(3, {"m": b"{}"})  # no echo (an older node wrote it)
    assert waited == [] and trio.current_time() == 0
    await inbox._echoed(3, {"f": b"5-0", "n": b"other"})
    assert waited == [(3, "5-0")]
    assert trio.current_time() == ECHO_WAIT_S  # never longer


@attrs.define
class FlakyLink:
    """A Redis link whose ``XREAD`` fails once; records what the feed did."""

    log: list[str]
    failures: int = 1

    async def run(self, call: object) -> list[bytes]:
        self.log.append("time")
        return [b"100", b"0"]

    async def xread(
        self, streams: object, *, count: int, block_ms: int
    ) -> list[object]:
        if self.failures:
            self.failures -= 1
            self.log.append("xread failed")
            raise StoreError("redis: connection lost", transient=True)
        self.log.append("xread")
        await trio.sleep_forever()
        raise AssertionError


async def test_after_a_broken_feed_cursors_catch_up_once_its_new_start_is_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events written between a catch-up and the feed's restart are not lost.

    Cursors fall behind when the feed breaks, and again once the feed has
    its new start: a catch-up that ended while Redis was away cannot miss
    what was written before the feed read on.
    """
    log: list[str] = []
    hub: ChatHub[Watcher] = ChatHub()

    @attrs.define(eq=False)
    class CatchingUp(Watcher):
        def fell_behind(self, chat_id: str) -> None:
            log.append("behind")
            cursor = hub.cursor(self, chat_id)
            assert cursor is not None
            cursor.try_go_live(0)  # caught up at once

    watcher = CatchingUp()
    hub.register(watcher)
    hub.subscribe(watcher, "c")
    link = FlakyLink(log)
    feed = PartitionFeed(lambda: link, Layout(2), "me", hub)  # type: ignore[arg-type,return-value]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.run)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert log == ["time", "xread failed", "behind", "time", "behind", "xread"]


@attrs.define
class ClusterLink:
    """A Cluster link: records which streams each call names; the reads of
    one partition fail once, the others find nothing new."""

    calls: list[tuple[str, tuple[str, ...]]]
    failing: str

    async def run(self, call: Call) -> list[bytes]:
        self.calls.append(("time", tuple(call.keys)))
        return [b"100", b"0"]

    async def xread(
        self, streams: dict[str, str], *, count: int, block_ms: int
    ) -> list[object]:
        self.calls.append(("xread", tuple(streams)))
        if self.failing in streams:
            self.failing = ""
            raise StoreError("redis: connection lost", transient=True)
        await trio.sleep(block_ms / 1000)  # nothing new
        return []


async def test_on_a_cluster_each_partition_has_its_own_feed_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One call reaches one hash slot on a Cluster: a loop per partition, its
    clock read on its own shard, and a break on one partition sends behind
    only the cursors of that partition's chats."""
    layout = Layout(4)
    chats = {partition_of(f"chat{i}", 4): f"chat{i}" for i in range(40)}
    assert sorted(chats) == [0, 1, 2, 3]
    hub: ChatHub[Watcher] = ChatHub()
    watcher = Watcher()
    hub.register(watcher)
    for chat in chats.values():
        hub.subscribe(watcher, chat)
    link = ClusterLink([], failing=layout.fan(2))
    health: list[str | None] = []
    feed = PartitionFeed(
        lambda: link,  # type: ignore[arg-type,return-value]
        layout,
        "me",
        hub,
        on_health=health.append,
        cluster=True,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.run)
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    streams = [keys for what, keys in link.calls]
    assert all(len(keys) == 1 for keys in streams)
    assert {keys[0] for keys in streams} == {layout.fan(p) for p in range(4)}
    times = [keys for what, keys in link.calls if what == "time"]
    assert sorted(times) == sorted(
        [(layout.fan(p),) for p in range(4)] + [(layout.fan(2),)]
    )
    # Behind when it broke and again at its new start: chat of partition 2 only.
    assert watcher.behind == [chats[2], chats[2]]
    assert health == ["redis: connection lost", None]
    assert feed.degraded_reason is None
