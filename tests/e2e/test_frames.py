"""PROTOCOL 2-4 over a real socket: client frames in, server events out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from ._client import (
    Frame,
    assert_echo_turn,
    assert_seqs,
    attached,
    connect,
    echo,
    ready,
    recv,
    send,
    turn,
)
from .conftest import Daemon, DaemonFactory

BIG_SCOPE = {"notes": "x" * 5000}


@pytest.fixture(scope="module")
def daemon(spawn_module_daemon: DaemonFactory) -> Daemon:
    return spawn_module_daemon("--no-require-token")


@pytest.fixture
def client(daemon: Daemon) -> Iterator[tuple[ClientConnection, str]]:
    """An open connection and its default chat."""
    with connect(daemon.ws_url("client_id=frames")) as ws:
        yield ws, ready(ws)["chat_id"]


# --- legacy frames -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("hello there", "hello there"),
        ("  padded \n", "padded"),
        ('  {"not": json  ', '{"not": json'),  # starts with "{" but not JSON
        ("[1, 2]", "[1, 2]"),  # JSON, but not an object
        ('"a string"', '"a string"'),
    ],
)
def test_legacy_text_is_echoed_on_the_default_chat(client, text, content):
    ws, chat = client
    ws.send(text)
    assert_echo_turn(turn(ws, chat), chat, content, first_seq=1)


@pytest.mark.parametrize(
    ("frame", "content"),
    [
        ({"content": "hi"}, "hi"),
        ({"text": "from text"}, "from text"),
        ({"message": "from message"}, "from message"),
        ({"content": "  ", "text": 5, "message": "third"}, "third"),
        ({"content": " keep spaces "}, " keep spaces "),  # passed unstripped
        ({"type": 7, "content": "type is not a string"}, "type is not a string"),
    ],
)
def test_legacy_json_objects(client, frame, content):
    ws, chat = client
    send(ws, frame)
    assert_echo_turn(turn(ws, chat), chat, content, first_seq=1)


def test_ignored_legacy_frames_produce_nothing(client):
    ws, chat = client
    for text in ["", "   \n\t", "{}", '{"content": "   "}', '{"content": 5}']:
        ws.send(text)
    ws.send("after the ignored ones")
    assert_echo_turn(turn(ws, chat), chat, "after the ignored ones")


def test_binary_frames_are_utf8_text_and_invalid_utf8_is_ignored(client):
    ws, chat = client
    ws.send(b"\xff\xfe\xfd not utf-8")
    ws.send("caf\u00e9 binary".encode())
    assert_echo_turn(turn(ws, chat), chat, "caf\u00e9 binary")
    echo(ws, chat, "still open")


# --- typed envelopes ---------------------------------------------------------


def test_new_chat_attaches_and_reports_the_scope(client):
    ws, default = client
    send(ws, {"type": "new_chat"})
    attached = recv(ws)
    # A new chat has no log yet: no epoch, last_seq 0 (PROTOCOL 5).
    assert attached.keys() == {"event", "chat_id", "last_seq"}
    assert (attached["event"], attached["last_seq"]) == ("attached", 0)
    chat = attached["chat_id"]
    assert chat != default
    assert recv(ws) == {
        "event": "session_updated",
        "chat_id": chat,
        "scope": "metadata",
        "workspace_scope": None,
    }
    send(ws, {"type": "message", "chat_id": chat, "content": "in the new chat"})
    assert_echo_turn(turn(ws, chat), chat, "in the new chat")
    send(ws, {"type": "new_chat", "workspace_scope": {"root": "/tmp/w"}})
    other = recv(ws)["chat_id"]
    assert recv(ws) == {
        "event": "session_updated",
        "chat_id": other,
        "scope": "metadata",
        "workspace_scope": {"root": "/tmp/w"},
    }


def test_message_to_any_valid_chat_id_subscribes(client):
    ws, _ = client
    chat = "Any_chat:id-" + "9" * 52  # 64 characters, all allowed
    send(ws, {"type": "message", "chat_id": chat, "content": "named chat"})
    assert_echo_turn(turn(ws, chat), chat, "named chat", first_seq=1)


def test_attach_shares_a_chat_between_connections(daemon: Daemon):
    with (
        connect(daemon.ws_url("client_id=one")) as one,
        connect(daemon.ws_url("client_id=two")) as two,
    ):
        ready(one)
        ready(two)
        send(one, {"type": "new_chat"})
        chat = recv(one)["chat_id"]
        recv(one)  # session_updated
        send(one, {"type": "message", "chat_id": chat, "content": "sleep:1 slow"})
        running = recv(one)
        assert running["event"] == "goal_status"
        assert running["status"] == "running"
        # Attaching mid-turn hydrates: the same running status and start.
        send(two, {"type": "attach", "chat_id": chat})
        attached(two, chat, 0)  # the user's message is stored: the log exists
        assert recv(two) == running
        rest = turn(one, chat)
        assert turn(two, chat) == rest
        assert_echo_turn([running, *rest], chat, "sleep:1 slow", first_seq=1)
        # Either side's message reaches both, with the same seq; the other
        # side sees the user's message itself first (PROTOCOL 4).
        for sender, other, text, first_seq in [
            (two, one, "from two", 3),
            (one, two, "from one", 5),
        ]:
            send(sender, {"type": "message", "chat_id": chat, "content": text})
            assert recv(other) == {
                "event": "user_message",
                "chat_id": chat,
                "text": text,
                "starts_turn": True,
            }
            frames = turn(sender, chat)
            assert turn(other, chat) == frames
            assert_echo_turn(frames, chat, text, first_seq)


def test_set_workspace_scope_answers_the_sender_only(daemon: Daemon):
    scope = {"root": "/tmp/project"}
    with (
        connect(daemon.ws_url("client_id=setter")) as one,
        connect(daemon.ws_url("client_id=watcher")) as two,
    ):
        ready(one)
        ready(two)
        chat = "scoped-chat"
        send(two, {"type": "attach", "chat_id": chat})
        attached(two, chat, 0, has_log=False)
        # Not while a turn is running.
        send(one, {"type": "message", "chat_id": chat, "content": "sleep:0.5 busy"})
        running = recv(one)
        assert running["status"] == "running"
        change = {"type": "set_workspace_scope", "chat_id": chat}
        send(one, {**change, "workspace_scope": scope})
        assert recv(one) == {
            "event": "error",
            "detail": "workspace_scope_rejected",
            "reason": "chat_running",
            "chat_id": chat,
        }
        assert turn(one, chat)[-1]["status"] == "idle"
        assert recv(two)["event"] == "user_message"
        assert turn(two, chat)[0] == running
        send(one, {**change, "workspace_scope": scope})
        assert recv(one) == {
            "event": "session_updated",
            "chat_id": chat,
            "scope": "metadata",
            "workspace_scope": scope,
        }
        # The other subscriber got no session_updated: its next frame is the
        # next turn, which the agent can only start after the update.
        send(one, {"type": "message", "chat_id": chat, "content": "after"})
        assert recv(two)["text"] == "after"  # the user's message
        assert_echo_turn(turn(two, chat), chat, "after", first_seq=3)


def test_a_stream_arrives_in_order_with_one_stream_id(client):
    ws, chat = client
    ws.send("stream:20")
    frames = turn(ws, chat)
    assert [f["event"] for f in frames] == [
        "goal_status",
        *["delta"] * 20,
        "stream_end",
        "turn_end",
        "goal_status",
    ]
    deltas = frames[1:21]
    stream_id = deltas[0]["stream_id"]
    assert stream_id is not None
    # The connection's default chat is new: its first persisted event is 1.
    for i, delta in enumerate(deltas, start=1):
        assert delta == {
            "event": "delta",
            "chat_id": chat,
            "text": f"chunk {i} ",
            "stream_id": stream_id,
            "seq": i,
        }
    # No markdown rewrite changed the text, so it is not repeated.
    assert frames[21] == {
        "event": "stream_end",
        "chat_id": chat,
        "stream_id": stream_id,
        "seq": 21,
    }
    assert frames[22]["seq"] == 22
    assert_seqs(frames, first=1)


# --- soft errors -------------------------------------------------------------


#: The text of a ``reason`` is the policy's own; only its presence is contract.
REASON = "<reason>"


def _scope_error(chat_id: str | None) -> Frame:
    error = {"event": "error", "detail": "workspace_scope_rejected", "reason": REASON}
    return error if chat_id is None else {**error, "chat_id": chat_id}


SOFT_ERRORS: list[tuple[Frame, Frame]] = [
    (
        {"type": "message", "chat_id": "bad id!", "content": "x"},
        {"event": "error", "detail": "invalid chat_id"},
    ),
    (
        {"type": "message", "chat_id": "x" * 65, "content": "x"},
        {"event": "error", "detail": "invalid chat_id"},
    ),
    (
        {"type": "message", "content": "no chat"},
        {"event": "error", "detail": "invalid chat_id"},
    ),
    (
        {"type": "attach", "chat_id": ""},
        {"event": "error", "detail": "invalid chat_id"},
    ),
    (
        {"type": "message", "chat_id": "c1", "content": 5},
        {"event": "error", "detail": "missing content"},
    ),
    (
        {"type": "message", "chat_id": "c1"},
        {"event": "error", "detail": "missing content"},
    ),
    (
        {"type": "message", "chat_id": "c1", "content": " \n "},
        {"event": "error", "detail": "missing content"},
    ),
    ({"type": "nope"}, {"event": "error", "detail": "unknown type: 'nope'"}),
    ({"type": "it's"}, {"event": "error", "detail": 'unknown type: "it\'s"'}),
    ({"type": "new_chat", "workspace_scope": BIG_SCOPE}, _scope_error(None)),
    (
        {"type": "set_workspace_scope", "chat_id": "c2", "workspace_scope": BIG_SCOPE},
        _scope_error("c2"),
    ),
    (
        {
            "type": "message",
            "chat_id": "c3",
            "content": "never reaches the agent",
            "workspace_scope": BIG_SCOPE,
        },
        _scope_error("c3"),
    ),
]


def test_soft_errors_answer_the_sender_and_keep_the_connection(client):
    ws, chat = client
    for frame, _ in SOFT_ERRORS:
        send(ws, frame)
    ws.send("after the errors")
    # Exactly the errors, in order, then the echo: nothing reached the agent.
    frames = [recv(ws) for _ in SOFT_ERRORS]
    for frame in frames:
        if "reason" in frame:
            assert isinstance(frame["reason"], str)
            assert frame["reason"]
            frame["reason"] = REASON
    assert frames == [error for _, error in SOFT_ERRORS]
    assert_echo_turn(turn(ws, chat), chat, "after the errors")


DEPTH = 100_000


@pytest.mark.parametrize(
    "text",
    [
        "[" * DEPTH,
        '{"a":' + "[" * DEPTH,
        '{"content": "x", "a": ' + "{" * DEPTH,
        '{"type":"message","chat_id":"c1","content":"x","webui":'
        + "[" * DEPTH
        + "]" * DEPTH
        + "}",
    ],
    ids=["bare-list", "list-in-object", "objects", "valid-but-deep"],
)
def test_pathological_json_never_closes_the_connection(client, text):
    ws, _ = client
    ws.send(text)
    # The agent may answer that frame on another chat, concurrently: follow
    # only a chat of our own.
    chat = "after-pathological"
    send(ws, {"type": "message", "chat_id": chat, "content": "survived"})
    ours = [f for f in turn(ws, chat) if f.get("chat_id") == chat]
    assert_echo_turn(ours, chat, "survived")


# --- max_message_bytes -------------------------------------------------------


@pytest.fixture(scope="module")
def small(spawn_module_daemon: DaemonFactory) -> Daemon:
    return spawn_module_daemon("--no-require-token", "--max-message-bytes", "2048")


def _assert_closed_1009(ws: ClientConnection) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(10):
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009
    assert ws.close_code == 1009


@pytest.mark.parametrize(
    "message",
    [
        "x" * 2049,
        "\u00e9" * 1100,  # 1,100 characters but 2,200 bytes
        "\u4e2d" * 700,  # 2,100 bytes
        b"y" * 2049,
        ["a" * 1000, "b" * 1000, "c" * 100],  # fragments, 2,100 once reassembled
    ],
    ids=["ascii", "two-byte", "three-byte", "binary", "fragmented"],
)
def test_a_message_over_the_limit_closes_with_1009(small: Daemon, message):
    with connect(small.ws_url("client_id=big")) as ws:
        chat = ready(ws)["chat_id"]
        echo(ws, chat, "z" * 2048)  # exactly at the limit is fine
        ws.send(message)
        _assert_closed_1009(ws)


def test_the_limit_counts_bytes_not_characters(small: Daemon):
    with connect(small.ws_url("client_id=big")) as ws:
        chat = ready(ws)["chat_id"]
        echo(ws, chat, "\u00e9" * 1024)  # 1,024 characters, 2,048 bytes
        ws.send("\u00e9" * 1024 + "x")  # 1,025 characters, 2,049 bytes
        _assert_closed_1009(ws)
