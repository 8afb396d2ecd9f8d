"""The built-in echo agent: the daemon's default, and a reference for agent authors.

Per inbound message it reports ``goal_status`` running, then answers:

- ``stream:N`` (1 <= N <= 10,000): N ``delta`` events of one stream, then
  ``stream_end`` (or one whole ``message`` when streaming is off);
- ``sleep:S ...`` (0 <= S <= 30): waits S seconds, then a ``message`` with the
  whole content;
- anything else: a ``message`` echoing the content, with the message's media
  paths;

then ``turn_end`` with ``latency_ms`` and ``goal_status`` idle. Turns go
through :class:`~trio_channel.agents.turns.ChatTurns`: a chat's messages are
answered in the order they came (``second`` waits for ``sleep:1 first``),
``idle`` comes after the chat's last queued turn, and other chats go on
meanwhile, at most :data:`MAX_CONCURRENT_TURNS` at a time (past that the
agent stops taking messages, which back-pressures the server). A turn that
never waits, in a chat that is idle, is answered as it arrives, without a
task or a scheduler pass of its own.
"""

from __future__ import annotations

import re
import time
import uuid

import trio

from ..core.events import (
    AgentEvent,
    Delta,
    GoalStatus,
    InboundMessage,
    Message,
    StreamEnd,
    TurnEnd,
)
from .turns import emit as _emit
from .turns import run_turns

MAX_STREAM_DELTAS = 10_000
MAX_SLEEP_S = 30.0
MAX_CONCURRENT_TURNS = 64

_STREAM_RE = re.compile(r"stream:(\d{1,6})")
_SLEEP_RE = re.compile(r"sleep:(\d+(?:\.\d+)?)(?:\s.*)?", re.DOTALL)


async def echo_agent(
    inbound: trio.MemoryReceiveChannel[InboundMessage],
    outbound: trio.MemorySendChannel[AgentEvent],
) -> None:
    """Answer every inbound message until the server closes the bus."""
    await run_turns(
        inbound,
        outbound,
        reply,
        max_concurrent=MAX_CONCURRENT_TURNS,
        inline=_answers_at_once,
    )


def _answers_at_once(message: InboundMessage) -> bool:
    return not _SLEEP_RE.fullmatch(message.content.strip())


async def answer(
    message: InboundMessage, outbound: trio.MemorySendChannel[AgentEvent]
) -> None:
    """One whole turn for ``message``: running, the reply, turn_end, idle.

    For agents that run turns themselves; :func:`echo_agent` uses
    :func:`reply` through :func:`~trio_channel.agents.turns.run_turns`.
    """
    chat_id = message.chat_id
    started = trio.current_time()
    await _emit(
        outbound, GoalStatus(chat_id=chat_id, status="running", started_at=time.time())
    )
    await reply(message, outbound)
    latency_ms = round((trio.current_time() - started) * 1000)
    await _emit(outbound, TurnEnd(chat_id=chat_id, latency_ms=latency_ms))
    await _emit(outbound, GoalStatus(chat_id=chat_id, status="idle"))


async def reply(
    message: InboundMessage, outbound: trio.MemorySendChannel[AgentEvent]
) -> None:
    """Send the echo agent's answer to ``message`` (no status, no turn_end)."""
    chat_id = message.chat_id
    content = message.content.strip()
    streaming = bool(message.metadata.get("streaming", True))
    stream = _STREAM_RE.fullmatch(content)
    sleep = _SLEEP_RE.fullmatch(content)
    if stream and 1 <= int(stream.group(1)) <= MAX_STREAM_DELTAS:
        count = int(stream.group(1))
        chunks = [f"chunk {i} " for i in range(1, count + 1)]
        if streaming:
            stream_id = uuid.uuid4().hex
            for chunk in chunks:
                await _emit(
                    outbound, Delta(chat_id=chat_id, text=chunk, stream_id=stream_id)
                )
            await _emit(outbound, StreamEnd(chat_id=chat_id, stream_id=stream_id))
        else:
            await _emit(outbound, Message(chat_id=chat_id, text="".join(chunks)))
    elif sleep and float(sleep.group(1)) <= MAX_SLEEP_S:
        await trio.sleep(float(sleep.group(1)))
        await _emit(outbound, Message(chat_id=chat_id, text=message.content))
    else:
        await _emit(
            outbound,
            Message(
                chat_id=chat_id,
                text=message.content,
                media=list(message.media) or None,
            ),
        )
