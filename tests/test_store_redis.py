"""What only the Redis store does: fencing, acknowledgement with the turn's
end, retried user messages, idle TTLs and new epochs, the partition count
every node must agree on, and events that are not in the log.

The behaviour every store shares is in ``test_store_contract.py``.
"""

from __future__ import annotations

import gc
from pathlib import Path

import msgspec
import pytest
import trio

from trio_channel.store._coredis import RedisLink
from trio_channel.store.base import (
    Appended,
    AppendEvent,
    AppendUserMessage,
    Broadcast,
    Fenced,
    MarkTurnStarted,
    StoredUserMessage,
    StoreError,
)
from trio_channel.store.redis import AGENTS_GROUP, RedisStore

from .redis_server import RedisServer


@pytest.fixture
async def redis_store(redis_server: RedisServer, nursery: trio.Nursery) -> RedisStore:
    redis_server.command("FLUSHALL")
    store = RedisStore(redis_server.url, history_limit=50)
    await nursery.start(store.run)
    return store


def event(chat_id: str, n: int, **kw: object) -> AppendEvent:
    payload = msgspec.json.encode(
        {"event": "message", "chat_id": chat_id, "text": str(n)}
    )
    return AppendEvent(chat_id, f"e{n}", payload, at=float(n), **kw)  # type: ignore[arg-type]


async def test_a_stale_fence_is_refused(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    keys = redis_store.layout.chat("c")
    redis_server.command("SET", keys.fence, "7")
    results = await redis_store.write(
        [event("c", 1, fence="7"), event("c", 2, fence="6"), event("c", 3)]
    )
    assert isinstance(results[0], Appended) and results[0].seq == 1
    assert isinstance(results[1], Fenced)
    assert isinstance(results[2], Appended) and results[2].seq == 2
    page = await redis_store.read_events("c", 0, 10)
    assert [seq for seq, _ in page.events] == [1, 2]


async def test_writes_go_on_after_redis_forgot_its_scripts(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """Scripts run by SHA, loaded once per client: a Redis that lost them (a
    restart the pool reconnected through, a failover to a replica) gets them
    all again, and the write that found them gone runs once, in order."""
    await redis_store.write([event("c", 1)])
    assert (await redis_store.chat("c")) is not None
    for flushes in range(2):
        assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
        if flushes:  # a lone script call finds them gone too
            assert (await redis_store.chat("c")) is not None
        results = await redis_store.write(
            [event("c", 2 + 2 * flushes), event("c", 3 + 2 * flushes)]
        )
        assert [r.seq for r in results] == [2 + 2 * flushes, 3 + 2 * flushes]  # type: ignore[union-attr]
    page = await redis_store.read_events("c", 0, 10)
    assert [seq for seq, _ in page.events] == [1, 2, 3, 4, 5]


async def test_the_turn_end_acknowledges_its_message(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    keys = redis_store.layout.chat("c")
    started = redis_store.layout.started(keys.partition)
    await redis_store.write(
        [AppendUserMessage("c", 1.0, "me", "hi", message_id="m1", inbound=b'{"x":1}')]
    )
    await redis_store.link.ensure_group(keys.inbox, AGENTS_GROUP)
    # The group was created after the entry: read from the start.
    redis_server.command("XGROUP", "SETID", keys.inbox, AGENTS_GROUP, "0")
    answer = await redis_store.link.xreadgroup(
        AGENTS_GROUP, "owner", {keys.inbox: ">"}, count=10, block_ms=None
    )
    ((_, [(entry_id, fields)]),) = answer
    assert fields["m"] == b'{"x":1}'
    redis_server.command("HSET", started, entry_id, "1")
    await redis_store.write([event("c", 1, ack=entry_id)])
    assert b"*0" in redis_server.command(
        "XPENDING", keys.inbox, AGENTS_GROUP, "-", "+", "10"
    )
    assert redis_server.command("XLEN", keys.inbox).startswith(b":0")
    assert redis_server.command("HLEN", started).startswith(b":0")


async def test_a_retried_user_message_is_stored_once(redis_store: RedisStore) -> None:
    op = AppendUserMessage("c", 1.0, "me", "once", message_id="m-1", inbound=b"{}")
    first = await redis_store.write([op])
    again = await redis_store.write([op])
    assert first == again == [StoredUserMessage(0, first[0].epoch)]  # type: ignore[union-attr]
    assert [m.content for m in await redis_store.user_messages("c")] == ["once"]


async def test_a_retry_finds_its_message_among_the_last_32(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    def message(n: int) -> AppendUserMessage:
        return AppendUserMessage("c", float(n), "me", f"m{n}", message_id=f"m-{n}")

    await redis_store.write([message(0), event("c", 1), event("c", 2)])
    await redis_store.write([message(n) for n in range(1, 32)])
    # m-0 is the 32nd newest: a retry answers where it went (after seq 0).
    (retried,) = await redis_store.write([message(0)])
    assert isinstance(retried, StoredUserMessage) and retried.after_seq == 0
    contents = [m.content for m in await redis_store.user_messages("c")]
    assert contents == [f"m{n}" for n in range(32)]
    # The window is 32 ids long; the list keeps no more, and slides with the
    # chat's TTL like every other key of it.
    keys = redis_store.layout.chat("c")
    await redis_store.write([message(32)])
    assert redis_server.command("LLEN", keys.recent) == b":32\r\n"
    assert redis_server.command("LPOS", keys.recent, "m-0") == b"$-1\r\n"
    pttl = redis_server.command("PTTL", keys.recent)
    assert 0 < int(pttl[1:].split(b"\r")[0]) <= redis_store.chat_ttl_s * 1000


async def test_a_chat_slides_its_ttl_and_comes_back_with_a_new_epoch(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    (first,) = await redis_store.write([event("c", 1)])
    keys = redis_store.layout.chat("c")
    ttl = int(redis_server.command("PTTL", keys.meta)[1:].split(b"\r")[0])
    assert 0 < ttl <= redis_store.chat_ttl_s * 1000
    # Expiry, as Redis does it: every key of the chat goes.
    redis_server.command("DEL", keys.meta, keys.log, keys.eids, keys.users, keys.recent)
    assert await redis_store.chat("c") is None
    (second,) = await redis_store.write([event("c", 2)])
    assert isinstance(first, Appended) and isinstance(second, Appended)
    assert second.seq == 1 and second.epoch != first.epoch


async def test_every_node_must_agree_on_the_partitions(
    redis_store: RedisStore, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    other = RedisStore(redis_server.url, partitions=8)
    with pytest.raises(StoreError) as refused:
        await nursery.start(other.run)
    assert "16 partitions" in str(refused.value)


async def test_a_broadcast_goes_on_the_feed_and_keeps_the_running_state(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    await redis_store.write([event("c", 1)])
    payload = b'{"event":"goal_status","chat_id":"c","status":"running"}'
    assert await redis_store.write(
        [Broadcast("c", payload, "goal_status", running=(True, 12.5))]
    ) == [None]
    meta = await redis_store.chat("c")
    assert meta is not None and meta.run_started_at == 12.5
    await redis_store.write(
        [Broadcast("c", b"{}", "goal_status", running=(False, None))]
    )
    meta = await redis_store.chat("c")
    assert meta is not None and meta.run_started_at is None
    fan = redis_server.command("XLEN", redis_store.layout.chat("c").fan)
    assert fan.startswith(b":3")  # the append and the two broadcasts


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_link_survives_redis_restarts_under_blocked_readers(
    tmp_path: Path,
) -> None:
    """coredis's pool loses a slot per blocked connection that dies; three
    restarts used to leave none, and every call then waited forever.

    The dead connections' anyio streams are never closed by coredis; they
    are collected here, where their ResourceWarnings are expected, rather
    than in whichever test the garbage collector happens to run next.
    """
    server = RedisServer(tmp_path, appendfsync="no").start(persist=False)
    try:
        async with RedisLink.open(server.url) as link:

            async def blocked_reader(n: int) -> None:
                while True:
                    try:
                        await link.xread({f"s{n}": "$"}, count=1, block_ms=5000)
                    except StoreError:
                        await trio.sleep(0.05)

            async with trio.open_nursery() as readers:
                for n in range(20):
                    readers.start_soon(blocked_reader, n)
                await trio.sleep(0.3)  # real time: the readers block in Redis
                for _ in range(5):
                    server.restart(persist=False)
                    await trio.sleep(0.5)  # real time: the readers block again
                    with trio.fail_after(10):  # real time; it used to hang
                        while True:
                            try:
                                assert await link.get("missing") is None
                                break
                            except StoreError:
                                await trio.sleep(0.1)
                readers.cancel_scope.cancel()
    finally:
        server.stop()
        gc.collect()


async def test_a_turn_is_marked_started_in_the_pipeline_of_its_output(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    keys = redis_store.layout.chat("c")
    started = redis_store.layout.started(keys.partition)
    mark = MarkTurnStarted("c", keys.partition, "5-0", 2)
    results = await redis_store.write([mark, event("c", 1)])
    assert results[0] is None and isinstance(results[1], Appended)
    assert redis_server.command("HGET", started, "5-0") == b"$1\r\n2\r\n"


async def test_a_users_message_puts_its_echo_on_the_feed_ahead_of_the_inbox(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """The other nodes' subscribers get the ``user_message`` from the same
    write, and the inbox entry names it: the owner answers after it."""
    echo = b'{"event":"user_message","chat_id":"c","text":"hi","starts_turn":true}'
    op = AppendUserMessage(
        "c", 1.0, "me", "hi", message_id="m-1", inbound=b"{}", echo=echo
    )
    await redis_store.write([op])
    await redis_store.write([op])  # a retry: stored once, echoed once
    keys = redis_store.layout.chat("c")
    fan = redis_server.command("XRANGE", keys.fan, "-", "+")
    inbox = redis_server.command("XRANGE", keys.inbox, "-", "+")
    assert fan.startswith(b"*1\r\n") and echo in fan  # one entry: the echo
    fan_id = fan.split(b"\r\n")[3]  # *1, *2, $len, <id>
    assert inbox.startswith(b"*1\r\n")
    assert b"\r\nf\r\n$%d\r\n%s\r\n" % (len(fan_id), fan_id) in inbox
    node = redis_store.node.encode()
    assert b"\r\nn\r\n$%d\r\n%s\r\n" % (len(node), node) in inbox
