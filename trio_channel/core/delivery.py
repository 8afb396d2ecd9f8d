"""The delivery core: where each subscriber stands in each chat's log (pure).

One rule serves live delivery, resume after a reconnect, a slow client
catching up and, over Redis, events from other nodes (DESIGN "seams"). Each
subscription has a :class:`Cursor` holding ``next_seq``, the next ``seq`` the
client should receive:

- a live event with ``seq < next_seq`` is a duplicate: dropped;
- ``seq == next_seq``: sent, and ``next_seq`` moves on;
- ``seq > next_seq`` (a gap), a full send queue, or a hiccup of the store or
  feed: the cursor stops being *live* and the connection catches up by
  reading the stored log from ``next_seq`` in pages (:func:`catch_up_page`),
  at the client's own pace;
- a catching-up cursor goes live again once it is past the chat's
  ``published_seq``, the newest ``seq`` this node has offered to
  subscribers. Every offered event was stored first (durable before
  visible), so the store holds everything up to ``published_seq``: checking
  it in the same step that flips the cursor leaves no gap.

Resuming (``attach`` with ``since_seq`` and ``epoch``) is decided by
:func:`resume_from`, PROTOCOL 5. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from .events import Error

__all__ = [
    "HISTORY_RESET",
    "HISTORY_TRUNCATED",
    "CatchUpStep",
    "Cursor",
    "Offer",
    "Resume",
    "catch_up_page",
    "resume_from",
]

HISTORY_TRUNCATED = "history_truncated"
HISTORY_RESET = "history_reset"


class Offer(enum.IntEnum):
    """What to do with one live event for one subscriber."""

    SEND = 0
    #: A duplicate, or the cursor is catching up (the log has the event).
    DROP = 1
    #: The cursor just fell behind: start a catch-up from the store.
    CATCH_UP = 2


@attrs.define(eq=False, slots=True)
class Cursor:
    """One connection's place in one chat's log."""

    next_seq: int = 1
    #: False while the connection catches up from the store.
    live: bool = True
    #: Send the chat's current state (hydration) when it next goes live: a
    #: catch-up may have skipped status events, which are not in the log.
    rehydrate: bool = False
    #: Read the log before going live, whatever the hub last saw published:
    #: after a broken feed, what this node saw is not all there is. Set
    #: again during a read, that read is not the last one.
    must_read: bool = False

    def offer(self, seq: int) -> Offer:
        """Decide one live event; moves ``next_seq`` past what is sent."""
        if not self.live:
            return Offer.DROP
        if seq == self.next_seq:
            self.next_seq = seq + 1
            return Offer.SEND
        if seq < self.next_seq:
            return Offer.DROP
        self.fall_behind()
        return Offer.CATCH_UP

    def fall_behind(self) -> None:
        """The send queue overflowed or a feed failed: catch up from the store."""
        self.live = False
        self.rehydrate = True

    def lost_track(self) -> None:
        """The feed broke: catch up, and read the log at least once."""
        self.fall_behind()
        self.must_read = True

    def try_go_live(self, published_seq: int) -> bool:
        """Go live if nothing offered so far is still missing; True if live."""
        if not self.live and self.next_seq > published_seq:
            self.live = True
        return self.live


@attrs.frozen
class CatchUpStep:
    """What one page read from the store means for a cursor."""

    #: ``history_truncated`` first when the log no longer reaches back.
    notice: Error | None
    #: The payloads to send, in order.
    payloads: list[bytes]
    #: Whether the page was the end of the log as the store had it.
    exhausted: bool


def catch_up_page(
    cursor: Cursor,
    chat_id: str,
    first_seq: int,
    events: Iterable[tuple[int, bytes]],
    *,
    limit: int,
) -> CatchUpStep:
    """Apply one page of stored events (``seq > next_seq - 1``) to ``cursor``.

    ``first_seq`` is the oldest ``seq`` the store still keeps; when it is
    past ``next_seq`` the client is told (``history_truncated``) and the
    cursor moves to it. Events the cursor already passed are skipped, so a
    page that overlaps what was sent live sends nothing twice.
    """
    notice = None
    if first_seq > cursor.next_seq:
        notice = Error(detail=HISTORY_TRUNCATED, chat_id=chat_id, first_seq=first_seq)
        cursor.next_seq = first_seq
    payloads = []
    count = 0
    for seq, payload in events:
        count += 1
        if seq < cursor.next_seq:
            continue
        # Within the kept log seqs have no gaps; a later one means the log
        # was trimmed while we read: the client still gets every kept event.
        cursor.next_seq = seq + 1
        payloads.append(payload)
    return CatchUpStep(notice, payloads, exhausted=count < limit)


@attrs.frozen
class Resume:
    """Where an ``attach`` starts, and what the client is told first."""

    next_seq: int
    #: False: start live at ``next_seq`` with no replay.
    replay: bool
    notice: Error | None = None


def resume_from(
    chat_id: str,
    *,
    since_seq: int | None,
    epoch: str | None,
    chat_epoch: str | None,
    first_seq: int,
    last_seq: int,
) -> Resume:
    """PROTOCOL 5: replay after ``since_seq``, or refuse a stale resume.

    A resume is stale when the client names another ``epoch`` than the
    chat's, or has seen a ``seq`` the chat does not have (``since_seq >
    last_seq``): then ``history_reset`` and the whole kept history. Without
    ``since_seq`` there is no replay; live delivery starts after
    ``last_seq``. A log that no longer reaches back to ``since_seq + 1`` is
    reported by :func:`catch_up_page` on the first page.
    """
    if since_seq is None:
        return Resume(last_seq + 1, replay=False)
    stale_epoch = epoch is not None and chat_epoch is not None and epoch != chat_epoch
    if stale_epoch or since_seq > last_seq:
        notice = Error(
            detail=HISTORY_RESET,
            chat_id=chat_id,
            epoch=chat_epoch,
            first_seq=first_seq,
        )
        return Resume(first_seq, replay=True, notice=notice)
    return Resume(since_seq + 1, replay=True)
