"""The delivery core: cursors, catch-up pages, resume decisions (PROTOCOL 4, 5).

Pure functions and one property: whatever interleaving of live events,
duplicates, gaps, full queues and catch-up steps, a subscriber receives
exactly 1..N, in order.
"""

from __future__ import annotations

from collections import deque

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_channel.core.delivery import (
    HISTORY_RESET,
    HISTORY_TRUNCATED,
    Cursor,
    Offer,
    Resume,
    catch_up_page,
    resume_from,
)
from trio_channel.core.events import Error
from trio_channel.core.hub import ChatHub


def test_offer() -> None:
    cursor = Cursor(5)
    assert cursor.offer(4) is Offer.DROP  # already sent
    assert cursor.offer(5) is Offer.SEND and cursor.next_seq == 6
    assert cursor.offer(5) is Offer.DROP
    assert cursor.offer(8) is Offer.CATCH_UP  # 6 and 7 are missing
    assert (cursor.live, cursor.rehydrate, cursor.next_seq) == (False, True, 6)
    assert cursor.offer(6) is Offer.DROP  # catching up: the log has it


def test_going_live_needs_everything_published() -> None:
    cursor = Cursor(3, live=False)
    assert not cursor.try_go_live(published_seq=3)
    cursor.next_seq = 4
    assert cursor.try_go_live(published_seq=3) and cursor.live


def test_catch_up_page_skips_what_was_sent_and_reports_truncation() -> None:
    cursor = Cursor(2, live=False)
    step = catch_up_page(cursor, "c", 5, [(5, b"e5"), (6, b"e6")], limit=2)
    assert step.notice == Error(detail=HISTORY_TRUNCATED, chat_id="c", first_seq=5)
    assert (step.payloads, step.exhausted, cursor.next_seq) == (
        [b"e5", b"e6"],
        False,
        7,
    )
    step = catch_up_page(cursor, "c", 5, [(6, b"e6"), (7, b"e7")], limit=3)
    assert (step.notice, step.payloads, step.exhausted) == (None, [b"e7"], True)


@pytest.mark.parametrize(
    ("since", "epoch", "chat_epoch", "first", "last", "expected"),
    [
        (None, None, "E", 1, 9, Resume(10, replay=False)),
        (4, None, "E", 1, 9, Resume(5, replay=True)),
        (4, "E", "E", 1, 9, Resume(5, replay=True)),
        (9, "E", "E", 1, 9, Resume(10, replay=True)),
        (0, None, None, 1, 0, Resume(1, replay=True)),  # no log yet
        # Stale: another epoch, or more seen than the store has.
        (
            4,
            "OLD",
            "E",
            3,
            9,
            Resume(
                3,
                replay=True,
                notice=Error(detail=HISTORY_RESET, chat_id="c", epoch="E", first_seq=3),
            ),
        ),
        (
            12,
            None,
            "E",
            1,
            9,
            Resume(
                1,
                replay=True,
                notice=Error(detail=HISTORY_RESET, chat_id="c", epoch="E", first_seq=1),
            ),
        ),
        (
            3,
            "E",
            None,
            1,
            0,
            Resume(
                1,
                replay=True,
                notice=Error(
                    detail=HISTORY_RESET, chat_id="c", epoch=None, first_seq=1
                ),
            ),
        ),
    ],
)
def test_resume_from(since, epoch, chat_epoch, first, last, expected) -> None:
    assert (
        resume_from(
            "c",
            since_seq=since,
            epoch=epoch,
            chat_epoch=chat_epoch,
            first_seq=first,
            last_seq=last,
        )
        == expected
    )


# --- the property ------------------------------------------------------------


@attrs.define(eq=False)
class Client:
    """A subscriber with a bounded queue, and what it has received."""

    room: int
    queue: deque[int] = attrs.field(factory=deque)
    received: list[int] = attrs.field(factory=list)
    behind: bool = False

    def __hash__(self) -> int:
        return id(self)

    def deliver(self, frame: bytes) -> bool:
        if len(self.queue) >= self.room:
            return False
        self.queue.append(int(frame))
        return True

    def fell_behind(self, chat_id: str) -> None:
        self.behind = True

    def log_reset(self, chat_id: str, epoch: str) -> None:
        raise AssertionError("one epoch only in this model")

    def drain(self) -> None:
        self.received += self.queue
        self.queue.clear()


@attrs.define
class World:
    hub: ChatHub[Client]
    client: Client
    log: list[int] = attrs.field(factory=list)

    def store_next(self) -> int:
        seq = len(self.log) + 1
        self.log.append(seq)
        return seq

    def publish(self, seq: int) -> None:
        self.hub.publish("c", seq, str(seq).encode())

    def catch_up_step(self, limit: int) -> None:
        """One step of WsConnection._catch_up against the stored log."""
        cursor = self.hub.cursor(self.client, "c")
        assert cursor is not None
        published = self.hub.chat("c").published_seq
        if not self.client.behind or cursor.try_go_live(published):
            self.client.behind = False
            return
        after = cursor.next_seq - 1
        page = [(s, str(s).encode()) for s in self.log[after : after + limit]]
        step = catch_up_page(cursor, "c", 1, page, limit=limit)
        for payload in step.payloads:
            self.client.queue.append(int(payload))  # forced: not refused
        if step.exhausted and cursor.try_go_live(self.hub.chat("c").published_seq):
            self.client.behind = False


ACTIONS = st.lists(
    st.one_of(
        st.just(("live",)),
        st.just(("gap",)),  # stored, but the live feed lost it
        st.tuples(st.just("duplicate"), st.integers(0, 10**6)),
        st.just(("drain",)),
        st.tuples(st.just("catch_up"), st.integers(1, 5)),
        st.just(("late_publish",)),  # the feed delivers a lost one late
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(actions=ACTIONS, room=st.integers(1, 6), resume_at=st.integers(0, 3))
def test_every_interleaving_delivers_exactly_1_to_n(actions, room, resume_at) -> None:
    hub: ChatHub[Client] = ChatHub()
    client = Client(room)
    world = World(hub, client)
    hub.register(client)
    for _ in range(resume_at):  # events from before the client came
        world.publish(world.store_next())
    # The client resumes after seq 0 (it saw nothing yet).
    hub.subscribe(client, "c", Resume(1, replay=resume_at > 0))
    lost: list[int] = []
    for action in actions:
        kind = action[0]
        if kind == "live":
            world.publish(world.store_next())
        elif kind == "gap":
            lost.append(world.store_next())
        elif kind == "late_publish" and lost:
            world.publish(lost.pop(0))
        elif kind == "duplicate" and world.log:
            world.publish(world.log[action[1] % len(world.log)])
        elif kind == "drain":
            client.drain()
        elif kind == "catch_up":
            world.catch_up_step(action[1])
    # The stream ends with one more live event; the client then reads on.
    world.publish(world.store_next())
    for _ in range(10 * len(world.log) + 10):
        client.drain()
        world.catch_up_step(3)
    client.drain()
    assert client.received == list(range(1, len(world.log) + 1))


def test_a_cursor_that_lost_track_must_read_the_log_before_going_live() -> None:
    """After a broken feed, what this node saw published is not all there
    is: a cursor that had seen everything published must still read."""
    cursor = Cursor(next_seq=2)
    cursor.lost_track()
    assert (cursor.live, cursor.must_read, cursor.rehydrate) == (False, True, True)
    # A catch-up read clears the flag as it starts; a break during the read
    # sets it again, so that read cannot end the catch-up.
    cursor.must_read = False
    cursor.lost_track()
    assert cursor.must_read
