"""Delivery through the whole server: slow readers catch up, stalled sockets
get a whole 1013 close frame, bad agent events and a failing store are
contained, and resumes are refused as stale when they must be (PROTOCOL 4, 5).

In memory, on MockClock: no test here sleeps for real.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from trio_channel import Delta, GoalState, GoalStatus, Message, TurnEnd
from trio_channel.store.base import StoreError, StoreOp, StoreResult
from trio_channel.store.memory import MemoryStore
from trio_channel.testing import serve_in_memory

from .memory_server import (
    Client,
    MemoryServer,
    memory_server,
    read_head,
    upgrade_request,
)


async def _ready(client: Client) -> str:
    frame = await client.recv()
    assert frame["event"] == "ready"
    return str(frame["chat_id"])


async def test_a_slow_reader_catches_up_from_the_store_instead_of_being_closed(
    autojump_clock,
):
    async with memory_server(
        send_queue_frames=16, slow_consumer_timeout_s=10
    ) as server:
        slow = await server.ws(pair=trio.testing.lockstep_stream_pair)
        chat_id = await _ready(slow)
        for i in range(300):
            await server.agent.outbound.send(Message(chat_id=chat_id, text=str(i)))
        await server.agent.outbound.send(GoalStatus(chat_id=chat_id, status="idle"))
        seqs, tail = [], []
        while len(seqs) < 300:
            frame = await slow.recv()
            if "seq" in frame:
                assert frame["text"] == str(frame["seq"] - 1)
                seqs.append(frame["seq"])
            else:
                tail.append(frame)
            await trio.sleep(0.05)  # slower than the agent, but reading
        assert seqs == list(range(1, 301))
        # It fell behind, so after catching up it gets the chat's state.
        while not tail or tail[-1]["event"] != "goal_status":
            tail.append(await slow.recv())
        assert tail[-1] == {
            "event": "goal_status",
            "chat_id": chat_id,
            "status": "idle",
        }
        assert server.channel.open_connections == 1
        text = server.channel.metrics.render()[0]
        assert b"catch_ups_total 0.0" not in text


async def test_a_stalled_client_that_reads_again_gets_a_whole_1013_close(
    autojump_clock,
):
    async with memory_server(
        send_queue_frames=16, slow_consumer_timeout_s=10, shutdown_grace_s=30
    ) as server:
        stream = await server.raw(trio.testing.lockstep_stream_pair)
        await stream.send_all(upgrade_request())
        head = await read_head(stream)
        ws = Connection(ConnectionType.CLIENT)
        ws.receive_data(head.split(b"\r\n\r\n", 1)[1])
        await trio.testing.wait_all_tasks_blocked()
        (conn,) = server.channel._live
        chat_id = conn.session.default_chat
        big = "x" * 5000  # many kilobytes, so sends really block
        for i in range(200):
            await server.agent.outbound.send(Message(chat_id=chat_id, text=f"{i}{big}"))
        await trio.sleep(15)  # the socket takes nothing: 1013 is decided at 10 s
        assert server.channel.open_connections == 1  # waiting for the peer
        # The client reads again: every frame it gets is whole, then 1013.
        texts, close = [], None
        while close is None:
            data = await stream.receive_some()
            assert data, "the stream ended before a close frame"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    assert event.message_finished
                    texts.append(json.loads(event.data))
                elif isinstance(event, CloseConnection):
                    close = event
        assert close.code == 1013 and close.reason == "slow consumer"
        assert all(t["event"] in ("ready", "message") for t in texts)
        seqs = [t["seq"] for t in texts if t["event"] == "message"]
        assert seqs == list(range(1, len(seqs) + 1))


async def test_a_full_speed_reader_gets_every_delta(autojump_clock):
    # A reader as fast as it can go (tests/e2e does 50,000 over TCP).
    async with memory_server(send_queue_frames=64) as server:
        stream = await server.raw()
        await stream.send_all(upgrade_request())
        head = await read_head(stream)
        ws = Connection(ConnectionType.CLIENT)
        ws.receive_data(head.split(b"\r\n\r\n", 1)[1])
        await trio.testing.wait_all_tasks_blocked()
        (conn,) = server.channel._live
        chat_id = conn.session.default_chat

        async def agent() -> None:
            for i in range(5_000):
                await server.agent.outbound.send(
                    Delta(chat_id=chat_id, text=f"{i} ", stream_id="s")
                )

        seqs: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent)
            while len(seqs) < 5_000:
                ws.receive_data(await stream.receive_some())
                for event in ws.events():
                    assert isinstance(event, TextMessage) and event.message_finished
                    frame = json.loads(event.data)
                    if frame["event"] == "delta":
                        seqs.append(frame["seq"])
        assert seqs == list(range(1, 5_001))


async def test_bad_agent_events_are_dropped_and_counted(autojump_clock, caplog):
    async with memory_server() as server:
        client = await server.ws()
        chat_id = await _ready(client)
        for bad in [
            Delta(chat_id=chat_id, text=5),  # type: ignore[arg-type]
            GoalStatus(chat_id=chat_id, status="runing"),  # type: ignore[arg-type]
            TurnEnd(chat_id=chat_id, latency_ms="soon"),  # type: ignore[arg-type]
            GoalState(chat_id=chat_id, goal_state={"when": object()}),
            Message(chat_id=None, text="no chat"),  # type: ignore[arg-type]
        ]:
            await server.agent.outbound.send(bad)
        await server.agent.outbound.send(
            Message(chat_id=chat_id, text="lone \ud800 surrogate")
        )
        await server.agent.outbound.send(
            GoalState(chat_id=chat_id, goal_state={"s": {1, 2}})
        )
        assert await client.recv() == {
            "event": "message",
            "chat_id": chat_id,
            "text": "lone \ufffd surrogate",
            "seq": 1,
        }
        assert (await client.recv())["goal_state"] == {"s": [1, 2]}
        lines = [
            r.getMessage() for r in caplog.records if "dropping a" in r.getMessage()
        ]
        assert len(lines) == 5
        assert (
            "'delta' event from the agent: Expected `str`, got `int` - at `$.text`"
            in lines[0]
        )
        assert "$.status" in lines[1] and "$.latency_ms" in lines[2]
        assert "goal_state: cannot be encoded" in lines[3]
        text = server.channel.metrics.render()[0].decode()
        assert 'trio_channel_bad_agent_events_total{type="delta"} 1.0' in text
        # Nothing of it reached the store.
        page = await server.channel.store.read_events(chat_id, 0, 10)
        assert [seq for seq, _ in page.events] == [1]


@attrs.define(eq=False)
class FlakyStore(MemoryStore):
    """A memory store whose writes fail while ``broken`` is set."""

    broken: str | None = None

    async def write(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        await self.probe()
        return await super().write(ops)

    def write_now(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        if self.broken is not None:
            raise StoreError(self.broken, transient=False)
        return super().write_now(ops)

    async def probe(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.broken is not None:
            raise StoreError(self.broken, transient=False)


async def _healthz(server: MemoryServer) -> tuple[int, dict[str, str]]:
    status, body = await server.http(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    return status, json.loads(body)


async def test_a_store_that_cannot_write_degrades_and_recovers(
    autojump_clock, tmp_path
):
    store = FlakyStore()
    async with serve_in_memory(data_dir=str(tmp_path), store=store) as inner:
        server = MemoryServer(inner)
        client = await server.ws()
        chat_id = await _ready(client)
        store.broken = "database or disk is full"
        await client.send(
            {"type": "message", "chat_id": chat_id, "content": "a", "turn_id": "t1"}
        )
        assert await client.recv() == {
            "event": "error",
            "detail": "store_unavailable",
            "chat_id": chat_id,
            "turn_id": "t1",
        }
        assert await _healthz(server) == (
            503,
            {"status": "degraded", "reason": "database or disk is full"},
        )
        # The agent's events wait (bounded) instead of being lost.
        await server.agent.outbound.send(Message(chat_id=chat_id, text="kept"))
        await trio.sleep(1)
        assert b"store_degraded 1.0" in server.channel.metrics.render()[0]
        store.broken = None
        assert (await client.recv())["text"] == "kept"
        assert await _healthz(server) == (200, {"status": "ok"})
        await client.send({"type": "message", "chat_id": chat_id, "content": "b"})
        assert (await server.agent.inbound.receive()).content == "b"
        assert server.channel.open_connections == 1


async def test_a_stale_resume_is_told_history_reset(autojump_clock):
    async with memory_server() as server:
        for text in ("one", "two", "three"):
            await server.agent.outbound.send(Message(chat_id="c", text=text))
        await trio.testing.wait_all_tasks_blocked()
        epoch = (await server.channel.store.chat("c")).epoch  # type: ignore[union-attr]
        for envelope in [
            {"since_seq": 1, "epoch": "not-this-one"},  # another epoch
            {"since_seq": 9},  # saw more than the store has
        ]:
            client = await server.ws()
            await _ready(client)
            await client.send({"type": "attach", "chat_id": "c", **envelope})
            assert await client.recv() == {
                "event": "attached",
                "chat_id": "c",
                "epoch": epoch,
                "last_seq": 3,
            }
            assert await client.recv() == {
                "event": "error",
                "detail": "history_reset",
                "chat_id": "c",
                "epoch": epoch,
                "first_seq": 1,
            }
            assert [(await client.recv())["seq"] for _ in range(3)] == [1, 2, 3]
        # The right epoch resumes where it left off.
        client = await server.ws()
        await _ready(client)
        await client.send(
            {"type": "attach", "chat_id": "c", "since_seq": 2, "epoch": epoch}
        )
        assert (await client.recv())["event"] == "attached"
        assert (await client.recv())["seq"] == 3


async def test_an_out_of_range_since_seq_is_a_soft_error(autojump_clock):
    async with memory_server() as server:
        client = await server.ws()
        await _ready(client)
        for since in (-1, 2**63, 10**40):
            await client.send({"type": "attach", "chat_id": "c", "since_seq": since})
            assert await client.recv() == {
                "event": "error",
                "detail": "invalid since_seq",
                "chat_id": "c",
            }
        await client.send("still open")
        assert (await server.agent.inbound.receive()).content == "still open"


async def test_lone_surrogates_reach_the_sqlite_store_as_replacements(
    autojump_clock, tmp_path
):
    async with memory_server(session_store="sqlite", data_dir=str(tmp_path)) as server:
        client = await server.ws()
        chat_id = await _ready(client)
        frame = '{"type":"message","chat_id":"' + chat_id + '","content":"a\\ud800b"}'
        await client.send(frame)
        inbound = await server.agent.inbound.receive()
        assert inbound.content == "a\ufffdb"
        (stored,) = await server.channel.store.user_messages(chat_id)
        assert stored.content == "a\ufffdb"
