"""The whole server over memory streams, with time driven by MockClock.

Keepalive, token expiry, handshake limits and slow consumers are tested in
(mock) seconds, deterministically: no test here sleeps for real.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import trio
import trio.testing
import trio_websocket

from trio_channel import GoalStatus, Message, RuntimeModelUpdated, TurnEnd
from trio_channel.core.session import ClientSession, Peer

from .memory_server import memory_server, read_head, upgrade_request


async def test_ready_first_then_messages_reach_the_agent(autojump_clock):
    async with memory_server() as server:
        client = await server.ws("/?client_id=%20alice%20")
        ready = await client.recv()
        assert ready["event"] == "ready"
        assert ready["client_id"] == "alice"
        await client.send("hello")
        inbound = await server.agent.inbound.receive()
        assert (inbound.chat_id, inbound.content) == (ready["chat_id"], "hello")
        assert inbound.metadata["remote"] == "127.0.0.1:40000"
        await server.agent.outbound.send(Message(chat_id=inbound.chat_id, text="hi!"))
        reply = await client.recv()
        assert reply == {
            "event": "message",
            "chat_id": ready["chat_id"],
            "text": "hi!",
            "seq": 1,
        }


async def test_a_client_that_never_answers_pings_is_dropped(autojump_clock):
    async with memory_server(ping_interval_s=20, ping_timeout_s=20) as server:
        stream = await server.raw()
        await stream.send_all(upgrade_request())
        assert b" 101 " in await read_head(stream)
        start = trio.current_time()
        # Read (the ready frame, the ping) but never answer the ping.
        while await stream.receive_some():
            pass
        assert 40 <= trio.current_time() - start < 41
        await trio.testing.wait_all_tasks_blocked()
        assert server.hub.connections == {}
        assert server.channel.open_connections == 0


async def test_a_client_that_answers_pings_stays(autojump_clock):
    async with memory_server(ping_interval_s=5, ping_timeout_s=5) as server:
        client = await server.ws()
        ready = await client.recv()
        await trio.sleep(300)
        await client.send("still here")
        inbound = await server.agent.inbound.receive()
        assert inbound.chat_id == ready["chat_id"]


async def _issue_token(server) -> str:
    status, body = await server.http(
        b"GET /auth/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sec\r\n\r\n"
    )
    assert status == 200
    payload = json.loads(body)
    assert payload["expires_in"] == 60
    return str(payload["token"])


async def test_issued_tokens_expire_on_trio_time(autojump_clock):
    async with memory_server(
        websocket_requires_token=True,
        token_issue_path="/auth/token",
        token_issue_secret="sec",
        token_ttl_s=60,
    ) as server:
        token = await _issue_token(server)
        await trio.sleep(59.9)
        client = await server.ws(f"/?token={token}")
        assert (await client.recv())["event"] == "ready"

        token = await _issue_token(server)
        await trio.sleep(60)
        refused = await server.http(upgrade_request(f"/?token={token}"))
        assert refused == (401, b"Unauthorized")


@pytest.mark.parametrize(
    ("config", "target", "status", "body"),
    [
        ({"allow_from": ("alice",)}, "/?client_id=bob", 403, b"Forbidden"),
        ({"allow_from": ()}, "/?client_id=alice", 403, b"Forbidden"),
        ({"websocket_requires_token": True}, "/", 401, b"Unauthorized"),
        ({"token": "s3cret"}, "/?token=wrong", 401, b"Unauthorized"),
        # The allow list is decided before the token.
        ({"token": "s3cret", "allow_from": ("a",)}, "/?client_id=b", 403, b"Forbidden"),
    ],
)
async def test_handshake_refusals(autojump_clock, config, target, status, body):
    async with memory_server(**config) as server:
        assert await server.http(upgrade_request(target)) == (status, body)


async def test_upgrade_on_another_path_is_plain_http(autojump_clock):
    async with memory_server(path="/ws", webui=False) as server:
        status, body = await server.http(upgrade_request("/elsewhere"))
        assert (status, body) == (404, b"Not Found")
        client = await server.ws("/ws/?client_id=x")
        assert (await client.recv())["event"] == "ready"


async def test_capacity_refuses_with_503(autojump_clock):
    async with memory_server(max_connections=1) as server:
        first = await server.ws()
        await first.recv()
        status, _ = await server.http(upgrade_request())
        assert status == 503
        await first.conn.aclose()
        await trio.sleep(1)
        again = await server.ws()
        assert (await again.recv())["event"] == "ready"


async def test_a_slow_request_head_is_dropped(autojump_clock):
    async with memory_server(handshake_timeout_s=10) as server:
        stream = await server.raw()
        start = trio.current_time()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert await stream.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(10)


async def test_an_oversized_request_head_gets_431(autojump_clock):
    async with memory_server() as server:
        status, _ = await server.http(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n"
        )
        assert status == 431


@pytest.mark.parametrize("text", ["x" * 2000, "é" * 600])
async def test_messages_over_max_bytes_close_with_1009(autojump_clock, text):
    async with memory_server(max_message_bytes=1024) as server:
        client = await server.ws()
        await client.recv()
        await client.send(text)
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.conn.get_message()
        assert closed.value.reason.code == 1009
        await trio.sleep(1)
        assert server.hub.connections == {}


async def test_invalid_utf8_binary_is_ignored_and_valid_binary_is_text(autojump_clock):
    async with memory_server() as server:
        client = await server.ws()
        await client.recv()
        await client.conn.send_message(b"\xff\xfe not utf-8")
        await client.conn.send_message(b"binary hello")
        inbound = await server.agent.inbound.receive()
        assert inbound.content == "binary hello"


async def test_cancelling_serve_closes_clients_with_1001(autojump_clock):
    async with memory_server() as server:
        client = await server.ws()
        await client.recv()
        start = trio.current_time()
        server.stop()
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.conn.get_message()
        assert closed.value.reason.code == 1001
        # The closing handshake completed: no waiting out shutdown_grace_s.
        await trio.testing.wait_all_tasks_blocked()
        assert server.channel.open_connections == 0
        assert trio.current_time() == start


async def _raw_subscriber(server) -> tuple[trio.abc.Stream, str]:
    """A client on an unbuffered stream that reads its ready frame, then stops."""
    stream = await server.raw(trio.testing.lockstep_stream_pair)
    await stream.send_all(upgrade_request())
    data = await read_head(stream)
    while b"ready" not in data:
        data += await stream.receive_some()
    match = re.search(rb'"chat_id":"([^"]+)"', data)
    assert match is not None
    return stream, match.group(1).decode()


async def test_a_stalled_client_never_delays_the_others(autojump_clock):
    async with memory_server(
        send_queue_frames=16, slow_consumer_timeout_s=10
    ) as server:
        _stalled, chat_id = await _raw_subscriber(server)
        healthy = await server.ws()
        await healthy.recv()
        await healthy.send({"type": "attach", "chat_id": chat_id})
        assert (await healthy.recv())["event"] == "attached"

        start = trio.current_time()
        for i in range(40):
            await server.agent.outbound.send(Message(chat_id=chat_id, text=str(i)))
        texts = [(await healthy.recv())["text"] for _ in range(40)]
        assert texts == [str(i) for i in range(40)]
        assert trio.current_time() == start  # no (mock) time passed

        # 1013 is decided once its socket took no bytes for 10 s; the close
        # frame then waits behind the stalled send for the close timeout
        # (shutdown_grace_s, 10 s) before the transport is dropped.
        await trio.sleep(10.5)
        assert b"slow_consumers_closed_total 1.0" in server.channel.metrics.render()[0]
        await trio.sleep(10)
        assert len(server.hub.connections) == 1
        assert server.channel.open_connections == 1


async def test_a_full_send_queue_falls_behind_instead_of_growing(autojump_clock):
    async with memory_server(
        send_queue_frames=16, slow_consumer_timeout_s=10
    ) as server:
        _stalled, chat_id = await _raw_subscriber(server)
        (conn,) = server.channel._live
        for i in range(100):
            await server.agent.outbound.send(Message(chat_id=chat_id, text=str(i)))
        await trio.testing.wait_all_tasks_blocked()
        # Not closed: its cursor fell behind and will catch up from the store.
        assert server.channel.open_connections == 1
        assert len(conn.outbox) <= 16
        assert chat_id in conn.catching_up
        assert not server.hub.cursor(conn, chat_id).live


async def test_back_pressure_stops_reading_instead_of_buffering(autojump_clock):
    async with memory_server(bus_capacity=1) as server:
        client = await server.ws()
        await client.recv()
        for i in range(5):
            await client.send(f"m{i}")
        await trio.sleep(1)
        stats = server.agent.inbound.statistics()
        assert stats.current_buffer_used == 1
        got = [(await server.agent.inbound.receive()).content for _ in range(5)]
        assert got == [f"m{i}" for i in range(5)]


async def test_hydration_and_model_updates(autojump_clock):
    async with memory_server() as server:
        first = await server.ws()
        chat_id = (await first.recv())["chat_id"]
        await server.agent.outbound.send(
            GoalStatus(chat_id=chat_id, status="running", started_at=1700000000.5)
        )
        assert (await first.recv())["status"] == "running"
        second = await server.ws()
        await second.recv()
        await second.send({"type": "attach", "chat_id": chat_id})
        assert await second.recv() == {
            "event": "attached",
            "chat_id": chat_id,
            "last_seq": 0,
        }
        assert await second.recv() == {
            "event": "goal_status",
            "chat_id": chat_id,
            "status": "running",
            "started_at": 1700000000.5,
        }
        await server.agent.outbound.send(RuntimeModelUpdated(model_name="m-2"))
        for client in (first, second):
            assert await client.recv() == {
                "event": "runtime_model_updated",
                "model_name": "m-2",
            }


async def test_a_crashing_connection_does_not_take_the_server_down(
    autojump_clock, monkeypatch, caplog
):
    original = ClientSession.parse

    def explode(self, text, now):
        if text == "boom":
            raise RuntimeError("bug in a handler")
        return original(self, text, now)

    monkeypatch.setattr(ClientSession, "parse", explode)
    caplog.set_level(logging.ERROR, logger="trio_channel.server")
    async with memory_server() as server:
        doomed = await server.ws()
        await doomed.recv()
        await doomed.send("boom")
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await doomed.conn.get_message()
        assert closed.value.reason.code == 1011
        await trio.testing.wait_all_tasks_blocked()
        assert "connection task failed" in caplog.text
        assert server.hub.connections == {}
        survivor = await server.ws()
        chat_id = (await survivor.recv())["chat_id"]
        await survivor.send("fine")
        assert (await server.agent.inbound.receive()).chat_id == chat_id


async def test_a_bad_agent_event_is_dropped_and_logged(autojump_clock, caplog):
    async with memory_server() as server:
        client = await server.ws()
        chat_id = (await client.recv())["chat_id"]
        with caplog.at_level(logging.WARNING, logger="trio_channel.dispatch"):
            await server.agent.outbound.send({"not": "an event"})  # type: ignore[arg-type]
            await server.agent.outbound.send(TurnEnd(chat_id=chat_id, latency_ms=3))
            assert (await client.recv())["event"] == "turn_end"
        assert (
            "dropping a 'dict' event from the agent: not an agent event" in caplog.text
        )


async def test_metrics_show_what_happened(autojump_clock):
    async with memory_server(allow_from=("alice",), rate_limit=1) as server:
        assert (await server.http(upgrade_request("/?client_id=bob")))[0] == 403
        client = await server.ws("/?client_id=alice")
        chat_id = (await client.recv())["chat_id"]
        for text in ("a", "b", "c"):
            await client.send(text)
        assert (await client.recv())["detail"] == "rate_limited"
        await server.agent.outbound.send(Message(chat_id=chat_id, text="hi"))
        await client.recv()
        status, body = await server.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        text = body.decode()
        for line in (
            "trio_channel_connections_open 1.0",
            'trio_channel_handshakes_total{outcome="rejected",status="403"} 1.0',
            'trio_channel_handshakes_total{outcome="accepted",status="101"} 1.0',
            "trio_channel_frames_in_total 3.0",
            "trio_channel_rate_limited_frames_total 1.0",
            'trio_channel_events_total{type="message"} 1.0',
        ):
            assert line in text, line


async def test_metrics_need_loopback_or_an_api_token(autojump_clock):
    async with memory_server(peer=Peer("10.1.2.3", 5)) as server:
        status, _ = await server.http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 401
