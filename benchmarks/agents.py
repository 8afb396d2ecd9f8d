"""The benchmark's agent for trio_channel: ``--agent agents:bench_agent``.

The same echo contract as the built-in echo agent (``trio_channel/agents/
echo.py``) — ``goal_status`` running; a ``message`` echoing the content, or
for ``stream:N`` (or ``stream:N@MS``, MS ms apart) N ``delta`` events and a
``stream_end``; ``turn_end`` with
``latency_ms``; ``goal_status`` idle — but written the way a real agent
sends, and the way the nanobot harness (``nanobot_server.py``) sends too:

- each turn runs in a task of its own (turns of different chats run at the
  same time, turns of one chat one after the other), as nanobot's
  ``AgentLoop`` runs them; at most :data:`MAX_CONCURRENT_TURNS` at once;
- every event is sent with ``await outbound.send(event)`` (no
  ``send_nowait`` shortcut);
- a delta is sent only once the server has taken the previous one off the
  bus (``outbound.statistics().current_buffer_used == 0``, yielding with
  ``trio.lowlevel.checkpoint()``, which is ``trio.sleep(0)``, until then),
  as a model's tokens arrive one at a time: the server cannot gather a
  turn's deltas into one write just because the agent made them all at once.

The runner puts ``benchmarks/`` on the daemon's ``PYTHONPATH`` so that
``agents`` imports.
"""

from __future__ import annotations

import re
import time
import uuid

import trio
import trio.lowlevel

from trio_channel import (
    AgentEvent,
    Delta,
    GoalStatus,
    InboundMessage,
    Message,
    StreamEnd,
    TurnEnd,
)

MAX_STREAM_DELTAS = 10_000
MAX_CONCURRENT_TURNS = 64

#: ``stream:N`` or ``stream:N@MS``: N deltas, the second form MS ms apart
#: (a model's pace; two_nodes.py), the first as fast as the server takes them.
_STREAM_RE = re.compile(r"stream:(\d{1,6})(?:@(\d{1,4}))?")


async def bench_agent(
    inbound: trio.MemoryReceiveChannel[InboundMessage],
    outbound: trio.MemorySendChannel[AgentEvent],
) -> None:
    """Answer every inbound message, one task per turn, until the bus closes."""
    turns = trio.Semaphore(MAX_CONCURRENT_TURNS)
    chats: dict[str, _ChatLock] = {}
    async with inbound, outbound, trio.open_nursery() as nursery:
        async for message in inbound:
            await turns.acquire()
            chat = chats.get(message.chat_id)
            if chat is None:
                chat = chats[message.chat_id] = _ChatLock()
            chat.turns += 1
            nursery.start_soon(_turn, message, outbound, turns, chat, chats)


class _ChatLock:
    """One chat's turns one after the other; dropped when none is left."""

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.turns = 0


async def _turn(
    message: InboundMessage,
    outbound: trio.MemorySendChannel[AgentEvent],
    turns: trio.Semaphore,
    chat: _ChatLock,
    chats: dict[str, _ChatLock],
) -> None:
    try:
        async with chat.lock:
            await answer(message, outbound)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the server is gone; nobody is left to answer
    finally:
        turns.release()
        chat.turns -= 1
        if not chat.turns:
            del chats[message.chat_id]


async def _taken(outbound: trio.MemorySendChannel[AgentEvent]) -> None:
    """Return once the server has taken everything off the bus.

    A memory channel says nothing when it empties, so poll once per scheduler
    pass (``checkpoint`` is ``trio.sleep(0)``).
    """
    while outbound.statistics().current_buffer_used:
        await trio.lowlevel.checkpoint()


async def answer(
    message: InboundMessage, outbound: trio.MemorySendChannel[AgentEvent]
) -> None:
    """One turn for ``message``; every event awaited, deltas one at a time."""
    chat_id = message.chat_id
    started = trio.current_time()
    await outbound.send(
        GoalStatus(chat_id=chat_id, status="running", started_at=time.time())
    )
    content = message.content.strip()
    stream = _STREAM_RE.fullmatch(content)
    if stream and 1 <= int(stream.group(1)) <= MAX_STREAM_DELTAS:
        count = int(stream.group(1))
        pace_s = int(stream.group(2) or 0) / 1000
        if message.metadata.get("streaming", True):
            stream_id = uuid.uuid4().hex
            for i in range(1, count + 1):
                await outbound.send(
                    Delta(chat_id=chat_id, text=f"chunk {i} ", stream_id=stream_id)
                )
                await _taken(outbound)
                if pace_s:
                    await trio.sleep(pace_s)
            await outbound.send(StreamEnd(chat_id=chat_id, stream_id=stream_id))
        else:
            text = "".join(f"chunk {i} " for i in range(1, count + 1))
            await outbound.send(Message(chat_id=chat_id, text=text))
    else:
        await outbound.send(
            Message(
                chat_id=chat_id,
                text=message.content,
                media=list(message.media) or None,
            )
        )
    latency_ms = round((trio.current_time() - started) * 1000)
    await outbound.send(TurnEnd(chat_id=chat_id, latency_ms=latency_ms))
    await outbound.send(GoalStatus(chat_id=chat_id, status="idle"))
