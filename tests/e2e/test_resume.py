"""PROTOCOL 4-5 (ext): ``seq`` and ``attach`` with ``since_seq``, including
across a restart of the daemon on the same data directory."""

from __future__ import annotations

from ._client import (
    Frame,
    assert_echo_turn,
    attached,
    connect,
    ready,
    recv,
    send,
    turn,
)
from .conftest import DaemonFactory


def _persisted(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if "seq" in f]


def test_attach_since_seq_replays_then_goes_live(spawn_daemon: DaemonFactory):
    daemon = spawn_daemon("--no-require-token")
    seen: list[Frame] = []
    with connect(daemon.ws_url("client_id=first")) as ws:
        ready(ws)
        send(ws, {"type": "new_chat"})
        chat = recv(ws)["chat_id"]
        recv(ws)  # session_updated
        for n, text in enumerate(["one", "two"]):
            send(ws, {"type": "message", "chat_id": chat, "content": text})
            frames = turn(ws, chat)
            assert_echo_turn(frames, chat, text, first_seq=1 + 2 * n)
            seen += _persisted(frames)
    assert [f["seq"] for f in seen] == [1, 2, 3, 4]
    with connect(daemon.ws_url("client_id=second")) as ws:
        ready(ws)
        send(ws, {"type": "attach", "chat_id": chat, "since_seq": 1})
        attached(ws, chat, 4)
        # Exactly what the first client saw after seq 1, in order.
        assert [recv(ws) for _ in seen[1:]] == seen[1:]
        send(ws, {"type": "message", "chat_id": chat, "content": "three"})
        assert_echo_turn(turn(ws, chat), chat, "three", first_seq=5)


def test_history_and_seq_survive_a_restart(spawn_daemon: DaemonFactory, tmp_path):
    data_dir = tmp_path / "kept"
    chat = "kept-chat"
    first = spawn_daemon("--no-require-token", data_dir=data_dir)
    with connect(first.ws_url("client_id=before")) as ws:
        ready(ws)
        send(ws, {"type": "message", "chat_id": chat, "content": "remember me"})
        frames = turn(ws, chat)
        assert_echo_turn(frames, chat, "remember me", first_seq=1)
    assert first.stop() == 0
    second = spawn_daemon("--no-require-token", data_dir=data_dir)
    with connect(second.ws_url("client_id=after")) as ws:
        ready(ws)
        send(ws, {"type": "attach", "chat_id": chat, "since_seq": 0})
        attached(ws, chat, 2)
        assert [recv(ws), recv(ws)] == _persisted(frames)
        send(ws, {"type": "message", "chat_id": chat, "content": "and me"})
        assert_echo_turn(turn(ws, chat), chat, "and me", first_seq=3)
