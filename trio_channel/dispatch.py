"""Agent → clients: check, complete, store, then fan out.

The :class:`Dispatcher` is the one task that takes the agent's events off
the outbound bus. Per event, in the order the agent sent them:

1. :func:`~trio_channel.core.agentcheck.check_agent_event`: an event with a
   wrong type, ``Literal`` or an unencodable value is dropped with one log
   line naming the type and field and counted in ``/metrics``; it never
   reaches the hub or the store;
2. completion: ``started_at`` on a ``running`` status, signed media URLs
   and markdown rewrite (file work in a thread, only when needed), the
   assembled text of a rewritten stream;
3. a persisted event is queued for the store and fanned out once the group
   commit has it (durable before visible); an event that is not persisted
   is fanned out after whatever was queued before it, so order holds.

It waits only when the store's queue is full (back-pressure on the agent),
and it takes everything already on the bus before yielding, so writers wake
to whole batches; a store that can commit at once
(:meth:`~trio_channel.store.committer.GroupCommitter.commit_now`) commits
that batch in this task, with no task switch in between.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Iterator
from functools import partial
from typing import Final

import attrs
import msgspec
import trio

from .clock import WallClock
from .cluster.turnbook import TurnBook
from .core.agentcheck import BadEvent, check_agent_event
from .core.events import (
    AgentEvent,
    Delta,
    GoalState,
    GoalStatus,
    Message,
    ReasoningDelta,
    RuntimeModelUpdated,
    SessionUpdated,
    StreamEnd,
    TurnEnd,
    encode_event,
    join_deltas,
)
from .core.hub import ChatHub
from .media.rewrite import MediaLinker
from .metrics import ChannelMetrics
from .store.base import (
    Appended,
    AppendEvent,
    Broadcast,
    Fenced,
    StoreResult,
    UpdateChat,
)
from .store.committer import GroupCommitter
from .wire.connection import WsConnection
from .wire.frames import text_frame

__all__ = ["Dispatcher", "join_queued_deltas"]

log = logging.getLogger("trio_channel.dispatch")

#: Events taken off the bus before the dispatcher yields to other tasks.
DISPATCH_BATCH: Final = 256


@attrs.define(eq=False)
class Dispatcher:
    outbound: trio.MemoryReceiveChannel[AgentEvent]
    hub: ChatHub[WsConnection]
    committer: GroupCommitter
    metrics: ChannelMetrics
    clock: WallClock
    linker: MediaLinker | None = None
    #: With several daemons: the turns this node's agent answers (event ids,
    #: fencing tokens, acknowledgements).
    turns: TurnBook | None = None
    #: Event ids are ``<node>:<counter>``: unique, and increasing within a
    #: run, so the store's index over them is appended to, not scattered.
    node: str = attrs.field(factory=lambda: secrets.token_hex(4))
    _counter: Iterator[int] = attrs.field(factory=itertools.count, init=False)

    async def run(self) -> None:
        async with self.outbound:
            async for first in self.outbound:
                for event in self._already_queued(first):
                    await self.dispatch(event)
                # Commit the batch here when the store can do it at once.
                self.committer.commit_now()

    def _already_queued(self, first: AgentEvent) -> Iterator[AgentEvent]:
        yield first
        for _ in range(DISPATCH_BATCH - 1):
            try:
                yield self.outbound.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def dispatch(self, raw: object) -> None:
        """Check, complete, store and fan out one event from the agent."""
        checked = check_agent_event(raw)
        if isinstance(checked, BadEvent):
            log.warning(
                "dropping a %r event from the agent: %s",
                checked.event_type,
                checked.reason,
            )
            self.metrics.bad_agent_event(checked.event_type)
            return
        event, payload = checked
        prepared = await self._prepare(event)
        if prepared is not event:
            payload = encode_event(prepared)
        self.hub.observe(prepared)
        self.metrics.event(prepared.__struct_config__.tag)  # type: ignore[arg-type]
        if self.committer.full:
            await self.committer.wait_for_room()
        self._persist_state(prepared)
        if isinstance(prepared, RuntimeModelUpdated):
            self._in_order(partial(self.hub.broadcast_all, text_frame(payload)))
        elif not prepared.persisted:
            fan_out = partial(self.hub.broadcast, prepared.chat_id, text_frame(payload))
            if self.committer.store.shared:
                # Every node's subscribers see it, in order with the log.
                self.committer.submit(
                    Broadcast(
                        prepared.chat_id,
                        payload,
                        prepared.__struct_config__.tag,  # type: ignore[arg-type]
                        _running(prepared),
                    ),
                    _after_store(fan_out),
                )
            else:
                self._in_order(fan_out)
        else:
            turn = None
            if self.turns is not None:
                turn = self.turns.output(
                    prepared.chat_id, ends_turn=isinstance(prepared, TurnEnd)
                )
            op = AppendEvent(
                prepared.chat_id,
                turn.event_id if turn else f"{self.node}:{next(self._counter):012x}",
                payload,
                at=self.clock.now(),
                text=prepared.text if isinstance(prepared, Message) else None,
                fence=turn.fence if turn else None,
                ack=turn.ack if turn else None,
                stream=_stream_of(prepared),
            )
            self.committer.submit(op, partial(self.published, prepared.chat_id))

    def _in_order(self, fan_out: Callable[[], object]) -> None:
        """Fan out now if nothing is waiting for the store, else after it."""
        if self.committer.idle:
            fan_out()
        else:
            self.committer.after(fan_out)

    def published(self, chat_id: str, result: StoreResult | None) -> None:
        """Fan an event out once the store holds it (a committer callback)."""
        if isinstance(result, Fenced):
            # This node lost the chat's partition: the new owner re-runs the
            # turn (after an interrupted turn_end), so this output is dropped.
            log.warning("dropping agent output for %s: %s", chat_id, result.reason)
            return
        assert isinstance(result, Appended)
        self.hub.publish(chat_id, result.seq, text_frame(result.payload), result.epoch)

    def _persist_state(self, event: AgentEvent) -> None:
        """Goal state and scope the agent sets are kept with the chat."""
        if isinstance(event, GoalState | TurnEnd) and event.goal_state is not None:
            self.committer.submit(
                UpdateChat(
                    event.chat_id, self.clock.now(), goal_state=event.goal_state or None
                )
            )
        elif (
            isinstance(event, SessionUpdated)
            and event.workspace_scope is not msgspec.UNSET
        ):
            self.committer.submit(
                UpdateChat(
                    event.chat_id,
                    self.clock.now(),
                    workspace_scope=event.workspace_scope,
                )
            )

    async def _prepare(self, event: AgentEvent) -> AgentEvent:
        """Complete an agent event before it is stored and sent.

        A ``running`` status without ``started_at`` gets the current time
        (from trio's clock, :class:`~trio_channel.clock.WallClock`).
        ``message`` media get signed URLs and local markdown images are
        rewritten: cheap checks run on the loop, file work (stat, copy) only
        when needed, in a thread. The stored event is exactly what clients
        receive.
        """
        if (
            isinstance(event, GoalStatus)
            and event.status == "running"
            and event.started_at is None
        ):
            return msgspec.structs.replace(event, started_at=self.clock.now())
        linker = self.linker
        if (
            isinstance(event, Message)
            and linker is not None
            and linker.needs_linking(event)
        ):
            return await trio.to_thread.run_sync(linker.link_message, event)
        if isinstance(event, StreamEnd):
            # Close the stream's buffer (PROTOCOL 4: keyed by chat and
            # stream); its assembled text is only sent when the rewrite
            # changed it.
            text = self.hub.finish_stream(event)
            if linker is not None and linker.might_rewrite(text):
                new = await trio.to_thread.run_sync(linker.rewrite_markdown, text)
                if new is not text:
                    return msgspec.structs.replace(event, text=new)
        return event


def _running(event: AgentEvent) -> tuple[bool, float | None] | None:
    """What a ``goal_status`` says of the chat's turn, for every node."""
    if isinstance(event, GoalStatus):
        return (event.status == "running", event.started_at)
    return None


def _after_store(fan_out: Callable[[], object]) -> Callable[[StoreResult | None], None]:
    def run(_result: StoreResult | None) -> None:
        fan_out()

    return run


def _stream_of(event: AgentEvent) -> str | None:
    """A delta's stream (kind and id), the key :func:`join_queued_deltas` uses."""
    if isinstance(event, Delta | ReasoningDelta):
        stream_id = _STREAM_ID.encode(event.stream_id).decode()
        return f"{event.__struct_config__.tag}:{stream_id}"
    return None


_STREAM_ID = msgspec.json.Encoder()


def join_queued_deltas(queued: AppendEvent, new: AppendEvent) -> AppendEvent | None:
    """One append for two queued deltas of one stream, or None (for
    :attr:`GroupCommitter.joins`): with a shared store, what queues while a
    batch is written, or within the committer's join window, joins."""
    if new.stream is None or new.stream != queued.stream:
        return None
    if (new.fence, new.ack, queued.ack) != (queued.fence, None, None):
        return None
    return attrs.evolve(
        queued, payload=join_deltas(queued.payload, new.payload), at=new.at
    )
