"""What only the SQLite store does: a file that survives, atomic batches,
a full disk, a corrupt file, the first release's schema, a bounded cache.

The behaviour every store shares is in ``test_store_contract.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest
import trio
import trio.lowlevel

from trio_channel.store import sqlite as sqlite_store
from trio_channel.store.base import (
    Appended,
    AppendEvent,
    AppendUserMessage,
    StoreError,
    UpdateChat,
)
from trio_channel.store.sqlite import INLINE_MAX_OPS, SqliteStore


def event(chat_id: str, text: str, n: int, at: float | None = None) -> AppendEvent:
    payload = msgspec.json.encode(
        {"event": "message", "chat_id": chat_id, "text": text}
    )
    at = float(n) if at is None else at
    return AppendEvent(chat_id, f"t:{n:08x}", payload, at=at, text=text)


async def run(store: SqliteStore, nursery: trio.Nursery) -> SqliteStore:
    await nursery.start(store.run)
    return store


async def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with trio.open_nursery() as nursery:
        store = await run(SqliteStore(path), nursery)
        (first,) = await store.write([event("c", "one", 1)])
        await store.write(
            [
                AppendUserMessage("c", 2.0, "alice", "hi", ("/m/x.png",), "turn-1"),
                UpdateChat("c", 2.0, goal_state={"g": 1}, workspace_scope={"w": 1}),
            ]
        )
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        store = await run(SqliteStore(path), nursery)
        page = await store.read_events("c", 0, 10)
        assert isinstance(first, Appended)
        assert page.events == [(1, first.payload)] and page.epoch == first.epoch
        meta = await store.chat("c")
        assert meta is not None
        assert (meta.goal_state, meta.workspace_scope, meta.title) == (
            {"g": 1},
            {"w": 1},
            "hi",
        )
        (message,) = await store.user_messages("c")
        assert (message.media, message.turn_id) == (("/m/x.png",), "turn-1")
        (second,) = await store.write([event("c", "two", 2)])
        assert isinstance(second, Appended) and second.seq == 2
        nursery.cancel_scope.cancel()


async def test_a_failed_batch_leaves_nothing_and_uses_no_seq(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    store = await run(SqliteStore(tmp_path / "s.sqlite3"), nursery)
    await store.write([event("c", "kept", 1)])
    bad = UpdateChat("c", 3.0, goal_state={"x": object()})  # cannot be stored
    with pytest.raises(TypeError):
        await store.write([event("c", "lost", 2), event("d", "lost", 3), bad])
    assert [seq for seq, _ in (await store.read_events("c", 0, 10)).events] == [1]
    assert await store.chat("d") is None
    (again,) = await store.write([event("c", "next", 4)])
    assert isinstance(again, Appended) and again.seq == 2


async def test_a_full_disk_is_a_persistent_error_and_a_retry_works(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    store = await run(SqliteStore(tmp_path / "s.sqlite3"), nursery)
    await store.write([event("c", "small", 1)])
    # White box: cap the file at its current size, as a full disk would.
    writer = store._writer
    assert writer is not None
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")
    batch = [event("c", "x" * 20_000, n) for n in range(10, 40)]
    with pytest.raises(StoreError) as failed:
        await store.write(batch)
    assert not failed.value.transient
    assert "full" in str(failed.value)
    writer.execute("PRAGMA max_page_count = 1073741823")
    stored = await store.write(batch)
    assert [r.seq for r in stored if isinstance(r, Appended)] == list(range(2, 32))


async def test_a_corrupt_file_is_named(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "sessions.sqlite3"
    path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StoreError) as failed:
        await nursery.start(SqliteStore(path).run)
    assert str(path) in str(failed.value)
    assert not failed.value.transient


async def test_the_cache_is_bounded_and_misses_read_the_file(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    store = await run(SqliteStore(tmp_path / "s.sqlite3", cache_rows=3), nursery)
    for n in range(10):
        await store.write([event(f"c{n}", "x", n), event(f"c{n}", "y", 100 + n)])
    assert len(store._rows) == 3
    meta = await store.chat("c0")  # long evicted
    assert meta is not None and meta.last_seq == 2
    (third,) = await store.write([event("c0", "z", 999)])
    assert isinstance(third, Appended) and third.seq == 3


async def test_synchronous_full_is_applied(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    store = await run(SqliteStore(tmp_path / "s.sqlite3", synchronous="full"), nursery)
    writer = store._writer
    assert writer is not None
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert "synchronous=full" in store.description


async def test_small_batches_commit_on_the_loop_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    async with trio.open_nursery() as nursery:
        store = await run(SqliteStore(path), nursery)
        results = [
            store.write_now([event("c", text, n)])
            for n, text in [(1, "one"), (2, "two")]
        ]
        assert [r[0].seq for r in results if r and isinstance(r[0], Appended)] == [1, 2]
        nursery.cancel_scope.cancel()
    # What write_now returned is committed: a fresh process sees it.
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    db.close()


async def test_write_now_declines_what_would_wait_and_writes_nothing(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    full = await run(SqliteStore(tmp_path / "f.sqlite3", synchronous="full"), nursery)
    assert full.write_now([event("c", "x", 1)]) is None  # an fsync per commit
    store = await run(SqliteStore(tmp_path / "s.sqlite3"), nursery)
    big = [event("c", "x", n) for n in range(INLINE_MAX_OPS + 1)]
    assert store.write_now(big) is None  # the thread runs beside the loop
    # Another process holds the write lock: declined at once, not waited for.
    other = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    assert store.write_now([event("c", "x", 1)]) is None
    other.execute("COMMIT")
    other.close()
    assert await store.chat("c") is None and await full.chat("c") is None
    stored = await store.write(big)  # the thread path takes them all
    assert [r.seq for r in stored if isinstance(r, Appended)][-1] == len(big)


async def test_a_locked_database_is_waited_for_in_a_thread(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    store = await run(SqliteStore(tmp_path / "s.sqlite3"), nursery)
    other = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    async with trio.open_nursery() as writers:
        writers.start_soon(store.write, [event("c", "waited", 1)])
        await trio.sleep(0.02)  # real time: the thread is in SQLite's busy wait
        assert await store.chat("c") is None
        other.execute("COMMIT")
    other.close()
    page = await store.read_events("c", 0, 10)
    assert [seq for seq, _ in page.events] == [1]


async def test_a_row_written_lazily_still_reads_back_exactly(tmp_path: Path) -> None:
    """Appends within a second skip the chat row; seq comes from the events."""
    path = tmp_path / "s.sqlite3"
    async with trio.open_nursery() as nursery:
        store = await run(SqliteStore(path, cache_rows=1), nursery)
        for n in range(1, 6):  # 0.1 s apart: only the first writes the row
            assert store.write_now([event("c", "x", n, at=n / 10)]) is not None
        on_disk = (
            sqlite3.connect(path)
            .execute("SELECT last_seq FROM chats WHERE chat_id = 'c'")
            .fetchone()[0]
        )
        assert on_disk < 5  # the row trails ...
        await store.write([event("other", "x", 99)])  # evicts "c" from the cache
        meta = await store.chat("c")  # ... but what is read is exact
        assert meta is not None and meta.last_seq == 5
        (sixth,) = await store.write([event("c", "x", 6, at=0.6)])
        assert isinstance(sixth, Appended) and sixth.seq == 6
        page = await store.read_events("c", 0, 10)
        assert (page.first_seq, page.last_seq) == (1, 6)
        nursery.cancel_scope.cancel()


async def test_checkpoints_keep_the_wal_small_under_steady_writes(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes never wait for a checkpoint here, as under load; a checkpoint
    that let them run past it (PASSIVE) never started the WAL over, and it
    grew by every commit (270 MB after 20,000)."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 16)
    store = await run(SqliteStore(tmp_path / "s.sqlite3"), nursery)
    wal = tmp_path / "s.sqlite3-wal"
    largest = 0
    for n in range(1600):
        ops = [event("c", "x" * 2000, n)]
        if store.write_now(ops) is None:  # a checkpoint holds the database
            await store.write(ops)
        if n % 4 == 0:
            await trio.lowlevel.checkpoint()  # let the checkpoint thread's result in
        largest = max(largest, wal.stat().st_size)
    # 1,600 commits of a 2 KB event: a WAL of about 10 MB if it were never
    # started over; a few checkpoint intervals' worth (16 commits each) if it is.
    assert store.checkpoints >= 8
    assert largest < 1_500_000, largest
    page = await store.read_events("c", 0, 2000)
    assert len(page.events) == 1600


async def test_large_batches_are_checkpointed_by_the_rows_they_write(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Few commits of many rows (new chats under load) grow the WAL as much
    as many lone commits: 64 commits of 100 chats each must checkpoint."""
    store = await run(SqliteStore(tmp_path / "s.sqlite3"), nursery)
    wal = tmp_path / "s.sqlite3-wal"
    largest = 0
    for n in range(64):
        await store.write(
            [UpdateChat(f"chat-{n}-{i}", float(n), title="x" * 200) for i in range(100)]
        )
        await trio.lowlevel.checkpoint()
        largest = max(largest, wal.stat().st_size)
    assert store.checkpoints >= 4
    # Without them: about 6 MB; with them, a checkpoint interval's worth.
    assert largest < 3_000_000, largest
    assert len(await store.chats(10_000)) == 6400


V1_SCHEMA = """
CREATE TABLE chats (chat_id TEXT PRIMARY KEY, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, workspace_scope TEXT, goal_state TEXT,
    first_seq INTEGER NOT NULL DEFAULT 1, last_seq INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE events (chat_id TEXT NOT NULL, seq INTEGER NOT NULL,
    event_id TEXT NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (chat_id, seq),
    UNIQUE (chat_id, event_id)) WITHOUT ROWID;
CREATE TABLE user_messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id TEXT NOT NULL, after_seq INTEGER NOT NULL, at REAL NOT NULL,
    client_id TEXT NOT NULL, content TEXT NOT NULL, media TEXT NOT NULL);
CREATE INDEX user_messages_by_chat ON user_messages (chat_id, id);
"""


async def test_the_first_releases_file_is_migrated(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = tmp_path / "sessions.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO chats VALUES ('c', 1.0, 5.0, '{\"w\":1}', NULL, 2, 3, 0)")
    db.execute("INSERT INTO chats VALUES ('gone', 1.0, 2.0, NULL, NULL, 8, 7, 1)")
    for seq in (2, 3):
        payload = b'{"event":"message","chat_id":"c","text":"t","seq":%d}' % seq
        db.execute(
            "INSERT INTO events VALUES ('c', ?, ?, ?)", (seq, f"n:{seq}", payload)
        )
    db.execute(
        "INSERT INTO user_messages (chat_id, after_seq, at, client_id, content, media)"
        " VALUES ('c', 1, 4.0, 'alice', 'hello there', '[]')"
    )
    db.commit()
    db.close()
    store = await run(SqliteStore(path), nursery)
    meta = await store.chat("c")
    assert meta is not None
    assert (meta.first_seq, meta.last_seq, meta.workspace_scope) == (2, 3, {"w": 1})
    assert meta.title == "hello there" and meta.epoch
    page = await store.read_events("c", 0, 10)
    assert [seq for seq, _ in page.events] == [2, 3]
    assert [m.content for m in await store.user_messages("c")] == ["hello there"]
    assert await store.chat("gone") is None
    (next_event,) = await store.write([event("c", "new", 9)])
    assert isinstance(next_event, Appended) and next_event.seq == 4
