"""ChatHub fan-out, cursors, hydration state and bounds; StreamBuffers.

PROTOCOL 3.4 and 4. Subscribers are recorders: what they were handed and
which chats they were told to catch up.
"""

from __future__ import annotations

from typing import Any

import pytest

from trio_channel.core.delivery import Resume
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


class Rec(str):
    """A subscriber named like a string; ``room`` frames fit its queue."""

    def __new__(cls, name: str, room: int = 10**9) -> Rec:
        sub = super().__new__(cls, name)
        sub.frames: list[bytes] = []  # type: ignore[misc]
        sub.behind: list[str] = []  # type: ignore[misc]
        sub.room = room  # type: ignore[attr-defined]
        return sub

    def deliver(self, frame: bytes) -> bool:
        if len(self.frames) >= self.room:  # type: ignore[attr-defined]
            return False
        self.frames.append(frame)  # type: ignore[attr-defined]
        return True

    def fell_behind(self, chat_id: str) -> None:
        self.behind.append(chat_id)  # type: ignore[attr-defined]

    def log_reset(self, chat_id: str, epoch: str) -> None:
        self.frames.append(f"reset {epoch}".encode())  # type: ignore[attr-defined]


def hub_with(
    subs: dict[str, list[str]], **kw: Any
) -> tuple[ChatHub[Rec], dict[str, Rec]]:
    """Register each connection in order, then subscribe it to its chats."""
    hub: ChatHub[Rec] = ChatHub(**kw)
    recs = {name: Rec(name) for name in subs}
    for name, chats in subs.items():
        hub.register(recs[name])
        for chat_id in chats:
            hub.subscribe(recs[name], chat_id)
    return hub, recs


# --- fan-out ---------------------------------------------------------------------


def test_stored_events_go_to_subscribers_in_subscription_order() -> None:
    hub: ChatHub[Rec] = ChatHub()
    a, b, c, d = (Rec(n) for n in "abcd")
    for sub in (a, b, c, d):
        hub.register(sub)
    for sub in (c, a, b):
        hub.subscribe(sub, "x")
    hub.subscribe(d, "y")
    hub.subscribe(c, "x")  # subscribing again keeps the original place
    assert list(hub.subscribers("x")) == ["c", "a", "b"]
    assert hub.publish("x", 1, b"one") == 3
    assert [s.frames for s in (a, b, c, d)] == [[b"one"]] * 3 + [[]]


def test_the_cursor_rule() -> None:
    hub, recs = hub_with({"a": ["x"]})
    a = recs["a"]
    assert hub.publish("x", 1, b"1") == 1
    assert hub.publish("x", 1, b"1 again") == 0  # duplicate: dropped
    assert hub.publish("x", 3, b"3") == 0  # a gap: catch up from the store
    assert a.frames == [b"1"] and a.behind == ["x"]
    cursor = hub.cursor(a, "x")
    assert cursor is not None and not cursor.live and cursor.next_seq == 2
    assert hub.publish("x", 4, b"4") == 0  # catching up: the log has it
    assert hub.chat("x").published_seq == 4


def test_a_full_queue_falls_behind_and_keeps_its_place() -> None:
    hub: ChatHub[Rec] = ChatHub()
    full, fine = Rec("full", room=1), Rec("fine")
    for sub in (full, fine):
        hub.register(sub)
        hub.subscribe(sub, "x")
    assert hub.publish("x", 1, b"1") == 2
    assert hub.publish("x", 2, b"2") == 1
    assert full.frames == [b"1"] and full.behind == ["x"]
    cursor = hub.cursor(full, "x")
    assert cursor is not None and (cursor.live, cursor.next_seq) == (False, 2)
    assert cursor.rehydrate  # status events may be missed while behind
    assert fine.frames == [b"1", b"2"]


def test_a_chat_nobody_watches_is_not_created_by_a_publish() -> None:
    hub, _ = hub_with({"a": ["x"]})
    assert hub.publish("elsewhere", 1, b"t") == 0
    assert "elsewhere" not in hub.chats


def test_a_subscriber_joins_after_what_was_published() -> None:
    hub, _recs = hub_with({"a": ["x"]})
    hub.publish("x", 1, b"1")
    late = Rec("late")
    hub.register(late)
    hub.subscribe(late, "x")
    assert hub.publish("x", 2, b"2") == 2
    assert late.frames == [b"2"]


def test_resume_starts_a_catch_up() -> None:
    hub: ChatHub[Rec] = ChatHub()
    a = Rec("a")
    hub.register(a)
    hub.subscribe(a, "x", Resume(5, replay=True))
    cursor = hub.cursor(a, "x")
    assert cursor is not None and (cursor.live, cursor.next_seq) == (False, 5)
    assert a.behind == ["x"]
    hub.subscribe(a, "x", Resume(9, replay=False))  # no replay: cursor kept
    assert hub.cursor(a, "x") is cursor


def test_broadcast_goes_to_live_subscribers_but_the_sender() -> None:
    hub: ChatHub[Rec] = ChatHub()
    a, b, c, full = Rec("a"), Rec("b"), Rec("c"), Rec("full", room=0)
    for sub in (a, b, c, full):
        hub.register(sub)
    for sub in (a, b, full):
        hub.subscribe(sub, "x")
    hub.subscribe(c, "x", Resume(1, replay=True))  # catching up
    assert hub.broadcast("x", b"status", skip=a) == 1
    assert (a.frames, b.frames, c.frames) == ([], [b"status"], [])
    assert full.behind == ["x"]  # hydration will bring the status back


def test_runtime_model_updated_goes_to_every_connection() -> None:
    hub, _recs = hub_with({"a": ["x"], "b": [], "c": ["y", "x"]})
    hub.observe(RuntimeModelUpdated(model_name="gpt-x", model_preset="fast"))
    assert hub.broadcast_all(b"model") == 3
    assert hub.model_name == "gpt-x"
    hub.observe(RuntimeModelUpdated(model_name="other"))
    assert hub.model_name == "other"


def test_unregister_cleans_every_chat() -> None:
    hub, recs = hub_with({"a": ["x", "y", "z"], "b": ["y"]})
    hub.unregister(recs["a"])
    assert [list(hub.subscribers(c)) for c in ("x", "y", "z")] == [[], ["b"], []]
    assert hub.broadcast_all(b"m") == 1
    assert "a" not in hub.connections
    hub.unregister(recs["a"])  # idempotent
    hub.unregister(Rec("never-registered"))


def test_subscribe_needs_register() -> None:
    hub: ChatHub[Rec] = ChatHub()
    with pytest.raises(KeyError):
        hub.subscribe(Rec("a"), "x")


def test_load_merges_what_the_store_keeps_once() -> None:
    hub: ChatHub[Rec] = ChatHub()
    hub.observe(GoalStatus(chat_id="x", status="running", started_at=3.0))
    hub.load("x", workspace_scope={"root": "/w"}, goal_state={"g": 1}, last_seq=7)
    chat = hub.chat("x")
    assert (chat.workspace_scope, chat.goal_state, chat.published_seq) == (
        {"root": "/w"},
        {"g": 1},
        7,
    )
    assert chat.running_since == 3.0
    hub.load("x", workspace_scope=None, goal_state=None, last_seq=5)
    assert (chat.workspace_scope, chat.published_seq) == ({"root": "/w"}, 7)


def test_forget_log_restarts_every_cursor() -> None:
    hub, recs = hub_with({"a": ["x"]})
    hub.publish("x", 1, b"1")
    hub.forget_log("x")
    assert hub.chat("x").published_seq == 0
    assert hub.publish("x", 1, b"new 1") == 1
    assert recs["a"].frames == [b"1", b"new 1"]


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
    hub, _ = hub_with({"watcher": ["x"]})  # a chat nobody watches is forgotten
    for event in events:
        hub.observe(event)
    assert hub.hydration("x") == expected
    assert hub.is_running("x") is any(isinstance(e, GoalStatus) for e in expected)


def test_session_updated_stores_the_scope() -> None:
    hub: ChatHub[str] = ChatHub()
    hub.observe(SessionUpdated(chat_id="x", workspace_scope={"root": "/w"}))
    assert hub.chat("x").workspace_scope == {"root": "/w"}
    hub.observe(SessionUpdated(chat_id="x", scope="metadata"))  # unset: kept
    assert hub.chat("x").workspace_scope == {"root": "/w"}
    hub.observe(SessionUpdated(chat_id="x", workspace_scope=None))
    assert hub.chat("x").workspace_scope is None


# --- stream buffers ------------------------------------------------------------------


def test_streams_of_one_chat_never_mix() -> None:
    hub, _ = hub_with({"a": ["x", "y"]})
    for chat_id, stream_id, text in [
        ("x", "s1", "a"),
        ("x", "s2", "1"),
        ("x", "s1", "b"),
        ("y", "s1", "Y"),
        ("x", "s2", "2"),
        ("x", None, "n"),
        ("x", "s1", "c"),
    ]:
        hub.observe(Delta(chat_id=chat_id, text=text, stream_id=stream_id))
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
    hub, _ = hub_with({"a": ["kept"]}, max_chats=3)
    hub.observe(GoalStatus(chat_id="busy", status="running", started_at=5.0))
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
    hub, recs = hub_with({"a": ["c1", "c2"]}, max_chats=2)
    hub.subscribe(recs["a"], "c3")
    for chat_id in ("c1", "c2", "c3"):
        assert list(hub.subscribers(chat_id)) == ["a"], chat_id
    assert hub.publish("c3", 1, b"t") == 1


def test_a_chat_is_forgotten_when_its_last_subscriber_leaves() -> None:
    # Its state is the store's (ChannelBackend.load_chat brings it back);
    # only a running turn keeps a chat with nobody watching.
    hub, recs = hub_with({"a": ["quiet", "stateful", "busy"]})
    hub.observe(GoalState(chat_id="stateful", goal_state={"g": 1}))
    hub.observe(GoalStatus(chat_id="busy", status="running", started_at=1.0))
    hub.unregister(recs["a"])
    assert set(hub.chats) == {"busy"}
    hub.observe(GoalStatus(chat_id="busy", status="idle"))
    assert hub.chats == {}


def test_a_new_epoch_resets_every_subscriber() -> None:
    # The store lost the log (a Redis restart without persistence) and a new
    # one started: seq 1 again, which the old cursors would drop silently.
    hub, recs = hub_with({"a": ["x"]})
    hub.load("x", workspace_scope=None, goal_state=None, last_seq=0, epoch="e1")
    for seq in (1, 2, 3):
        hub.publish("x", seq, b"old", "e1")
    assert hub.publish("x", 1, b"new 1", "e2") == 0
    a = recs["a"]
    assert a.frames[-1] == b"reset e2"
    cursor = hub.cursor(a, "x")
    assert cursor is not None and (cursor.live, cursor.next_seq) == (False, 1)
    assert a.behind == ["x"]  # it replays the new log from the store
    assert hub.chat("x").epoch == "e2"
