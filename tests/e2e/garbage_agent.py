"""An agent that answers every message, and sends garbage around each answer.

Every bad event here once reached clients, crashed the store writer or ended
``serve()``; the channel must drop each with one log line and keep serving.
"""

from __future__ import annotations

from typing import Any

import trio

from trio_channel import InboundMessage
from trio_channel.agents.echo import answer
from trio_channel.core.events import (
    AgentEvent,
    Delta,
    GoalState,
    GoalStatus,
    Message,
    TurnEnd,
)


def garbage(chat_id: str) -> list[Any]:
    return [
        Delta(chat_id=chat_id, text=5),  # type: ignore[arg-type]
        GoalStatus(chat_id=chat_id, status="runing"),  # type: ignore[arg-type]
        TurnEnd(chat_id=chat_id, latency_ms="soon"),  # type: ignore[arg-type]
        GoalState(chat_id=chat_id, goal_state={"when": object()}),
        Message(chat_id=chat_id, text="x", media=[3]),  # type: ignore[list-item]
        {"event": "message", "chat_id": chat_id, "text": "a dict, not an event"},
        "a string",
        None,
        Message(chat_id=chat_id, text="surrogate \ud800 here"),  # kept, as U+FFFD
    ]


async def agent(
    inbound: trio.MemoryReceiveChannel[InboundMessage],
    outbound: trio.MemorySendChannel[AgentEvent],
) -> None:
    async with inbound, outbound:
        async for message in inbound:
            for bad in garbage(message.chat_id):
                await outbound.send(bad)
            await answer(message, outbound)
