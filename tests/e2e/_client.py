"""Client helpers for the e2e tests: the ``websockets`` sync client, plain
HTTP, and a hand-rolled raw WebSocket for what a well-behaved library will
not do (odd handshake headers, never answering pings).

Every read has a timeout, so a broken server fails a test instead of hanging.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import websockets.sync.client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

RECV_TIMEOUT_S = 5.0
#: Frames read while waiting for one that matches, before giving up.
MAX_FRAMES = 200

Frame = dict[str, Any]


# --- websockets (a client we did not write) ----------------------------------


def connect(url: str, **kwargs: Any) -> ClientConnection:
    return websockets.sync.client.connect(
        url, open_timeout=5, close_timeout=2, **kwargs
    )


def refused(url: str, **kwargs: Any) -> tuple[int, bytes]:
    """Open ``url`` expecting an HTTP refusal; return (status, body)."""
    try:
        with connect(url, **kwargs):
            pass
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body or b""
    raise AssertionError(f"{url} was accepted")


def recv(ws: ClientConnection) -> Frame:
    frame = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
    assert isinstance(frame, dict), frame
    return frame


def send(ws: ClientConnection, frame: Frame) -> None:
    ws.send(json.dumps(frame))


def recv_until(
    ws: ClientConnection, done: Callable[[Frame], bool], limit: int = MAX_FRAMES
) -> list[Frame]:
    """Frames up to and including the first one for which ``done`` is true."""
    frames = []
    for _ in range(limit):
        frames.append(recv(ws))
        if done(frames[-1]):
            return frames
    raise AssertionError(f"no matching frame in {limit}: {frames[-5:]}")


def is_idle(chat_id: str) -> Callable[[Frame], bool]:
    return lambda f: f == {"event": "goal_status", "chat_id": chat_id, "status": "idle"}


def turn(ws: ClientConnection, chat_id: str, limit: int = MAX_FRAMES) -> list[Frame]:
    """Every frame up to the end of the next turn in ``chat_id``."""
    return recv_until(ws, is_idle(chat_id), limit)


#: Events that carry a per-chat ``seq`` (PROTOCOL 4, "P").
PERSISTED = frozenset(
    {
        "message",
        "delta",
        "stream_end",
        "reasoning_delta",
        "reasoning_end",
        "file_edit",
        "turn_end",
    }
)


def assert_seqs(frames: list[Frame], first: int | None = None) -> None:
    """Persisted events of each chat count up by one (from ``first`` if
    given); the others carry no ``seq``."""
    last: dict[str, int] = {}
    for f in frames:
        if f["event"] not in PERSISTED:
            assert "seq" not in f, f
            continue
        seq, chat = f["seq"], f["chat_id"]
        assert type(seq) is int, f
        if chat in last:
            assert seq == last[chat] + 1, (last[chat], f)
        elif first is not None:
            assert seq == first, f
        last[chat] = seq


def assert_echo_turn(
    frames: list[Frame], chat_id: str, text: str, first_seq: int | None = None
) -> None:
    """``frames`` are exactly one echo turn of ``text`` in ``chat_id``."""
    assert [f["event"] for f in frames] == [
        "goal_status",
        "message",
        "turn_end",
        "goal_status",
    ], frames
    running, message, turn_end, idle = frames
    assert running.keys() == {"event", "chat_id", "status", "started_at"}
    assert running["chat_id"] == chat_id
    assert running["status"] == "running"
    assert isinstance(running["started_at"], float)
    assert abs(running["started_at"] - time.time()) < 60
    assert message["chat_id"] == chat_id
    assert message["text"] == text
    assert turn_end["chat_id"] == chat_id
    assert isinstance(turn_end["latency_ms"], int)
    assert turn_end["latency_ms"] >= 0
    assert idle == {"event": "goal_status", "chat_id": chat_id, "status": "idle"}
    assert_seqs(frames, first_seq)


def attached(
    ws: ClientConnection, chat_id: str, last_seq: int, *, has_log: bool = True
) -> Frame:
    """The next frame is ``attached`` for ``chat_id``, with the log's place.

    A chat with a stored log names its epoch (PROTOCOL 5); one without has
    none yet.
    """
    frame = recv(ws)
    assert (frame["event"], frame["chat_id"], frame["last_seq"]) == (
        "attached",
        chat_id,
        last_seq,
    ), frame
    if has_log:
        assert isinstance(frame["epoch"], str) and frame["epoch"], frame
    else:
        assert "epoch" not in frame, frame
    return frame


def ready(ws: ClientConnection) -> Frame:
    """The first frame, checked to be a well-formed ``ready``."""
    frame = recv(ws)
    assert frame.keys() == {"event", "chat_id", "client_id"}, frame
    assert frame["event"] == "ready"
    assert uuid.UUID(frame["chat_id"]).version == 4
    assert str(uuid.UUID(frame["chat_id"])) == frame["chat_id"]
    return frame


def echo(ws: ClientConnection, chat_id: str, text: str) -> None:
    """Send legacy ``text`` and check its echo comes back whole."""
    ws.send(text)
    assert_echo_turn(turn(ws, chat_id), chat_id, text.strip())


# --- plain HTTP --------------------------------------------------------------


def http_get(
    host: str, port: int, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=RECV_TIMEOUT_S)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


# --- a raw WebSocket, by hand ------------------------------------------------

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read an HTTP response head; return (head, bytes read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed during the head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@contextmanager
def raw_upgrade(
    host: str, port: int, target: str, connection: str = "keep-alive, Upgrade"
) -> Iterator[tuple[socket.socket, bytes, bytes, str]]:
    """Do the upgrade by hand; yield (socket, head, bytes past it, key)."""
    key = base64.b64encode(uuid.uuid4().bytes).decode()
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        f"Connection: {connection}\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    )
    with socket.create_connection((host, port), timeout=RECV_TIMEOUT_S) as sock:
        sock.sendall(request.encode())
        head, rest = read_head(sock)
        yield sock, head, rest, key


class FrameReader:
    """Reads server frames (unmasked, RFC 6455 5.2) from a raw socket."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buf = buffered

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def frame(self) -> tuple[int, bytes] | None:
        """The next (opcode, payload), or None at EOF."""
        if not self._fill(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frames must not be masked"
        length, offset = b1 & 0x7F, 2
        if length == 126:
            if not self._fill(4):
                return None
            (length,) = struct.unpack("!H", self.buf[2:4])
            offset = 4
        elif length == 127:
            if not self._fill(10):
                return None
            (length,) = struct.unpack("!Q", self.buf[2:10])
            offset = 10
        if not self._fill(offset + length):
            return None
        payload = self.buf[offset : offset + length]
        self.buf = self.buf[offset + length :]
        return b0 & 0x0F, payload
