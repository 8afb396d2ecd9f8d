"""Lossless resume: seq on events, replay with since_seq, history while away.

These run on trio's real clock (the store works in a thread, and an
autojumping clock would race it); nothing here sleeps.
"""

from __future__ import annotations

import trio
import trio.lowlevel

from trio_channel import Delta, GoalState, Message, StreamEnd

from .memory_server import Client, MemoryServer, memory_server


async def _default_chat(client: Client) -> str:
    ready = await client.recv()
    assert ready["event"] == "ready"
    return str(ready["chat_id"])


async def _attach(server: MemoryServer, chat_id: str, since: int | None) -> Client:
    client = await server.ws()
    await _default_chat(client)
    envelope: dict[str, object] = {"type": "attach", "chat_id": chat_id}
    if since is not None:
        envelope["since_seq"] = since
    await client.send(envelope)
    attached = await client.recv()
    assert (attached["event"], attached["chat_id"]) == ("attached", chat_id)
    return client


async def _stream_text(client: Client, until_seq: int) -> tuple[str, list[int]]:
    text, seqs = "", []
    while not seqs or seqs[-1] < until_seq:
        frame = await client.recv()
        if "seq" not in frame:
            continue  # hydration after a catch-up: not in the log
        seqs.append(frame["seq"])
        if frame["event"] == "delta":
            text += frame["text"]
    return text, seqs


async def test_reconnecting_mid_stream_loses_nothing_and_duplicates_nothing():
    async with memory_server() as server:
        stayer = await server.ws()
        chat_id = await _default_chat(stayer)
        leaver = await _attach(server, chat_id, None)

        async def agent() -> None:
            for i in range(300):
                await server.agent.outbound.send(
                    Delta(chat_id=chat_id, text=f"<{i}>", stream_id="s1")
                )
                await trio.lowlevel.checkpoint()
            await server.agent.outbound.send(StreamEnd(chat_id=chat_id, stream_id="s1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent)
            before, seqs = "", []
            while len(seqs) < 100:
                frame = await leaver.recv()
                before += frame["text"]
                seqs.append(frame["seq"])
            await leaver.conn.aclose()
            # The agent keeps producing while the client is away and while
            # it replays.
            back = await _attach(server, chat_id, seqs[-1])
            after, later_seqs = await _stream_text(back, 301)
            full, all_seqs = await _stream_text(stayer, 301)

        assert all_seqs == list(range(1, 302))
        assert seqs + later_seqs == all_seqs
        assert before + after == full == "".join(f"<{i}>" for i in range(300))


async def test_a_reply_sent_while_nobody_listens_is_replayed():
    async with memory_server() as server:
        await server.agent.outbound.send(Message(chat_id="quiet", text="while away"))
        await server.agent.outbound.send(Message(chat_id="quiet", text="second"))
        await trio.testing.wait_all_tasks_blocked()
        client = await _attach(server, "quiet", 0)
        assert await client.recv() == {
            "event": "message",
            "chat_id": "quiet",
            "text": "while away",
            "seq": 1,
        }
        assert (await client.recv())["seq"] == 2
        # Then live, with the next seq.
        await server.agent.outbound.send(Message(chat_id="quiet", text="live"))
        assert await client.recv() == {
            "event": "message",
            "chat_id": "quiet",
            "text": "live",
            "seq": 3,
        }


async def test_replay_from_beyond_the_kept_history_says_so():
    async with memory_server(history_limit=5) as server:
        for i in range(12):
            await server.agent.outbound.send(Message(chat_id="c", text=str(i)))
        await trio.testing.wait_all_tasks_blocked()
        client = await _attach(server, "c", 2)
        assert await client.recv() == {
            "event": "error",
            "detail": "history_truncated",
            "chat_id": "c",
            "first_seq": 8,
        }
        assert [(await client.recv())["seq"] for _ in range(5)] == [8, 9, 10, 11, 12]


async def test_replay_comes_before_hydration_and_attach_without_since_replays_nothing():
    async with memory_server() as server:
        await server.agent.outbound.send(Message(chat_id="c", text="old"))
        await server.agent.outbound.send(GoalState(chat_id="c", goal_state={"g": 1}))
        await trio.testing.wait_all_tasks_blocked()
        replaying = await _attach(server, "c", 0)
        assert (await replaying.recv())["text"] == "old"
        assert await replaying.recv() == {
            "event": "goal_state",
            "chat_id": "c",
            "goal_state": {"g": 1},
        }
        plain = await _attach(server, "c", None)
        assert (await plain.recv())["event"] == "goal_state"


async def test_goal_state_and_history_survive_a_restart(tmp_path):
    config = {"session_store": "sqlite", "data_dir": str(tmp_path)}
    async with memory_server(**config) as server:
        await server.agent.outbound.send(Message(chat_id="c", text="before"))
        await server.agent.outbound.send(GoalState(chat_id="c", goal_state={"g": 2}))
        await trio.testing.wait_all_tasks_blocked()
    async with memory_server(**config) as server:
        client = await _attach(server, "c", 0)
        assert await client.recv() == {
            "event": "message",
            "chat_id": "c",
            "text": "before",
            "seq": 1,
        }
        assert (await client.recv())["goal_state"] == {"g": 2}
        await server.agent.outbound.send(Message(chat_id="c", text="after"))
        assert (await client.recv())["seq"] == 2


async def test_user_messages_join_the_history():
    async with memory_server() as server:
        client = await server.ws("/?client_id=alice")
        chat_id = await _default_chat(client)
        await client.send("hello agent")
        inbound = await server.agent.inbound.receive()
        assert inbound.content == "hello agent"
        [stored] = await server.channel.store.user_messages(chat_id)
        assert (stored.client_id, stored.content, stored.after_seq) == (
            "alice",
            "hello agent",
            0,
        )
