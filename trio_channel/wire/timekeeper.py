"""One task for every connection's timers: keepalive and stalled sockets.

A task per connection for pings and another for a stall watchdog would make
an idle connection cost three tasks; this one task serves them all (STYLE:
"keepalive and the slow-consumer check run from one server-wide timer
task"). It sleeps until the earliest of three kinds of deadline:

- the next keepalive round: every ``ping_interval_s`` every connection is
  pinged (:meth:`Watched.ping`);
- ``ping_timeout_s`` after a round: a connection whose pong has not come
  is closed (:meth:`Watched.check_pong`);
- a writer that has been inside one send for ``slow_consumer_timeout_s``:
  the socket accepts no bytes, so the connection is closed with 1013
  (:meth:`Watched.stalled`).

Writers report a send that starts (:meth:`Timekeeper.sending`); that moves
the task's deadline earlier only when it has to, without waking it, so the
hot path pays a comparison, not a scheduler pass.
"""

from __future__ import annotations

import math
from typing import Protocol

import attrs
import trio

__all__ = ["Timekeeper", "Watched"]


class Watched(Protocol):
    """What the timekeeper needs of a connection."""

    #: trio time the writer's current send started; None when not sending.
    send_since: float | None
    #: trio time of the keepalive ping that still waits for its pong.
    ping_sent_at: float | None

    def ping(self, now: float) -> None: ...

    def check_pong(self, now: float) -> None: ...

    def stalled(self, now: float) -> None: ...


@attrs.define(eq=False)
class Timekeeper:
    ping_interval_s: float
    ping_timeout_s: float
    stall_timeout_s: float
    connections: set[Watched] = attrs.field(factory=set, init=False)
    _sending: set[Watched] = attrs.field(factory=set, init=False)
    _scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _next_round: float = attrs.field(default=math.inf, init=False)
    _pong_check: float = attrs.field(default=math.inf, init=False)

    def add(self, conn: Watched) -> None:
        self.connections.add(conn)

    def discard(self, conn: Watched) -> None:
        self.connections.discard(conn)
        self._sending.discard(conn)

    def sending(self, conn: Watched) -> None:
        """``conn``'s writer started a send at ``conn.send_since``."""
        self._sending.add(conn)
        scope = self._scope
        if scope is not None and conn.send_since is not None:
            deadline = conn.send_since + self.stall_timeout_s
            if deadline < scope.deadline:
                scope.deadline = deadline

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._next_round = trio.current_time() + self.ping_interval_s
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            self._tick(trio.current_time())

    def _deadline(self) -> float:
        deadline = min(self._next_round, self._pong_check)
        for conn in self._sending:
            if conn.send_since is not None:
                deadline = min(deadline, conn.send_since + self.stall_timeout_s)
        return deadline

    def _tick(self, now: float) -> None:
        for conn in list(self._sending):
            since = conn.send_since
            if since is None:
                self._sending.discard(conn)
            elif now >= since + self.stall_timeout_s:
                self._sending.discard(conn)
                conn.stalled(now)
        round_now = now >= self._next_round
        if round_now:
            self._next_round = now + self.ping_interval_s
            for conn in list(self.connections):
                conn.ping(now)
        if round_now or now >= self._pong_check:
            # Next check: when the oldest unanswered ping times out. One that
            # is overdue but was not closed (its reader waits on the agent)
            # is looked at again next round, never in a loop.
            self._pong_check = math.inf
            for conn in list(self.connections):
                conn.check_pong(now)
                sent = conn.ping_sent_at
                if sent is not None and sent + self.ping_timeout_s > now:
                    self._pong_check = min(self._pong_check, sent + self.ping_timeout_s)
