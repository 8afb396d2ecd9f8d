"""The daemon against crashes and adversaries, on real sockets and a real disk.

- kill -9 mid-stream: every event a client received is in the history after
  the restart, with the same seq and content, and no seq is handed out twice;
- a full-speed reader of 50,000 deltas gets every one, whole;
- a stalled client that reads again gets whole frames, then the 1013 close;
- a full disk degrades the daemon instead of ending it, and it recovers;
- a corrupt session store is named at start-up, exit 2.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from ._client import (
    Frame,
    attached,
    connect,
    http_get,
    raw_upgrade,
    ready,
    recv,
    recv_until,
    send,
    turn,
)
from .conftest import Daemon, DaemonFactory, daemon_env, serve_command


def _history(daemon: Daemon, chat: str) -> dict[int, Frame]:
    """Every stored event of ``chat``, by seq, read back with attach since 0."""
    with connect(daemon.ws_url("client_id=reader")) as ws:
        ready(ws)
        send(ws, {"type": "attach", "chat_id": chat, "since_seq": 0})
        last = recv(ws)["last_seq"]
        stored: dict[int, Frame] = {}
        while len(stored) < last:
            frame = recv(ws)
            if "seq" in frame:
                stored[frame["seq"]] = frame
        return stored


@pytest.mark.parametrize("received_before_kill", [300, 1500, 3000])
def test_kill9_mid_stream_keeps_everything_a_client_saw(
    spawn_daemon: DaemonFactory, tmp_path, received_before_kill
):
    data_dir = tmp_path / "data"
    first = spawn_daemon("--no-require-token", data_dir=data_dir)
    seen: dict[int, Frame] = {}
    with connect(first.ws_url("client_id=watcher")) as ws:
        chat = ready(ws)["chat_id"]
        ws.send("stream:4000")
        while len(seen) < received_before_kill:
            frame = recv(ws)
            if "seq" in frame:
                seen[frame["seq"]] = frame
        first.kill9()
        # Whatever was already on its way still counts as seen.
        try:
            while True:
                frame = recv(ws)
                if "seq" in frame:
                    seen[frame["seq"]] = frame
        except ConnectionClosed:
            pass
    assert sorted(seen) == list(range(1, len(seen) + 1))
    second = spawn_daemon("--no-require-token", data_dir=data_dir)
    stored = _history(second, chat)
    for seq, frame in seen.items():
        assert stored[seq] == frame, seq
    # The next events continue the log: no seq is ever handed out twice.
    with connect(second.ws_url("client_id=after")) as ws:
        ready(ws)
        send(ws, {"type": "message", "chat_id": chat, "content": "after the crash"})
        frames = turn(ws, chat)
        new = [f["seq"] for f in frames if "seq" in f]
        assert new == list(range(max(stored) + 1, max(stored) + 1 + len(new)))


def test_a_full_speed_reader_gets_every_delta(spawn_daemon: DaemonFactory):
    daemon = spawn_daemon("--no-require-token", "--rate-limit", "0")
    with connect(daemon.ws_url("client_id=fast"), max_size=None) as ws:
        chat = ready(ws)["chat_id"]
        for _ in range(5):
            ws.send("stream:10000")
        deltas, seqs = 0, []
        while deltas < 50_000 or seqs[-1] < 5 * 10_002:
            frame = recv(ws)
            if "seq" in frame:
                seqs.append(frame["seq"])
                deltas += frame["event"] == "delta"
                assert frame["chat_id"] == chat
        assert deltas == 50_000
        assert seqs == list(range(1, 5 * 10_002 + 1))


def test_a_stalled_client_that_reads_again_gets_whole_frames_then_1013(
    spawn_daemon: DaemonFactory, tmp_path: Path
):
    small_queue = tmp_path / "queue.toml"
    small_queue.write_text("send_queue_frames = 64\n")
    daemon = spawn_daemon(
        "--no-require-token",
        "--slow-consumer-timeout",
        "0.5",
        "--shutdown-grace",
        "10",
        "--rate-limit",
        "0",
        # Fewer frames queued behind a stall: reading them through the tiny
        # receive buffer below is what takes the time.
        "--config",
        str(small_queue),
    )
    assert daemon.port is not None
    with raw_upgrade(daemon.host, daemon.port, "/?client_id=stall") as (
        sock,
        head,
        rest,
        _,
    ):
        assert b" 101 " in head
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws = Connection(ConnectionType.CLIENT)
        ws.receive_data(rest)
        # About 1 MB of frames, far more than the socket buffers hold.
        for _ in range(2):
            sock.sendall(ws.send(TextMessage(data="stream:4000")))
        time.sleep(1.5)  # the socket takes nothing for 3x the slow-consumer timeout
        texts, parts, close = 0, [], None
        sock.settimeout(10)
        while close is None:
            data = sock.recv(65536)
            assert data, "the connection ended without a close frame"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        json.loads("".join(parts))  # whole: valid JSON
                        parts, texts = [], texts + 1
                elif isinstance(event, CloseConnection):
                    close = event
        # A torn frame would be a protocol error (1002) or a dropped stream.
        assert (close.code, close.reason) == (1013, "slow consumer")
        assert parts == [] and texts > 1


def _healthz(daemon: Daemon) -> tuple[int, dict[str, str]]:
    assert daemon.port is not None
    status, _, body = http_get(daemon.host, daemon.port, "/healthz")
    return status, json.loads(body)


def test_a_full_disk_degrades_and_recovers(spawn_daemon: DaemonFactory):
    daemon = spawn_daemon("--no-require-token", file_size_limit=1 << 20)
    with connect(daemon.ws_url("client_id=filler")) as ws:
        chat = ready(ws)["chat_id"]
        # Fill the store until it refuses. Whichever write hits the limit
        # first (the user's message or the agent's echo of it), the daemon
        # is degraded; the echo then waits in the store's queue, and a new
        # message is refused.
        sent: list[str] = []
        shown: list[str] = []
        for n in range(200):
            sent.append(f"{n:04d}" + "x" * 20_000)
            send(ws, {"type": "message", "chat_id": chat, "content": sent[-1]})
            frame = _next_or_none(ws)
            while (
                frame is not None
                and frame["event"] != "error"
                and not (frame["event"] == "goal_status" and frame["status"] == "idle")
            ):
                if frame["event"] == "message":
                    shown.append(frame["text"])
                frame = _next_or_none(ws)
            if frame is not None and frame["event"] == "error":
                refused = frame
                sent.pop()  # refused: it never reached the agent
                break
            if frame is None:  # the echo is stuck behind the full disk
                assert _healthz(daemon)[0] == 503
                send(ws, {"type": "message", "chat_id": chat, "content": "refused"})
                refused = recv(ws)
                break
        else:
            raise AssertionError("the store never filled up")
        assert refused == {
            "event": "error",
            "detail": "store_unavailable",
            "chat_id": chat,
        }
        status, body = _healthz(daemon)
        assert status == 503 and body["status"] == "degraded"
        # The disk gets room again: the daemon recovers by itself, and
        # what waited in the queue is delivered, nothing lost.
        resource.prlimit(
            daemon.proc.pid,
            resource.RLIMIT_FSIZE,
            (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
        )
        deadline = time.monotonic() + 15
        while _healthz(daemon)[0] != 200:
            assert time.monotonic() < deadline, daemon.stderr
            time.sleep(0.1)
        send(ws, {"type": "message", "chat_id": chat, "content": "room again"})
        frames = recv_until(
            ws, lambda f: f.get("event") == "message" and f["text"] == "room again"
        )
        shown += [f["text"] for f in frames if f["event"] == "message"]
        assert shown == [*sent, "room again"]
    assert daemon.proc.poll() is None  # it never exited
    assert "Traceback" not in daemon.stderr


def _next_or_none(ws: ClientConnection) -> Frame | None:
    """The next frame, or None when none comes within a second."""
    try:
        return json.loads(ws.recv(timeout=1.0))
    except TimeoutError:
        return None


def test_a_corrupt_store_is_named_and_exits_2(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = data_dir / "sessions.sqlite3"
    store.write_bytes(b"not a database at all " * 500)
    done = subprocess.run(
        serve_command(data_dir, "--no-require-token"),
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert str(store) in done.stderr
    assert "Traceback" not in done.stderr


def test_the_memory_store_keeps_nothing(spawn_daemon: DaemonFactory, tmp_path):
    data_dir = tmp_path / "mem"
    first = spawn_daemon(
        "--no-require-token", "--session-store", "memory", data_dir=data_dir
    )
    with connect(first.ws_url("client_id=a")) as ws:
        ready(ws)
        send(ws, {"type": "message", "chat_id": "m", "content": "gone"})
        turn(ws, "m")
    assert first.stop() == 0
    second = spawn_daemon(
        "--no-require-token", "--session-store", "memory", data_dir=data_dir
    )
    with connect(second.ws_url("client_id=b")) as ws:
        ready(ws)
        send(ws, {"type": "attach", "chat_id": "m", "since_seq": 0})
        attached(ws, "m", 0, has_log=False)
