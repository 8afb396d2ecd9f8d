"""ChatTurns / run_turns under a MockClock: per-chat order, concurrency, bounds."""

from __future__ import annotations

import trio
import trio.testing

from trio_channel import InboundMessage, open_bus
from trio_channel.agents.echo import echo_agent
from trio_channel.agents.turns import run_turns
from trio_channel.core.events import AgentEvent, GoalStatus, Message, TurnEnd

Seen = list[tuple[float, AgentEvent]]


def msg(content: str, chat_id: str = "c1") -> InboundMessage:
    return InboundMessage(chat_id=chat_id, client_id="t", content=content)


async def sleepy(
    message: InboundMessage, outbound: trio.MemorySendChannel[AgentEvent]
) -> TurnEnd | None:
    """``N text``: wait N seconds, then answer ``text`` (``boom`` raises)."""
    head, _, text = message.content.partition(" ")
    await trio.sleep(float(head))
    if text == "boom":
        raise RuntimeError("the model fell over")
    await outbound.send(Message(chat_id=message.chat_id, text=text))
    if text == "goal":
        return TurnEnd(chat_id=message.chat_id, goal_state={"done": True})
    return None


async def drive(agent, *messages: InboundMessage, spacing: float = 0.0) -> Seen:
    server, ends = open_bus(capacity=4)
    seen: Seen = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent, ends.inbound, ends.outbound)

        async def feed() -> None:
            async with server.inbound:
                for m in messages:
                    await server.inbound.send(m)
                    await trio.sleep(spacing)

        nursery.start_soon(feed)
        async with server.outbound:
            async for event in server.outbound:
                seen.append((trio.current_time(), event))
    return seen


def of(seen: Seen, chat_id: str) -> list[tuple[float, AgentEvent]]:
    return [(t, e) for t, e in seen if getattr(e, "chat_id", None) == chat_id]


def shape(events: list[tuple[float, AgentEvent]]) -> list[str]:
    out = []
    for _, e in events:
        if isinstance(e, GoalStatus):
            out.append(e.status)
        elif isinstance(e, Message):
            out.append(e.text)
        elif isinstance(e, TurnEnd):
            out.append("end")
    return out


async def test_one_chat_runs_its_turns_in_order_and_idles_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(inbound, outbound):
        await run_turns(inbound, outbound, sleepy)

    seen = await drive(agent, msg("1 first"), msg("0 second"), spacing=0.1)
    assert shape(of(seen, "c1")) == ["running", "first", "end", "second", "end", "idle"]
    ((t_idle, _),) = [(t, e) for t, e in seen if getattr(e, "status", "") == "idle"]
    assert t_idle == 1.0  # after the second turn, not between them


async def test_chats_run_concurrently_within_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(inbound, outbound):
        await run_turns(inbound, outbound, sleepy, max_concurrent=2)

    seen = await drive(agent, msg("1 a", "A"), msg("1 b", "B"), msg("1 c", "C"))
    done = {e.text: t for t, e in seen if isinstance(e, Message)}
    assert done == {"a": 1.0, "b": 1.0, "c": 2.0}  # C waited for a free slot


async def test_a_failing_turn_still_ends_and_the_next_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(inbound, outbound):
        await run_turns(inbound, outbound, sleepy)

    seen = await drive(agent, msg("1 boom"), msg("0 after"))
    assert shape(of(seen, "c1")) == ["running", "end", "after", "end", "idle"]


async def test_a_returned_turn_end_is_sent_with_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(inbound, outbound):
        await run_turns(inbound, outbound, sleepy)

    seen = await drive(agent, msg("2 goal"))
    (end,) = [e for _, e in seen if isinstance(e, TurnEnd)]
    assert end.goal_state == {"done": True}
    assert end.latency_ms == 2000


async def test_a_message_during_idle_starts_a_new_busy_spell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(inbound, outbound):
        await run_turns(inbound, outbound, sleepy)

    seen = await drive(agent, msg("1 one"), msg("1 two"), spacing=5)
    assert shape(of(seen, "c1")) == [
        *("running", "one", "end", "idle"),
        *("running", "two", "end", "idle"),
    ]


async def test_echo_agent_keeps_one_chat_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = await drive(
        echo_agent, msg("sleep:1 first"), msg("second"), msg("other", "c2")
    )
    c1 = of(seen, "c1")
    assert shape(c1) == ["running", "sleep:1 first", "end", "second", "end", "idle"]
    assert c1[-1][0] == 1.0
    # The other chat did not wait for c1's sleep.
    assert [t for t, e in of(seen, "c2") if isinstance(e, Message)] == [0.0]
