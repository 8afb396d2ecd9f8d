"""build_webui_thread: stored events + user messages -> nanobot's UI rows.

Pure: events go in as the JSON clients received, rows come out as the UI
keeps them in memory. Each test names what the UI would show after a reload.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import hypothesis.strategies as st
from hypothesis import given

from trio_channel.http.webui_thread import (
    SCHEMA_VERSION,
    ThreadUserMessage,
    WebuiThreadBuilder,
    build_webui_thread,
    media_kind,
)

CHAT = "c1"
T0 = 1_780_000_000.25  # Unix seconds
T0_MS = 1_780_000_000_250


def ev(seq: int, event: str, **fields: Any) -> tuple[int, bytes]:
    payload = {"event": event, "chat_id": CHAT, **fields, "seq": seq}
    return seq, json.dumps(payload).encode()


def said(after_seq: int, content: str, at: float = T0, **kw: Any) -> ThreadUserMessage:
    return ThreadUserMessage(
        after_seq=after_seq, at=at, client_id="webui-1", content=content, **kw
    )


def sign(path: str) -> str | None:
    return None if "gone" in path else "/api/media/sig/" + path.rsplit("/", 1)[-1]


def thread(
    events: list[tuple[int, bytes]],
    users: Sequence[ThreadUserMessage] = (),
    **kw: Any,
) -> dict[str, Any]:
    return build_webui_thread(CHAT, events, users, media_url=sign, **kw)


def rows(*args: Any, **kw: Any) -> list[dict[str, Any]]:
    return thread(*args, **kw)["messages"]  # type: ignore[no-any-return]


def shape(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


# --- the envelope -----------------------------------------------------------------


def test_an_empty_chat() -> None:
    body = thread([], workspace_scope={"project_path": "/w"})
    assert body == {
        "schemaVersion": SCHEMA_VERSION,
        "sessionKey": "websocket:c1",
        "messages": [],
        "workspace_scope": {"project_path": "/w"},
        "completed_turn_ids": [],
        "has_pending_tool_calls": False,
    }
    assert SCHEMA_VERSION == 3


def test_a_running_turn_is_reported_pending() -> None:
    body = thread([ev(1, "delta", text="half")], [said(0, "go")], running=True)
    assert body["has_pending_tool_calls"] is True
    assert shape(body["messages"]) == [("user", "go"), ("assistant", "half")]


# --- one row per user message and per reply ---------------------------------------


def test_a_question_and_its_answer() -> None:
    messages = rows(
        [ev(1, "message", text="hello back"), ev(2, "turn_end", latency_ms=1234)],
        [said(0, "hello", at=T0)],
    )
    assert messages == [
        {"id": "user-0-0", "role": "user", "content": "hello", "createdAt": T0_MS},
        {
            "id": "agent-1",
            "role": "assistant",
            "content": "hello back",
            "createdAt": T0_MS + 1234,
            "latencyMs": 1234,
        },
    ]


def test_a_stream_is_assembled_into_one_answer() -> None:
    events = [ev(i, "delta", text=f"chunk {i} ", stream_id="s") for i in range(1, 51)]
    events += [ev(51, "stream_end", stream_id="s"), ev(52, "turn_end")]
    messages = rows(events, [said(0, "stream:50")])
    assert shape(messages) == [
        ("user", "stream:50"),
        ("assistant", "".join(f"chunk {i} " for i in range(1, 51))),
    ]
    assert messages[1]["id"] == "agent-1"
    assert "latencyMs" not in messages[1]


def test_a_rewritten_stream_end_replaces_the_deltas() -> None:
    events = [
        ev(1, "delta", text="![x](shot.png)"),
        ev(2, "stream_end", text="![x](/api/media/a/b)"),
        ev(3, "stream_end", stream_id="late", text="only an end"),
    ]
    assert shape(rows(events)) == [
        ("assistant", "![x](/api/media/a/b)\n\nonly an end"),
    ]


def test_interleaved_streams_never_mix() -> None:
    events = [
        ev(1, "delta", text="alpha ", stream_id="a"),
        ev(2, "delta", text="beta ", stream_id="b"),
        ev(3, "delta", text="one", stream_id="a"),
        ev(4, "delta", text="two", stream_id="b"),
        ev(5, "stream_end", stream_id="b"),
        ev(6, "stream_end", stream_id="a"),
        ev(7, "turn_end", latency_ms=5),
    ]
    assert shape(rows(events, [said(0, "two streams")])) == [
        ("user", "two streams"),
        ("assistant", "alpha one\n\nbeta two"),
    ]


def test_stream_ids_of_any_json_type_are_told_apart() -> None:
    events = [
        ev(1, "delta", text="int", stream_id=1),
        ev(2, "delta", text="str", stream_id="1"),
        ev(3, "delta", text="none"),
        ev(4, "delta", text="!", stream_id=1),
        ev(5, "delta", text="?", stream_id=None),
    ]
    assert shape(rows(events)) == [("assistant", "int!\n\nstr\n\nnone?")]


def test_two_streams_one_after_the_other_stay_in_one_reply() -> None:
    events = [
        ev(1, "delta", text="first"),
        ev(2, "stream_end"),
        ev(3, "message", text="a whole message"),
        ev(4, "delta", text="second"),
        ev(5, "stream_end"),
        ev(6, "turn_end", latency_ms=90),
    ]
    messages = rows(events, [said(0, "q")])
    assert shape(messages) == [
        ("user", "q"),
        ("assistant", "first\n\na whole message\n\nsecond"),
    ]
    assert messages[1]["latencyMs"] == 90


def test_each_turn_is_its_own_reply() -> None:
    events = [
        ev(1, "message", text="a1"),
        ev(2, "turn_end", latency_ms=10),
        ev(3, "delta", text="a2"),
        ev(4, "stream_end"),
        ev(5, "turn_end", latency_ms=20),
    ]
    messages = rows(events, [said(0, "q1", at=T0), said(2, "q2", at=T0 + 60)])
    assert shape(messages) == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
    ]
    assert [m["id"] for m in messages] == ["user-0-0", "agent-1", "user-2-0", "agent-3"]
    assert [m["createdAt"] for m in messages] == [
        T0_MS,
        T0_MS + 10,
        T0_MS + 60_000,
        T0_MS + 60_020,
    ]


def test_messages_sent_before_the_agent_answered_keep_their_order() -> None:
    events = [ev(1, "message", text="answer to both"), ev(2, "turn_end")]
    users = [said(2, "three", at=T0 + 2), said(0, "one"), said(0, "two", at=T0 + 1)]
    messages = rows(events, users)  # placed by after_seq; ties keep their order
    assert shape(messages) == [
        ("user", "one"),
        ("user", "two"),
        ("assistant", "answer to both"),
        ("user", "three"),
    ]
    assert [m["id"] for m in messages] == [
        "user-0-0",
        "user-0-1",
        "agent-1",
        "user-2-0",
    ]


def test_a_user_message_mid_reply_splits_it_but_not_its_stream() -> None:
    """A message sent while the agent streams: the stream stays in the bubble
    it started in; what comes after the message is a reply of its own."""
    events = [
        ev(1, "delta", text="still "),
        ev(2, "delta", text="going"),
        ev(3, "message", text="and this came after"),
        ev(4, "stream_end"),
        ev(5, "turn_end", latency_ms=7),
    ]
    messages = rows(events, [said(0, "first"), said(1, "meanwhile")])
    assert shape(messages) == [
        ("user", "first"),
        ("assistant", "still going"),
        ("user", "meanwhile"),
        ("assistant", "and this came after"),
    ]
    assert "latencyMs" not in messages[1]
    assert messages[3]["latencyMs"] == 7


def test_an_agent_message_before_any_user_message() -> None:
    messages = rows([ev(1, "message", text="good morning")], created_at=T0)
    assert messages == [
        {
            "id": "agent-1",
            "role": "assistant",
            "content": "good morning",
            "createdAt": T0_MS + 1,
        }
    ]


def test_a_question_without_an_answer_yet() -> None:
    assert shape(rows([], [said(0, "anyone?")])) == [("user", "anyone?")]


def test_an_empty_turn_shows_only_the_question() -> None:
    messages = rows([ev(1, "turn_end", latency_ms=3)], [said(0, "hm")])
    assert shape(messages) == [("user", "hm")]


# --- reasoning, tools, file edits -------------------------------------------------


def test_reasoning_is_assembled_on_the_answer() -> None:
    events = [
        ev(1, "reasoning_delta", text="Let me "),
        ev(2, "reasoning_delta", text="think."),
        ev(3, "reasoning_end"),
        ev(4, "reasoning_delta", text="Second thought.", stream_id="r2"),
        ev(5, "reasoning_end", stream_id="r2"),
        ev(6, "delta", text="The answer."),
        ev(7, "stream_end"),
        ev(8, "turn_end", latency_ms=1200),
    ]
    answer = rows(events, [said(0, "why?")])[1]
    assert answer["reasoning"] == "Let me think.\n\nSecond thought."
    assert answer["content"] == "The answer."
    assert answer["latencyMs"] == 1200


def test_reasoning_without_an_answer_is_kept() -> None:
    answer = rows([ev(1, "reasoning_delta", text="hmm"), ev(2, "turn_end")])[0]
    assert (answer["role"], answer["content"], answer["reasoning"]) == (
        "assistant",
        "",
        "hmm",
    )


def test_tool_hints_and_file_edits_become_one_activity_row_before_the_answer() -> None:
    editing = {"call_id": "c1", "tool": "edit_file", "path": "src/app.py"}
    events = [
        ev(1, "message", text="reading files", kind="tool_hint"),
        ev(2, "file_edit", edits=[{**editing, "status": "editing", "added": 0}]),
        ev(3, "message", text="", kind="progress", tool_events=[{"name": "grep"}]),
        ev(4, "file_edit", edits=[{**editing, "status": "done", "added": 3}]),
        ev(5, "file_edit", edits=[{"tool": "write_file", "path": "README.md"}, 7]),
        ev(6, "message", text="Fixed it."),
        ev(7, "turn_end", latency_ms=40),
    ]
    messages = rows(events, [said(0, "fix it")])
    assert [m["role"] for m in messages] == ["user", "tool", "assistant"]
    activity = messages[1]
    assert activity == {
        "id": "activity-1",
        "role": "tool",
        "kind": "trace",
        "content": "reading files",
        "traces": ["reading files"],
        "activitySegmentId": "activity-1",
        "createdAt": T0_MS + 1,
        "fileEdits": [
            {**editing, "status": "done", "added": 3},
            {"tool": "write_file", "path": "README.md"},
        ],
        "toolEvents": [{"name": "grep"}],
    }
    assert messages[2]["content"] == "Fixed it."


def test_a_reply_of_only_tool_activity() -> None:
    events = [ev(1, "message", text="running tests", kind="progress")]
    messages = rows(events, [said(0, "test")], running=True)
    assert [(m["role"], m.get("kind")) for m in messages] == [
        ("user", None),
        ("tool", "trace"),
    ]


def test_a_reasoning_message_is_reasoning() -> None:
    answer = rows([ev(1, "message", text="pondering", kind="reasoning")])[0]
    assert answer["reasoning"] == "pondering"


# --- media ------------------------------------------------------------------------


def test_user_attachments_are_signed_and_lost_ones_named() -> None:
    user = said(0, "look", media=("/data/media/a.png", "/data/media/gone.png"))
    row = rows([], [user])[0]
    assert row["media"] == [
        {"kind": "image", "name": "a.png", "url": "/api/media/sig/a.png"},
        {"kind": "image", "name": "gone.png"},
    ]
    assert row["images"] == [
        {"url": "/api/media/sig/a.png", "name": "a.png"},
        {"name": "gone.png"},
    ]


def test_a_video_attachment_is_not_an_image() -> None:
    row = rows([], [said(0, "clip", media=("/m/v.mp4",))])[0]
    assert row["media"] == [{"kind": "video", "name": "v.mp4", "url": sign("/m/v.mp4")}]
    assert "images" not in row


def test_agent_media_urls_are_used_as_signed() -> None:
    events = [
        ev(
            1,
            "message",
            text="here",
            media=["/secret/path/out.png"],
            media_urls=[
                {"url": "/api/media/s1/p1", "name": "out.png"},
                {"url": "/api/media/s2/p2", "name": "clip.webm"},
                {"url": "", "name": "no url"},
                "junk",
            ],
        ),
        ev(2, "message", text="", media_urls=[{"url": "/api/media/s3/p3"}]),
    ]
    answer = rows(events)[0]
    assert answer["content"] == "here"
    assert answer["media"] == [
        {"kind": "image", "url": "/api/media/s1/p1", "name": "out.png"},
        {"kind": "video", "url": "/api/media/s2/p2", "name": "clip.webm"},
        {"kind": "file", "url": "/api/media/s3/p3", "name": ""},
    ]
    assert "/secret/path" not in json.dumps(answer)


@given(st.text(max_size=30))
def test_media_kind_is_one_of_three(name: str) -> None:
    assert media_kind(name) in {"image", "video", "file"}
    assert media_kind("x.JPEG") == "image"
    assert media_kind("x.MOV") == "video"


# --- interrupted turns, turn ids --------------------------------------------------


def test_an_interrupted_reply_keeps_what_was_shown() -> None:
    events = [
        ev(1, "delta", text="half an ans"),
        ev(2, "turn_end", interrupted=True),
        ev(3, "delta", text="the whole answer"),
        ev(4, "stream_end"),
        ev(5, "turn_end", latency_ms=50),
    ]
    body = thread(events, [said(0, "q", turn_id="t1")])
    messages = body["messages"]
    assert shape(messages) == [
        ("user", "q"),
        ("assistant", "half an ans"),
        ("assistant", "the whole answer"),
    ]
    assert messages[1]["interrupted"] is True
    assert "interrupted" not in messages[2]
    assert body["completed_turn_ids"] == ["t1"]


def test_turn_ids_tie_rows_to_their_turn() -> None:
    events = [
        ev(1, "message", text="a", kind="tool_hint"),
        ev(2, "message", text="b"),
        ev(3, "turn_end", interrupted=True),
    ]
    body = thread(events, [said(0, "q", turn_id="turn-9"), said(3, "no id")])
    assert [m.get("turnId") for m in body["messages"]] == [
        "turn-9",
        "turn-9",
        "turn-9",
        None,
    ]
    assert body["completed_turn_ids"] == []


# --- robustness -------------------------------------------------------------------


def test_unknown_and_broken_events_are_ignored() -> None:
    events = [
        (1, b"not json"),
        (2, b"[1, 2]"),
        (3, b'{"no": "event"}'),
        ev(4, "goal_state", goal_state={"active": True}),
        ev(5, "something_new", text="?"),
        ev(6, "delta", text=7),
        ev(7, "delta", text=""),
        ev(8, "file_edit", edits="nope"),
        ev(9, "message", text=None),
        ev(10, "message", text="visible", latency_ms=True),
        ev(11, "turn_end", latency_ms=-5),
    ]
    messages = rows(events)
    assert messages == [
        {
            "id": "agent-10",
            "role": "assistant",
            "content": "visible",
            "createdAt": 1,
        }
    ]


def test_ids_are_stable_when_old_history_is_trimmed() -> None:
    events = [
        ev(1, "message", text="old"),
        ev(2, "turn_end"),
        ev(3, "message", text="new"),
        ev(4, "turn_end"),
    ]
    users = [said(0, "q1"), said(2, "q2")]
    full = rows(events, users)
    trimmed = rows(events[2:], users[1:])
    assert trimmed == full[2:]


_kinds = st.sampled_from(
    [
        *("delta", "stream_end", "reasoning_delta", "reasoning_end", "message"),
        *("file_edit", "turn_end", "goal_status"),
    ]
)
_event_fields = st.fixed_dictionaries(
    {},
    optional={
        "text": st.one_of(st.text(max_size=5), st.integers(), st.none()),
        "stream_id": st.one_of(st.none(), st.integers(0, 2), st.text(max_size=2)),
        "kind": st.sampled_from(["tool_hint", "progress", "reasoning", "x"]),
        "latency_ms": st.one_of(st.integers(-2, 10**6), st.booleans()),
        "interrupted": st.booleans(),
        "edits": st.lists(
            st.dictionaries(st.sampled_from(["call_id", "path"]), st.text(max_size=2)),
            max_size=2,
        ),
        "media_urls": st.lists(
            st.fixed_dictionaries({"url": st.text(max_size=3)}), max_size=2
        ),
    },
)


@given(
    st.lists(st.tuples(_kinds, _event_fields), max_size=25),
    st.lists(st.tuples(st.integers(0, 26), st.text(max_size=4)), max_size=5),
    st.integers(0, 25),
)
def test_any_history_gives_rows_with_unique_ids(
    raw: list[tuple[str, dict[str, Any]]], said_at: list[tuple[int, str]], cut: int
) -> None:
    events = [ev(seq, kind, **fields) for seq, (kind, fields) in enumerate(raw, 1)]
    users = [said(after, text) for after, text in said_at]
    body = thread(events, users)
    json.dumps(body)  # JSON-ready
    # Read from the store in pages, it is the same thread.
    builder = WebuiThreadBuilder(CHAT, users, media_url=sign)
    builder.feed(events[:cut])
    builder.feed(events[cut:])
    assert builder.finish() == body
    ids = [m["id"] for m in body["messages"]]
    assert len(ids) == len(set(ids))
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == [
        text for _, text in sorted(said_at, key=lambda u: u[0])
    ]
    for m in body["messages"]:
        assert isinstance(m["createdAt"], int)
        assert m["role"] in {"user", "assistant", "tool"}
