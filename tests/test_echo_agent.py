"""The built-in echo agent, driven through ``open_bus()`` under a MockClock.

What an agent author copies: one turn is ``goal_status`` running, the answer,
``turn_end`` with ``latency_ms``, ``goal_status`` idle (PROTOCOL 3.4, 4).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing

from trio_channel import InboundMessage, open_bus
from trio_channel.agents.echo import echo_agent
from trio_channel.core.events import (
    AgentEvent,
    Delta,
    GoalStatus,
    Message,
    StreamEnd,
    TurnEnd,
)

Received = tuple[float, AgentEvent]


def inbound(content: str, chat_id: str = "c1", **kw: Any) -> InboundMessage:
    metadata = kw.pop("metadata", {"remote": "127.0.0.1:5000", "streaming": True})
    return InboundMessage(
        chat_id=chat_id, client_id="alice", content=content, metadata=metadata, **kw
    )


async def run_agent(*messages: InboundMessage, delay: float = 0.0) -> list[Received]:
    """Send every message, close the inbound side, collect until the agent ends.

    Messages are sent after ``delay`` seconds; each event comes with the (mock)
    time at which it arrived.
    """
    server, agent = open_bus(capacity=8)
    received: list[Received] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_agent, agent.inbound, agent.outbound)
        await trio.sleep(delay)
        async with server.inbound:
            for message in messages:
                await server.inbound.send(message)
        async with server.outbound:
            async for event in server.outbound:
                received.append((trio.current_time(), event))
    return received


def events_of(received: list[Received], chat_id: str = "c1") -> list[AgentEvent]:
    return [e for _, e in received if getattr(e, "chat_id", None) == chat_id]


def check_turn_frame(events: list[AgentEvent], latency_ms: int) -> list[AgentEvent]:
    """Check running ... turn_end, idle; return what came in between."""
    first, *answer, end, last = events
    assert isinstance(first, GoalStatus) and first.status == "running"
    assert isinstance(first.started_at, float)
    assert abs(first.started_at - time.time()) < 3600  # Unix seconds
    assert end == TurnEnd(chat_id=first.chat_id, latency_ms=latency_ms)
    assert last == GoalStatus(chat_id=first.chat_id, status="idle")
    assert last.started_at is None
    return answer


async def test_plain_echo_with_media(autojump_clock: trio.testing.MockClock) -> None:
    paths = ("/data/media/a.png", "/data/media/b.mp4")
    received = await run_agent(inbound("hello", media=paths))
    answer = check_turn_frame(events_of(received), latency_ms=0)
    assert answer == [Message(chat_id="c1", text="hello", media=list(paths))]


@pytest.mark.parametrize(
    "content",
    [
        "hello",
        "  spaced  ",
        "stream:0",
        "stream:10001",
        "stream:abc",
        "sleep:31",
        "sleep:30.5 late",
        "sleep:-1",
        "sleep:2hi",  # no space: not a sleep command
        "please stream:5",
    ],
)
async def test_other_content_is_echoed_at_once(
    autojump_clock: trio.testing.MockClock, content: str
) -> None:
    received = await run_agent(inbound(content))
    answer = check_turn_frame(events_of(received), latency_ms=0)
    # no media: the field is left out, not sent as []
    assert answer == [Message(chat_id="c1", text=content)]
    assert {t for t, _ in received} == {0.0}


@pytest.mark.parametrize("count", [1, 5, 10_000])
async def test_stream_sends_deltas_then_stream_end(
    autojump_clock: trio.testing.MockClock, count: int
) -> None:
    received = await run_agent(inbound(f"stream:{count}"))
    answer = check_turn_frame(events_of(received), latency_ms=0)
    *deltas, end = answer
    assert len(deltas) == count
    assert all(isinstance(d, Delta) and d.text for d in deltas)
    stream_ids = {d.stream_id for d in deltas if isinstance(d, Delta)}
    assert len(stream_ids) == 1
    (stream_id,) = stream_ids
    assert stream_id is not None
    assert end == StreamEnd(chat_id="c1", stream_id=stream_id)  # no rewrite text


@pytest.mark.parametrize("content", ["stream:5", "  stream:5\n"])
async def test_each_stream_gets_its_own_id(
    autojump_clock: trio.testing.MockClock, content: str
) -> None:
    received = await run_agent(inbound(content), inbound(content))
    ids = {e.stream_id for _, e in received if isinstance(e, StreamEnd)}
    assert len(ids) == 2


async def test_streaming_off_sends_one_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    streamed = await run_agent(inbound("stream:5"))
    deltas = [e.text for _, e in streamed if isinstance(e, Delta)]
    received = await run_agent(
        inbound("stream:5", metadata={"remote": "unix", "streaming": False})
    )
    answer = check_turn_frame(events_of(received), latency_ms=0)
    # the same text a client would have assembled from the deltas
    assert answer == [Message(chat_id="c1", text="".join(deltas))]


@pytest.mark.parametrize("delay", [0.0, 0.3])  # when the turn starts
@pytest.mark.parametrize(
    ("content", "seconds"),
    [("sleep:2 hi", 2.0), ("sleep:0.5", 0.5), ("sleep:30 max\nlines", 30.0)],
)
async def test_sleep_answers_after_mock_time(
    autojump_clock: trio.testing.MockClock, content: str, seconds: float, delay: float
) -> None:
    received = await run_agent(inbound(content), delay=delay)
    answer = check_turn_frame(events_of(received), latency_ms=int(seconds * 1000))
    assert answer == [Message(chat_id="c1", text=content)]  # the whole content
    times = [t for t, _ in received]
    done = delay + seconds
    assert times == [delay, done, done, done]


async def test_chats_are_answered_concurrently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received = await run_agent(
        inbound("sleep:5 slow", chat_id="a"),
        inbound("sleep:1 quick", chat_id="b"),
        inbound("hello", chat_id="c"),
    )
    arrived = {e.chat_id: t for t, e in received if isinstance(e, Message)}
    assert arrived == {"a": 5.0, "b": 1.0, "c": 0.0}
    for chat_id, latency in (("a", 5000), ("b", 1000), ("c", 0)):
        check_turn_frame(events_of(received, chat_id), latency_ms=latency)


async def test_agent_ends_when_the_server_closes_the_bus(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, agent = open_bus()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_agent, agent.inbound, agent.outbound)
        await server.inbound.aclose()
        with trio.fail_after(1):
            assert [e async for e in server.outbound] == []
