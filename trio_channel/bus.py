"""The bus between the server and the agent: two bounded trio memory channels.

Inbound carries :class:`InboundMessage` (one per accepted client message) to
the agent; outbound carries :data:`~trio_channel.events.AgentEvent` objects
back. Both are bounded: when the agent falls behind, the server stops reading
client sockets (back-pressure) instead of buffering without limit.
"""

from __future__ import annotations

import attrs
import trio

from .core.events import AgentEvent, InboundMessage

DEFAULT_BUS_CAPACITY = 1024


@attrs.frozen
class ServerBusEnds:
    """The ends the server holds: it sends inbound and receives outbound."""

    inbound: trio.MemorySendChannel[InboundMessage]
    outbound: trio.MemoryReceiveChannel[AgentEvent]


@attrs.frozen
class AgentBusEnds:
    """The ends the agent holds: it receives inbound and sends outbound."""

    inbound: trio.MemoryReceiveChannel[InboundMessage]
    outbound: trio.MemorySendChannel[AgentEvent]


def open_bus(
    capacity: int = DEFAULT_BUS_CAPACITY,
) -> tuple[ServerBusEnds, AgentBusEnds]:
    """Open both bounded channels and hand out the two pairs of ends.

    Give the first pair to :class:`~trio_channel.Channel` and the second to the
    agent. Each side should use its ends in ``async with`` so that closing one
    side ends the other cleanly.
    """
    if capacity < 1:
        raise ValueError("bus capacity must be at least 1")
    in_send, in_recv = trio.open_memory_channel[InboundMessage](capacity)
    out_send, out_recv = trio.open_memory_channel[AgentEvent](capacity)
    return ServerBusEnds(in_send, out_recv), AgentBusEnds(in_recv, out_send)
