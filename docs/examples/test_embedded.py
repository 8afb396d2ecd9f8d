"""Test an agent through the whole channel, in memory, on a fake clock.

    python -m pytest docs/examples/test_embedded.py

(needs ``pytest`` and ``pytest-trio``: ``python -m pip install -e '.[test]'``).
No socket is opened and no test sleeps for real: ``autojump_clock`` is a
``trio.testing.MockClock`` that jumps ahead whenever every task is waiting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
import trio.testing
import trio_websocket
from embedded import word_agent  # docs/examples/embedded.py

from trio_channel import Channel, Peer, build_config, open_bus
from trio_channel.testing import MemoryListener


async def next_event(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.get_message())
    return event


async def test_word_agent_streams_each_word(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    config = build_config(
        overrides={
            "websocket_requires_token": False,
            "session_store": "memory",
            "data_dir": str(tmp_path),
        }
    )
    server_ends, agent_ends = open_bus()
    # A memory stream has no address: say who the peer is.
    channel = Channel(config, server_ends, peer_of=lambda _: Peer("127.0.0.1"))
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(word_agent, agent_ends.inbound, agent_ends.outbound)
        await nursery.start(channel.serve_listeners, [listener])

        ws = await trio_websocket.wrap_client_stream(
            nursery, await listener.connect(), "localhost", "/?client_id=t"
        )
        ready = await next_event(ws)
        assert ready["event"] == "ready"

        start = trio.current_time()
        await ws.send_message("one two three")
        events = [await next_event(ws) for _ in range(7)]
        assert [e["event"] for e in events] == [
            "goal_status",
            "delta",
            "delta",
            "delta",
            "stream_end",
            "turn_end",
            "goal_status",
        ]
        assert "".join(e.get("text", "") for e in events) == "one two three "
        assert [e.get("seq") for e in events[1:6]] == [1, 2, 3, 4, 5]
        # The agent's three 0.05 s sleeps took no real time.
        assert abs(trio.current_time() - start - 0.15) < 1e-9
        assert events[5]["latency_ms"] == 150

        # An hour of keepalive pings, answered by the client: still open.
        await trio.sleep(3600)
        assert ws.closed is None

        nursery.cancel_scope.cancel()
