"""ChatHub fan-out, hydration state and bounds; StreamBuffers (PROTOCOL 3.4, 4)."""

from __future__ import annotations

from typing import Any

import pytest

from trio_channel.core.events import (
    AgentEvent,
    Delta,
    GoalState,
    GoalStatus,
    Message,
    RuntimeModelUpdated,
    SessionUpdated,
    StreamEnd,
    TurnEnd,
)
from trio_channel.core.hub import ChatHub, StreamBuffers


def hub_with(subs: dict[str, list[str]], **kw: Any) -> ChatHub[str]:
    """Register each connection in order, then subscribe it to its chats."""
    hub: ChatHub[str] = ChatHub(**kw)
    for sub, chats in subs.items():
        hub.register(sub)
        for chat_id in chats:
            hub.subscribe(sub, chat_id)
    return hub


# --- fan-out ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        Message(chat_id="x", text="hi"),
        Delta(chat_id="x", text="d", stream_id="s"),
        StreamEnd(chat_id="x", stream_id="s"),
        TurnEnd(chat_id="x", latency_ms=3),
        GoalState(chat_id="x", goal_state={"g": 1}),
        GoalStatus(chat_id="x", status="idle"),
        SessionUpdated(chat_id="x", scope="metadata"),
    ],
)
def test_chat_events_go_to_subscribers_in_subscription_order(event: AgentEvent) -> None:
    hub: ChatHub[str] = ChatHub()
    for sub in ("a", "b", "c", "d"):
        hub.register(sub)
    for sub in ("c", "a", "b"):
        hub.subscribe(sub, "x")
    hub.subscribe("d", "y")
    hub.subscribe("c", "x")  # subscribing again keeps the original place
    assert list(hub.targets(event)) == ["c", "a", "b"]


def test_event_for_a_chat_nobody_watches_has_no_target() -> None:
    hub = hub_with({"a": ["x"]})
    assert list(hub.targets(Message(chat_id="elsewhere", text="t"))) == []


def test_runtime_model_updated_goes_to_every_connection() -> None:
    hub = hub_with({"a": ["x"], "b": [], "c": ["y", "x"]})
    event = RuntimeModelUpdated(model_name="gpt-x", model_preset="fast")
    assert list(hub.targets(event)) == ["a", "b", "c"]
    assert hub.model_name == "gpt-x"
    hub.targets(RuntimeModelUpdated(model_name="other"))
    assert hub.model_name == "other"


def test_unregister_cleans_every_chat() -> None:
    hub = hub_with({"a": ["x", "y", "z"], "b": ["y"]})
    hub.unregister("a")
    assert [list(hub.subscribers(c)) for c in ("x", "y", "z")] == [[], ["b"], []]
    assert list(hub.targets(RuntimeModelUpdated(model_name="m"))) == ["b"]
    assert "a" not in hub.connections
    hub.unregister("a")  # idempotent
    hub.unregister("never-registered")


def test_subscribe_needs_register() -> None:
    hub: ChatHub[str] = ChatHub()
    with pytest.raises(KeyError):
        hub.subscribe("a", "x")


# --- hydration ---------------------------------------------------------------------

RUNNING = GoalStatus(chat_id="x", status="running", started_at=1_700_000_000.5)
IDLE = GoalStatus(chat_id="x", status="idle")
STATE = GoalState(chat_id="x", goal_state={"objective": "ship"})


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], []),
        ([Message(chat_id="x", text="t")], []),
        ([STATE], [STATE]),
        ([RUNNING], [RUNNING]),
        ([RUNNING, STATE], [STATE, RUNNING]),  # goal_state first
        ([STATE, RUNNING, IDLE], [STATE]),
        ([RUNNING, IDLE, RUNNING], [RUNNING]),
        (
            [RUNNING, GoalStatus(chat_id="x", status="running", started_at=2.0)],
            [GoalStatus(chat_id="x", status="running", started_at=2.0)],
        ),
        # turn_end may carry the state the turn ended with; {} clears it
        (
            [STATE, TurnEnd(chat_id="x", goal_state={"objective": "done"})],
            [GoalState(chat_id="x", goal_state={"objective": "done"})],
        ),
        ([STATE, TurnEnd(chat_id="x", latency_ms=1)], [STATE]),
        ([STATE, TurnEnd(chat_id="x", goal_state={})], []),
        ([STATE, GoalState(chat_id="x", goal_state={})], []),
        # another chat's state is not this chat's
        ([GoalState(chat_id="y", goal_state={"g": 1})], []),
    ],
)
def test_hydration(events: list[AgentEvent], expected: list[AgentEvent]) -> None:
    hub: ChatHub[str] = ChatHub()
    for event in events:
        hub.targets(event)
    assert hub.hydration("x") == expected
    assert hub.is_running("x") is any(isinstance(e, GoalStatus) for e in expected)


def test_session_updated_stores_the_scope() -> None:
    hub: ChatHub[str] = ChatHub()
    hub.targets(SessionUpdated(chat_id="x", workspace_scope={"root": "/w"}))
    assert hub.chat("x").workspace_scope == {"root": "/w"}
    hub.targets(SessionUpdated(chat_id="x", scope="metadata"))  # unset: kept
    assert hub.chat("x").workspace_scope == {"root": "/w"}
    hub.targets(SessionUpdated(chat_id="x", workspace_scope=None))
    assert hub.chat("x").workspace_scope is None


# --- stream buffers ------------------------------------------------------------------


def test_streams_of_one_chat_never_mix() -> None:
    hub = hub_with({"a": ["x", "y"]})
    for chat_id, stream_id, text in [
        ("x", "s1", "a"),
        ("x", "s2", "1"),
        ("x", "s1", "b"),
        ("y", "s1", "Y"),
        ("x", "s2", "2"),
        ("x", None, "n"),
        ("x", "s1", "c"),
    ]:
        hub.targets(Delta(chat_id=chat_id, text=text, stream_id=stream_id))
    assert hub.finish_stream(StreamEnd(chat_id="x", stream_id="s1")) == "abc"
    assert hub.finish_stream(StreamEnd(chat_id="x", stream_id="s2")) == "12"
    assert hub.finish_stream(StreamEnd(chat_id="y", stream_id="s1")) == "Y"
    assert hub.finish_stream(StreamEnd(chat_id="x")) == "n"
    assert len(hub.streams) == 0


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"turn": 1, "part": "a"}, {"turn": 2, "part": "a"}),
        ([1, "a"], [1, "b"]),
        (1, "1"),
        (0, None),
        (True, 1),
        ("", None),
    ],
)
def test_any_json_stream_id(first: Any, second: Any) -> None:
    buffers = StreamBuffers()
    buffers.append("x", first, "one ")
    buffers.append("x", second, "two ")
    buffers.append("x", first, "three")
    assert buffers.finish("x", second) == "two "
    assert buffers.finish("x", first) == "one three"


def test_finish_returns_the_text_and_forgets_it() -> None:
    buffers = StreamBuffers()
    for chunk in ("Hello", ", ", "world"):
        buffers.append("x", "s", chunk)
    assert len(buffers) == 1
    assert buffers.finish("x", "s") == "Hello, world"
    assert len(buffers) == 0
    assert buffers.finish("x", "s") == ""  # never started / already ended
    buffers.append("x", "s", "again")  # the same id may start over
    assert buffers.finish("x", "s") == "again"


def test_max_streams_evicts_the_oldest() -> None:
    buffers = StreamBuffers(max_streams=2)
    buffers.append("x", "s1", "1")
    buffers.append("x", "s2", "2")
    buffers.append("x", "s1", "1")  # appending does not refresh its age
    buffers.append("x", "s3", "3")
    assert len(buffers) == 2
    assert buffers.finish("x", "s1") == ""
    assert (buffers.finish("x", "s2"), buffers.finish("x", "s3")) == ("2", "3")


@pytest.mark.parametrize(
    "chunks",
    [
        ["12345678", "abc", "z"],
        ["1234567890", "z"],
        ["12345", "67890", "x", "y"],
        ["12345678901", "z"],
    ],
)
def test_max_chars_stops_growth(chunks: list[str]) -> None:
    buffers = StreamBuffers(max_chars=10)
    for chunk in chunks:
        buffers.append("x", "s", chunk)
    text = buffers.finish("x", "s")
    # Bounded, and what is kept is the start of the stream: once it stops
    # growing, later chunks never land after a hole.
    assert len(text) <= 10
    assert "".join(chunks).startswith(text)


# --- chat state bounds -------------------------------------------------------------


def test_eviction_keeps_chats_with_subscribers_or_a_running_turn() -> None:
    hub = hub_with({"a": ["kept"]}, max_chats=3)
    hub.targets(GoalStatus(chat_id="busy", status="running", started_at=5.0))
    for n in range(10):
        hub.chat(f"idle-{n}")
    assert len(hub.chats) <= 3
    assert list(hub.subscribers("kept")) == ["a"]
    assert hub.hydration("busy") == [
        GoalStatus(chat_id="busy", status="running", started_at=5.0)
    ]
    assert "idle-9" in hub.chats  # the newest idle chat is the one kept


def test_subscribing_when_every_kept_chat_is_busy() -> None:
    # Chats with subscribers are never evicted; the chat being subscribed to
    # now must not be either, or the connection would silently get nothing.
    hub = hub_with({"a": ["c1", "c2"]}, max_chats=2)
    hub.subscribe("a", "c3")
    for chat_id in ("c1", "c2", "c3"):
        assert list(hub.subscribers(chat_id)) == ["a"], chat_id
    assert list(hub.targets(Message(chat_id="c3", text="t"))) == ["a"]


def test_idle_chat_is_forgotten_when_its_last_subscriber_leaves() -> None:
    hub = hub_with({"a": ["quiet", "stateful"]})
    hub.targets(GoalState(chat_id="stateful", goal_state={"g": 1}))
    hub.unregister("a")
    assert "quiet" not in hub.chats
    assert hub.hydration("stateful") == [
        GoalState(chat_id="stateful", goal_state={"g": 1})
    ]
