"""SessionStore contract: seq, durability across restarts, truncation, reads
that include in-flight events. Written against the store's public interface so
a second implementation can run the same tests (parametrize ``open_store``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from trio_channel.store.sqlite import SessionStore


def event(text: str) -> Callable[[int], bytes]:
    def encode(seq: int) -> bytes:
        return json.dumps({"event": "message", "text": text, "seq": seq}).encode()

    return encode


@asynccontextmanager
async def open_store(path: str, **kwargs: object) -> AsyncIterator[SessionStore]:
    store = SessionStore(path=path, **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        yield store
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["sqlite", "memory"])
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "s.sqlite3") if request.param == "sqlite" else ":memory:"


def texts(events: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    return [(seq, json.loads(payload)["text"]) for seq, payload in events]


async def test_seq_starts_at_one_per_chat_without_gaps(db_path):
    async with open_store(db_path) as store:
        assert [store.append_event("a", event(str(i)))[0] for i in range(3)] == [
            1,
            2,
            3,
        ]
        assert store.append_event("b", event("x"))[0] == 1
        seq, payload = store.append_event("a", event("y"))
        assert seq == 4
        assert json.loads(payload) == {"event": "message", "text": "y", "seq": 4}
        page = await store.read_events("a", 0, 100)
        assert texts(page.events) == [(1, "0"), (2, "1"), (3, "2"), (4, "y")]
        assert page.first_seq == 1


async def test_reads_include_events_not_yet_committed(db_path):
    async with open_store(db_path) as store:
        for i in range(5):
            store.append_event("c", event(str(i)))
        # No checkpoint since the appends: nothing can have been committed.
        page = await store.read_events("c", 2, 100)
        assert texts(page.events) == [(3, "2"), (4, "3"), (5, "4")]
        await store.flush()
        page = await store.read_events("c", 0, 2)
        assert texts(page.events) == [(1, "0"), (2, "1")]


async def test_reads_during_concurrent_writes_have_no_gap_or_duplicate(db_path):
    async with open_store(db_path) as store, trio.open_nursery() as nursery:

        async def produce() -> None:
            for i in range(2000):
                store.append_event("c", event(str(i)))
                if i % 7 == 0:
                    await trio.lowlevel.checkpoint()

        nursery.start_soon(produce)
        seen: list[int] = []
        while len(seen) < 2000:
            page = await store.read_events("c", seen[-1] if seen else 0, 97)
            seen += [seq for seq, _ in page.events]
        assert seen == list(range(1, 2001))


async def test_seq_and_history_survive_a_restart(tmp_path):
    path = str(tmp_path / "s.sqlite3")
    async with open_store(path) as store:
        for i in range(3):
            store.append_event("c", event(str(i)))
        store.append_user_message("c", "alice", "hello", ("/m/a.png",))
        store.update_chat("c", workspace_scope={"root": "/w"}, goal_state={"g": 1})
    # Cancelling run() committed everything queued.
    async with open_store(path) as store:
        meta = store.chat("c")
        assert meta is not None
        assert (meta.last_seq, meta.workspace_scope, meta.goal_state) == (
            3,
            {"root": "/w"},
            {"g": 1},
        )
        assert store.append_event("c", event("after"))[0] == 4
        page = await store.read_events("c", 0, 100)
        assert [seq for seq, _ in page.events] == [1, 2, 3, 4]
        [message] = await store.user_messages("c")
        assert (message.after_seq, message.client_id, message.content) == (
            3,
            "alice",
            "hello",
        )
        assert message.media == ("/m/a.png",)


async def test_history_is_bounded_per_chat(db_path):
    async with open_store(db_path, history_limit=5) as store:
        for i in range(12):
            store.append_event("c", event(str(i)))
        await store.flush()
        page = await store.read_events("c", 0, 100)
        assert page.first_seq == 8
        assert [seq for seq, _ in page.events] == [8, 9, 10, 11, 12]


async def test_deleted_chats_never_reuse_seq(db_path):
    async with open_store(db_path) as store:
        store.append_event("c", event("a"))
        store.append_event("c", event("b"))
        assert await store.delete_chat("c") is True
        assert await store.delete_chat("c") is False
        assert await store.delete_chat("never") is False
        assert store.chat("c") is None
        assert [m.chat_id for m in store.chats()] == []
        assert store.append_event("c", event("again"))[0] == 3
        page = await store.read_events("c", 0, 100)
        assert texts(page.events) == [(3, "again")]
        assert page.first_seq == 3


async def test_chats_are_listed_newest_first(db_path):
    clock = iter(range(100))
    async with open_store(db_path, wall_clock=lambda: float(next(clock))) as store:
        store.update_chat("old")
        store.append_event("new", event("x"))
        store.append_event("old", event("y"))
        assert [m.chat_id for m in store.chats()] == ["old", "new"]


async def test_the_write_queue_is_bounded(db_path):
    async with open_store(db_path, queue_size=4) as store:
        for i in range(4):
            store.append_event("c", event(str(i)))
        assert store.queue_depth == 4
        with trio.fail_after(5):
            await store.wait_for_room()  # the writer drains it
        assert store.queue_depth < 4


async def test_flush_reports_commit_time(tmp_path):
    flushes: list[float] = []
    path = str(tmp_path / "s.sqlite3")
    async with open_store(path, on_flush=flushes.append) as store:
        store.append_event("c", event("x"))
        await store.flush()
    assert flushes
    assert all(seconds >= 0 for seconds in flushes)
