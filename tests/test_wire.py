"""Pre-framed writes: frames a real WebSocket parser accepts, and the
trio-websocket internals ``_wire`` relies on (fails loudly if they move)."""

from __future__ import annotations

import inspect

import pytest
import trio_websocket
from wsproto.frame_protocol import FrameProtocol, Opcode

from trio_channel.wire.frames import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frames_parse_as_one_final_text_frame(size):
    payload = ("é" * size).encode()[:size] if size % 2 == 0 else b"x" * size
    client_side = FrameProtocol(client=True, extensions=[])
    client_side.receive_bytes(text_frame(payload))
    frames = list(client_side.received_frames())
    assert len(frames) == 1
    frame = frames[0]
    assert frame.opcode is Opcode.TEXT
    assert frame.frame_finished and frame.message_finished
    assert frame.payload.encode() == payload


def test_frames_concatenate_into_separate_messages():
    client_side = FrameProtocol(client=True, extensions=[])
    client_side.receive_bytes(text_frame(b'{"a":1}') + text_frame(b'{"b":2}'))
    assert [f.payload for f in client_side.received_frames()] == ['{"a":1}', '{"b":2}']


def test_the_trio_websocket_internals_we_use_still_exist():
    """If this fails, trio-websocket changed: re-read trio_channel/_wire.py."""
    source = inspect.getsource(trio_websocket.WebSocketConnection)
    for name in ("self._stream", "self._stream_lock", "self._wsproto"):
        assert name in source, name
    for method in (
        "_abort_web_socket",
        "_close_stream",
        "_reader_task",
        "_get_request",
    ):
        assert callable(getattr(trio_websocket.WebSocketConnection, method)), method
    send = inspect.getsource(trio_websocket.WebSocketConnection._send)
    assert "async with self._stream_lock" in send
    assert "self._stream.send_all" in send
