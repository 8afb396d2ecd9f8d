"""A daemon agent for restart tests: ``stream:N`` streams slowly enough
(1 ms per delta) that a test can stop the daemon in the middle; anything
else is the echo agent's answer. Turns go through ``run_turns``."""

from __future__ import annotations

import re
import uuid

import trio

from trio_channel import InboundMessage, run_turns
from trio_channel.agents.echo import reply
from trio_channel.core.events import AgentEvent, Delta, StreamEnd, TurnEnd

_STREAM = re.compile(r"stream:(\d{1,5})")


async def turn(
    message: InboundMessage, outbound: trio.MemorySendChannel[AgentEvent]
) -> TurnEnd | None:
    found = _STREAM.fullmatch(message.content.strip())
    if found is None:
        await reply(message, outbound)
        return None
    stream_id = uuid.uuid4().hex
    for i in range(1, int(found.group(1)) + 1):
        await outbound.send(
            Delta(chat_id=message.chat_id, text=f"chunk {i} ", stream_id=stream_id)
        )
        await trio.sleep(0.001)
    await outbound.send(StreamEnd(chat_id=message.chat_id, stream_id=stream_id))
    return None


async def slow_agent(
    inbound: trio.MemoryReceiveChannel[InboundMessage],
    outbound: trio.MemorySendChannel[AgentEvent],
) -> None:
    await run_turns(inbound, outbound, turn)
