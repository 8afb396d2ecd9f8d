"""Shutdown on SIGTERM, keepalive and the handshake deadline, in real time."""

from __future__ import annotations

import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed

from ._client import (
    connect,
    ready,
    recv,
    send,
)
from .conftest import STOP_TIMEOUT_S, DaemonFactory

#: Time clients get to close on shutdown (``--shutdown-grace``).
GRACE_S = 4.0
#: How long a shutdown may take when every client answers the close at once.
SHUTDOWN_S = 2.0


def test_sigterm_closes_every_client_with_1001_and_exits_0(
    spawn_daemon: DaemonFactory,
):
    daemon = spawn_daemon("--no-require-token", "--shutdown-grace", str(GRACE_S))
    with (
        connect(daemon.ws_url("client_id=idle")) as idle,
        connect(daemon.ws_url("client_id=busy")) as busy,
    ):
        ready(idle)
        ready(busy)
        busy.send("sleep:30 a turn that is still running")
        running = recv(busy)
        assert running["event"] == "goal_status"
        assert running["status"] == "running"
        started = time.monotonic()
        daemon.terminate()
        for ws in (idle, busy):
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=STOP_TIMEOUT_S)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        closed_after = time.monotonic() - started
        assert daemon.wait() == 0
        exited_after = time.monotonic() - started
    # Both clients answer the close frame at once (websockets does), so the
    # closing handshake completes and nothing waits for a deadline: not the
    # running turn, not the shutdown grace meant for clients that do not.
    assert closed_after < SHUTDOWN_S, f"clients saw the close after {closed_after:.1f}s"
    assert exited_after < SHUTDOWN_S, f"the daemon exited after {exited_after:.1f}s"


def test_a_slow_request_head_is_dropped(spawn_daemon: DaemonFactory):
    """(ext) the whole head must arrive within ``handshake_timeout_s``."""
    daemon = spawn_daemon("--no-require-token", "--handshake-timeout", "0.5")
    with socket.create_connection((daemon.host, daemon.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert 0.3 < time.monotonic() - started < 3
    # A prompt client on the same daemon is served as usual.
    with connect(daemon.ws_url("client_id=prompt")) as ws:
        ready(ws)
        send(ws, {"type": "new_chat"})
        assert recv(ws)["event"] == "attached"
