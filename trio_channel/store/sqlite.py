"""The SQLite session store: the default, one file in ``data_dir``.

Durability: WAL mode; a batch is one transaction, committed before
:meth:`SqliteStore.write` returns. With ``synchronous=NORMAL`` (the default)
a committed batch survives a kill -9 of the daemon (it is in the WAL file,
in the OS's page cache); with ``synchronous=FULL`` every commit also waits
for the disk, so it survives power loss too. docs/operations.md has the
measured cost.

Threads: a lone write with ``synchronous=NORMAL`` is committed on the event
loop (:meth:`SqliteStore.write_now`): such a commit only writes to the WAL
file, in the OS's page cache, and costs about a sixth of a thread hop (17
against 100 µs of CPU on our 2-core machine; docs/benchmarks.md). Everything
that may wait goes to worker threads: larger batches (SQLite's C code then
runs beside the loop), ``synchronous=FULL`` commits (an fsync each), a write
that finds the database locked by another process (retried in a thread with
a busy timeout), every read, and WAL checkpoints, which fsync and which
SQLite would otherwise run inside an unlucky commit
(``wal_autocheckpoint`` is off; :meth:`SqliteStore._checkpoints` runs them
every :data:`CHECKPOINT_EVERY` commits). One connection writes, one reads
(WAL lets readers see the last commit while the writer works), one
checkpoints; a trio lock per connection keeps each used by one thread at a
time.

Memory: chat rows are cached, bounded (:class:`RowCache`, least recently
used first out), so a store with millions of chats costs a bounded amount of
RAM. Only the writer thread fills the cache, with committed rows, so it is
always right: the writer takes ``seq`` from it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import attrs
import msgspec
import trio

from .base import (
    ChatMeta,
    EventPage,
    StoreError,
    StoreOp,
    StoreResult,
    UserMessage,
)
from .sqlite_batch import ROW_COLUMNS, SEQ_BOUNDS, Batch, Row, RowCache
from .sqlite_schema import prepare

_T = TypeVar("_T")

DEFAULT_CACHE_ROWS: Final = 10_000
#: The largest batch :meth:`SqliteStore.write_now` commits on the event
#: loop: a lone write. Measured (docs/benchmarks.md): a lone commit means
#: the daemon is not saturated and latency is what counts; two or more
#: queued mean it is busy, and the thread is better twice over: SQLite's C
#: code runs beside the loop, and batches grow while the hop lasts, so a
#: client gets several frames per send. Inlining batches of up to 64 made
#: streams to 10 clients 2.5x and fan-out to 50 subscribers 9x costlier
#: per frame.
INLINE_MAX_OPS: Final = 1
#: Commits between two WAL checkpoints (each in a thread, RESTART: see
#: :meth:`SqliteStore._checkpoints`), or rows written, whichever comes
#: first: a batch of many rows grows the WAL as much as many lone commits.
#: SQLite's own default is about 1,000 pages.
CHECKPOINT_EVERY: Final = 256
CHECKPOINT_ROWS: Final = 1024
#: How long a write in a thread waits for a lock another process holds.
BUSY_TIMEOUT_MS: Final = 5000
#: SQLite's result codes that a retry may cure (the database is busy).
_TRANSIENT_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})

log = logging.getLogger("trio_channel.store")

_unjson = msgspec.json.Decoder()


@attrs.define(eq=False)
class SqliteStore:
    """Chat logs in one SQLite file (see the module docstring)."""

    path: Path
    history_limit: int = 10_000
    synchronous: Literal["normal", "full"] = "normal"
    cache_rows: int = DEFAULT_CACHE_ROWS
    description: str = attrs.field(init=False)
    shared: bool = attrs.field(default=False, init=False)
    _writer: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _reader: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _checkpointer: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _write_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _read_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _rows: RowCache = attrs.field(init=False)
    #: The writer's busy timeout now: 0 on the loop (never wait there).
    _busy_ms: int = attrs.field(default=BUSY_TIMEOUT_MS, init=False)
    _commits: int = attrs.field(default=0, init=False)
    _rows_written: int = attrs.field(default=0, init=False)
    #: WAL checkpoints done (for tests and curiosity).
    checkpoints: int = attrs.field(default=0, init=False)
    _checkpoint_due: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )

    def __attrs_post_init__(self) -> None:
        self.description = f"sqlite {self.path} (synchronous={self.synchronous})"
        self._rows = RowCache(self.cache_rows)

    # --- lifecycle ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await trio.to_thread.run_sync(self._open)
        except (sqlite3.Error, OSError) as exc:
            await trio.to_thread.run_sync(self._close)
            raise StoreError(
                f"cannot open {self.path}: {exc}", transient=False
            ) from exc
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._checkpoints)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                async with self._write_lock, self._read_lock:
                    await trio.to_thread.run_sync(self._close)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        writer = self._writer = self._connect()
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        prepare(writer)
        writer.execute("SELECT count(*) FROM chats").fetchone()
        self._reader = self._connect()
        self._checkpointer = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return db

    def _close(self) -> None:
        for db in (self._writer, self._reader, self._checkpointer):
            if db is not None:
                db.close()
        self._writer = self._reader = self._checkpointer = None

    async def _checkpoints(self) -> None:
        """Move the WAL into the database now and then, in a thread.

        It holds the store's write lock: a checkpoint that lets writes run
        past it never catches up with the last frame, so the WAL is never
        started over and grows without end (270 MB after 20,000 commits,
        measured with PASSIVE; with RESTART alone the writer on the loop
        kept winning SQLite's lock and starved it). Under the lock no write
        competes: lone commits on the loop see the lock taken and queue for
        the committer's task, which waits for it. RESTART also waits for
        readers, so the next write starts the WAL over. About a millisecond
        for 256 commits. A failure is logged and the next checkpoint tries
        again (the WAL only grows meanwhile, nothing is lost).
        """
        while True:
            while not self._checkpoint_is_due():
                await self._checkpoint_due.park()
            self._commits = self._rows_written = 0
            db = self._checkpointer
            if db is None:
                return
            try:
                async with self._write_lock:
                    await trio.to_thread.run_sync(
                        db.execute, "PRAGMA wal_checkpoint(RESTART)"
                    )
            except sqlite3.Error as exc:
                log.warning("sqlite: WAL checkpoint failed (%s); will retry", exc)
            else:
                self.checkpoints += 1

    def _committed(self, results: list[StoreResult]) -> list[StoreResult]:
        self._commits += 1
        self._rows_written += len(results)
        if self._checkpoint_is_due():
            self._checkpoint_due.unpark_all()
        return results

    def _checkpoint_is_due(self) -> bool:
        return (
            self._commits >= CHECKPOINT_EVERY or self._rows_written >= CHECKPOINT_ROWS
        )

    def _set_busy_timeout(self, db: sqlite3.Connection, ms: int) -> None:
        if self._busy_ms != ms:
            db.execute(f"PRAGMA busy_timeout = {ms}")
            self._busy_ms = ms

    # --- writes ---------------------------------------------------------------

    async def write(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        async with self._write_lock:
            if self._writer is not None:
                self._set_busy_timeout(self._writer, BUSY_TIMEOUT_MS)
            return self._committed(await self._in_thread(self._apply, list(ops)))

    def write_now(self, ops: Sequence[StoreOp]) -> list[StoreResult] | None:
        """Commit a small batch on the event loop (see the module docstring).

        None, with nothing written, for ``synchronous=FULL``, a batch over
        :data:`INLINE_MAX_OPS`, a write already running in a thread, or a
        database another process has locked: :meth:`write` then does it.
        """
        db = self._writer
        if (
            db is None
            or self.synchronous != "normal"
            or len(ops) > INLINE_MAX_OPS
            or self._write_lock.locked()
        ):
            return None
        try:
            self._set_busy_timeout(db, 0)
            return self._committed(self._apply(list(ops)))
        except sqlite3.Error as exc:
            error = _store_error(exc)
            if error.transient:
                return None
            raise error from exc

    def _apply(self, ops: list[StoreOp]) -> list[StoreResult]:
        db = self._writer
        if db is None:
            raise StoreError("the store is closed", transient=False)
        batch = Batch(db, self._rows, self.history_limit)
        db.execute("BEGIN IMMEDIATE")
        try:
            results = [batch.apply(op) for op in ops]
            batch.save()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._rows.install(batch.staged)
        return results

    async def probe(self) -> None:
        async with self._write_lock:
            await self._in_thread(self._write_probe)

    def _write_probe(self) -> None:
        db = self._writer
        if db is None:
            raise StoreError("the store is closed", transient=False)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, julianday())")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # --- reads ----------------------------------------------------------------

    async def chat(self, chat_id: str) -> ChatMeta | None:
        cached = self._rows.get(chat_id)
        if cached is not None:
            return cached.meta()
        return await self._read(self._select_chat, chat_id)

    def _select_chat(self, db: sqlite3.Connection, chat_id: str) -> ChatMeta | None:
        row = db.execute(
            f"SELECT {ROW_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        return None if row is None else Row.from_sql(row).meta()

    async def chats(self, limit: int) -> list[ChatMeta]:
        return await self._read(self._select_chats, limit)

    def _select_chats(self, db: sqlite3.Connection, limit: int) -> list[ChatMeta]:
        rows = db.execute(
            f"SELECT {ROW_COLUMNS} FROM chats ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [Row.from_sql(row).meta() for row in rows]

    async def read_events(self, chat_id: str, after_seq: int, limit: int) -> EventPage:
        return await self._read(self._select_events, chat_id, after_seq, limit)

    def _select_events(
        self, db: sqlite3.Connection, chat_id: str, after_seq: int, limit: int
    ) -> EventPage:
        db.execute("BEGIN")  # one snapshot for the row and its events
        try:
            row = db.execute(
                f"SELECT id, epoch, {SEQ_BOUNDS} FROM chats WHERE chat_id = ?",
                (chat_id,),
            ).fetchone()
            if row is None:
                return EventPage(1, [], 0, None)
            events = db.execute(
                "SELECT seq, payload FROM events WHERE chat = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (row[0], after_seq, limit),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        return EventPage(row[2], events, row[3], row[1])

    async def user_messages(
        self, chat_id: str, since_seq: int = 0, limit: int = 10_000
    ) -> list[UserMessage]:
        return await self._read(self._select_user_messages, chat_id, since_seq, limit)

    def _select_user_messages(
        self, db: sqlite3.Connection, chat_id: str, since_seq: int, limit: int
    ) -> list[UserMessage]:
        rows = db.execute(
            "SELECT u.after_seq, u.at, u.client_id, u.content, u.media, u.turn_id"
            " FROM user_messages u JOIN chats c ON c.id = u.chat"
            " WHERE c.chat_id = ? AND u.after_seq >= ? ORDER BY u.id LIMIT ?",
            (chat_id, since_seq, limit),
        )
        return [
            UserMessage(
                chat_id, r[0], r[1], r[2], r[3], tuple(_unjson.decode(r[4])), r[5]
            )
            for r in rows
        ]

    # --- helpers --------------------------------------------------------------

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        async with self._read_lock:
            db = self._reader
            if db is None:
                raise StoreError("the store is closed", transient=False)
            return await self._in_thread(fn, db, *args)

    @staticmethod
    async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except sqlite3.Error as exc:
            raise _store_error(exc) from exc


def _store_error(exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return StoreError(f"sqlite: {exc} ({name})", transient=code in _TRANSIENT_CODES)
