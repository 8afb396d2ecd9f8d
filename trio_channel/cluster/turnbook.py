"""Which inbound message each chat's agent output answers (pure).

With several daemons, a user's message reaches the agent of the node that
owns its partition, through the partition's inbox (an entry id, and an
attempt: 1, or more when a node died mid-turn and another runs it again).
Everything the agent then sends for that chat belongs to that turn, until
its ``turn_end``. The :class:`TurnBook` gives each of those events an id
that derives from (entry, attempt, step), so a retried append is stored
once and a second attempt never collides with the first, plus the
partition's fencing token, so a node that lost the partition cannot write.
The ``turn_end`` carries the entry to acknowledge, in the same write.

Agents answer each chat's messages in order (``trio_channel.run_turns``);
the book keeps the handed-over turns of each chat in that order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs

__all__ = ["Turn", "TurnBook", "TurnOutput"]


@attrs.define
class Turn:
    entry: str
    attempt: int
    partition: int
    fence: str
    steps: int = 0


@attrs.frozen
class TurnOutput:
    """What the store needs for one event of a turn."""

    event_id: str
    fence: str
    #: Set on the event that ends the turn: the entry to acknowledge.
    ack: str | None = None


@attrs.define
class TurnBook:
    #: Called whenever a turn ends (a lease being given back waits on it).
    on_end: Callable[[], None] | None = None
    _turns: dict[str, deque[Turn]] = attrs.field(factory=dict)

    def handed(self, chat_id: str, turn: Turn) -> None:
        """The agent got the message of ``turn`` for ``chat_id``."""
        self._turns.setdefault(chat_id, deque()).append(turn)

    def output(self, chat_id: str, *, ends_turn: bool = False) -> TurnOutput | None:
        """Id, fence and (for a ``turn_end``) ack of the chat's next event.

        None when the chat has no turn handed over on this node (the agent
        speaks on its own): the event is then written without a fence.
        """
        turns = self._turns.get(chat_id)
        if not turns:
            return None
        turn = turns[0]
        turn.steps += 1
        event_id = f"{turn.entry}:{turn.attempt}:{turn.steps}"
        if not ends_turn:
            return TurnOutput(event_id, turn.fence)
        turns.popleft()
        if not turns:
            del self._turns[chat_id]
        if self.on_end is not None:
            self.on_end()
        return TurnOutput(event_id, turn.fence, ack=turn.entry)

    def turns_of(self, partition: int) -> int:
        """How many handed-over turns of ``partition`` are still running."""
        return sum(
            1
            for turns in self._turns.values()
            for t in turns
            if t.partition == partition
        )

    def __len__(self) -> int:
        return sum(len(turns) for turns in self._turns.values())
