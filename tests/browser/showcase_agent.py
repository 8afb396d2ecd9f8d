"""A scripted agent for the browser tests: every kind of event the page draws.

``showcase`` answers with reasoning, a tool hint, a file edit, a streamed
markdown reply, two interleaved streams and a turn_end with a known latency;
anything else goes to the built-in echo agent.
"""

from __future__ import annotations

import time

import trio

from trio_channel import InboundMessage
from trio_channel.agents.echo import answer
from trio_channel.core.events import (
    AgentEvent,
    Delta,
    FileEdit,
    GoalStatus,
    Message,
    ReasoningDelta,
    ReasoningEnd,
    StreamEnd,
    TurnEnd,
)

#: Markdown streamed in small pieces, so fences and links arrive split.
MARKDOWN = (
    "Here is **the fix**:\n\n"
    "```python\nprint('<ok>')\n```\n\n"
    "See https://example.com/fix."
)


async def agent(
    inbound: trio.MemoryReceiveChannel[InboundMessage],
    outbound: trio.MemorySendChannel[AgentEvent],
) -> None:
    async with inbound, outbound:
        async for message in inbound:
            if message.content.strip() == "showcase":
                await showcase(message.chat_id, outbound)
            else:
                await answer(message, outbound)


async def showcase(chat: str, out: trio.MemorySendChannel[AgentEvent]) -> None:
    await out.send(GoalStatus(chat_id=chat, status="running", started_at=time.time()))
    await trio.sleep(0.5)  # long enough to see the status strip say so
    for part in ("Let me think", " about it."):
        await out.send(ReasoningDelta(chat_id=chat, text=part, stream_id="r1"))
    await out.send(ReasoningEnd(chat_id=chat, stream_id="r1"))
    await out.send(Message(chat_id=chat, text="reading files", kind="tool_hint"))
    await out.send(
        FileEdit(chat_id=chat, edits=[{"path": "src/app.py"}, {"path": "README.md"}])
    )
    for i in range(0, len(MARKDOWN), 5):
        await out.send(Delta(chat_id=chat, text=MARKDOWN[i : i + 5], stream_id="md"))
    await out.send(StreamEnd(chat_id=chat, stream_id="md"))
    for stream_id, text in (
        ("a", "alpha "),
        ("b", "beta "),
        ("a", "one"),
        ("b", "two"),
    ):
        await out.send(Delta(chat_id=chat, text=text, stream_id=stream_id))
    await out.send(StreamEnd(chat_id=chat, stream_id="a"))
    await out.send(StreamEnd(chat_id=chat, stream_id="b"))
    await out.send(TurnEnd(chat_id=chat, latency_ms=1234))
    await out.send(GoalStatus(chat_id=chat, status="idle"))
