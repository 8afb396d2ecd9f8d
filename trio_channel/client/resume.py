"""Per-chat resume bookkeeping: what to send on reconnect, what to keep.

Pure: no trio, no sockets. The connection feeds every chat event through a
:class:`ChatCursor` and sends what :meth:`ChatCursor.attach_frame` says after
each reconnect (PROTOCOL 5):

- A persisted event (it has a ``seq``) is delivered once: one at or below
  the cursor is a duplicate (a replay overlapping what was already seen) and
  is dropped; the next one moves the cursor. A jump past the next ``seq`` is
  delivered too (and reported), never held back.
- ``attached`` brings the chat's ``epoch`` and ``last_seq``. A chat attached
  without ``since_seq`` starts from ``last_seq``: what came before is
  history the caller did not ask for.
- ``history_truncated``: the log no longer reaches back to the cursor; the
  replay starts at ``first_seq``, and the gap is noted.
- ``history_reset``: the chat's log started again (new epoch) or lost events
  the client saw. The cursor takes the new epoch and restarts before
  ``first_seq``; the caller drops what it held for the chat and rebuilds
  from the replay that follows.

A server that sends no ``epoch`` or ``last_seq`` (older versions) still
works: the cursor then resumes from the highest ``seq`` it delivered, and
from nothing (a plain attach) if it saw none.
"""

from __future__ import annotations

import enum
import random
from typing import Any

import attrs

from ..core.events import Attached, Error

__all__ = ["Admit", "Backoff", "ChatCursor"]

HISTORY_RESET = "history_reset"
HISTORY_TRUNCATED = "history_truncated"


class Admit(enum.Enum):
    """What to do with a persisted event."""

    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    #: Delivered, but one or more ``seq`` before it never arrived.
    GAP = "gap"


@attrs.define
class ChatCursor:
    """Where one followed chat stands: its epoch and the last ``seq`` delivered."""

    chat_id: str
    #: The chat log's epoch, once a server told it (``attached``).
    epoch: str | None = None
    #: The highest ``seq`` delivered; None while unknown (nothing seen, and
    #: the server did not say ``last_seq``).
    last_seq: int | None = None
    #: Attached on the current connection (cleared on every disconnect).
    attached: bool = False
    #: Attached at least once (so the next attach is a resume).
    resumed_before: bool = False
    #: ``seq`` numbers skipped over so far (history_truncated or a gap).
    missed: int = 0

    def attach_frame(self) -> dict[str, Any]:
        """The ``attach`` envelope that resumes this chat on a new connection."""
        frame: dict[str, Any] = {"type": "attach", "chat_id": self.chat_id}
        if self.last_seq is not None:
            frame["since_seq"] = self.last_seq
            if self.epoch is not None:
                frame["epoch"] = self.epoch
        return frame

    def disconnected(self) -> None:
        if self.attached:
            self.resumed_before = True
        self.attached = False

    def on_attached(self, event: Attached) -> bool:
        """Take ``epoch``/``last_seq``; True when this attach is a resume."""
        resumed = self.resumed_before
        self.attached = True
        if self.epoch is None and event.epoch is not None:
            self.epoch = event.epoch
        if self.last_seq is None and event.last_seq is not None:
            # Nothing asked for before this point: follow from here.
            self.last_seq = event.last_seq
        return resumed

    def admit(self, seq: int) -> Admit:
        """Decide on a persisted event with ``seq`` and move the cursor."""
        last = self.last_seq
        if last is not None and seq <= last:
            return Admit.DUPLICATE
        self.last_seq = seq
        if last is not None and seq > last + 1:
            self.missed += seq - last - 1
            return Admit.GAP
        return Admit.DELIVER

    def on_error(self, error: Error) -> bool:
        """Apply ``history_reset``/``history_truncated``; True when reset.

        A reset means: drop everything held for this chat (stream buffers,
        what is on screen) and rebuild from the replay that follows.
        """
        first = error.first_seq if error.first_seq is not None else 1
        if error.detail == HISTORY_RESET:
            if error.epoch is not None:
                self.epoch = error.epoch
            self.last_seq = max(first - 1, 0)
            return True
        if error.detail == HISTORY_TRUNCATED:
            if self.last_seq is not None and first - 1 > self.last_seq:
                self.missed += first - 1 - self.last_seq
            self.last_seq = max(first - 1, 0)
        return False


@attrs.define
class Backoff:
    """Exponential backoff with full jitter, reset after a good connection.

    The n-th delay in a row is uniform in ``[0.5 * d, d]`` with
    ``d = min(cap, first * 2**n)``: restarting clients spread out instead of
    arriving together, and none waits longer than ``cap``.
    """

    first: float = 0.25
    cap: float = 5.0
    rng: random.Random = attrs.field(factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
