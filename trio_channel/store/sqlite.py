"""The SQLite session store: the default, one file in ``data_dir``.

Durability: WAL mode; a batch is one transaction, committed before
:meth:`SqliteStore.write` returns. With ``synchronous=NORMAL`` (the default)
a committed batch survives a kill -9 of the daemon (it is in the WAL file,
in the OS's page cache); with ``synchronous=FULL`` every commit also waits
for the disk, so it survives power loss too. docs/operations.md has the
measured cost.

Threads: all SQL runs in worker threads, never on the event loop. One
connection writes, one reads (WAL lets readers see the last commit while the
writer works); a trio lock per connection keeps each used by one thread at
a time.

Memory: chat rows are cached, bounded (:class:`_RowCache`, least recently
used first out), so a store with millions of chats costs a bounded amount of
RAM. Only the writer thread fills the cache, with committed rows, so it is
always right: the writer takes ``seq`` from it.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from threading import Lock
from typing import Any, Final, Literal, TypeVar

import attrs
import msgspec
import trio

from .base import (
    PREVIEW_CHARS,
    TITLE_CHARS,
    Appended,
    AppendEvent,
    AppendUserMessage,
    ChatMeta,
    DeleteChat,
    EventPage,
    StoredUserMessage,
    StoreError,
    StoreOp,
    StoreResult,
    UpdateChat,
    UserMessage,
    new_epoch,
    with_seq,
)
from .sqlite_schema import prepare

_T = TypeVar("_T")

DEFAULT_CACHE_ROWS: Final = 10_000
#: SQLite's result codes that a retry may cure (the database is busy).
_TRANSIENT_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_ROW_COLUMNS: Final = (
    "id, chat_id, epoch, created_at, updated_at, first_seq, last_seq,"
    " workspace_scope, goal_state, title, preview"
)

_json = msgspec.json.Encoder()
_unjson = msgspec.json.Decoder()


@attrs.define(slots=True)
class _Row:
    """A chat row as the writer works on it (a staged copy until commit)."""

    id: int
    chat_id: str
    epoch: str
    created_at: float
    updated_at: float
    first_seq: int = 1
    last_seq: int = 0
    workspace_scope: Any = None
    goal_state: Any = None
    title: str | None = None
    preview: str | None = None

    def meta(self) -> ChatMeta:
        return ChatMeta(
            chat_id=self.chat_id,
            epoch=self.epoch,
            created_at=self.created_at,
            updated_at=self.updated_at,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            workspace_scope=self.workspace_scope,
            goal_state=self.goal_state,
            title=self.title,
            preview=self.preview,
        )

    @classmethod
    def from_sql(cls, row: tuple[Any, ...]) -> _Row:
        return cls(
            id=row[0],
            chat_id=row[1],
            epoch=row[2],
            created_at=row[3],
            updated_at=row[4],
            first_seq=row[5],
            last_seq=row[6],
            workspace_scope=_load(row[7]),
            goal_state=_load(row[8]),
            title=row[9],
            preview=row[10],
        )


@attrs.define
class _RowCache:
    """Committed chat rows, least recently used evicted first.

    Written by the writer thread only; the event loop may peek (under the
    lock) to answer :meth:`SqliteStore.chat` without a thread hop.
    """

    capacity: int
    _rows: OrderedDict[str, _Row] = attrs.field(factory=OrderedDict)
    _lock: Lock = attrs.field(factory=Lock)

    def get(self, chat_id: str) -> _Row | None:
        with self._lock:
            row = self._rows.get(chat_id)
            if row is not None:
                self._rows.move_to_end(chat_id)
            return row

    def install(self, rows: dict[str, _Row | None]) -> None:
        with self._lock:
            for chat_id, row in rows.items():
                if row is None:
                    self._rows.pop(chat_id, None)
                    continue
                self._rows[chat_id] = row
                self._rows.move_to_end(chat_id)
            while len(self._rows) > self.capacity:
                self._rows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._rows)


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
    _write_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _read_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _rows: _RowCache = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.description = f"sqlite {self.path} (synchronous={self.synchronous})"
        self._rows = _RowCache(self.cache_rows)

    # --- lifecycle ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            await trio.to_thread.run_sync(self._open)
        except (sqlite3.Error, OSError) as exc:
            await trio.to_thread.run_sync(self._close)
            raise StoreError(
                f"cannot open {self.path}: {exc}", transient=False
            ) from exc
        task_status.started()
        try:
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
        prepare(writer)
        writer.execute("SELECT count(*) FROM chats").fetchone()
        self._reader = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    def _close(self) -> None:
        for db in (self._writer, self._reader):
            if db is not None:
                db.close()
        self._writer = self._reader = None

    # --- writes ---------------------------------------------------------------

    async def write(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        async with self._write_lock:
            return await self._in_thread(self._apply, list(ops))

    def _apply(self, ops: list[StoreOp]) -> list[StoreResult]:
        db = self._writer
        if db is None:
            raise StoreError("the store is closed", transient=False)
        batch = _Batch(db, self._rows, self.history_limit)
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
            f"SELECT {_ROW_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        return None if row is None else _Row.from_sql(row).meta()

    async def chats(self, limit: int) -> list[ChatMeta]:
        return await self._read(self._select_chats, limit)

    def _select_chats(self, db: sqlite3.Connection, limit: int) -> list[ChatMeta]:
        rows = db.execute(
            f"SELECT {_ROW_COLUMNS} FROM chats ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [_Row.from_sql(row).meta() for row in rows]

    async def read_events(self, chat_id: str, after_seq: int, limit: int) -> EventPage:
        return await self._read(self._select_events, chat_id, after_seq, limit)

    def _select_events(
        self, db: sqlite3.Connection, chat_id: str, after_seq: int, limit: int
    ) -> EventPage:
        db.execute("BEGIN")  # one snapshot for the row and its events
        try:
            row = db.execute(
                "SELECT id, epoch, first_seq, last_seq FROM chats WHERE chat_id = ?",
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
            code = getattr(exc, "sqlite_errorcode", None)
            name = getattr(exc, "sqlite_errorname", type(exc).__name__)
            raise StoreError(
                f"sqlite: {exc} ({name})", transient=code in _TRANSIENT_CODES
            ) from exc


@attrs.define
class _Batch:
    """One write transaction: staged copies of every chat row it touches."""

    db: sqlite3.Connection
    cache: _RowCache
    history_limit: int
    #: chat_id -> the row after this batch; None: deleted.
    staged: dict[str, _Row | None] = attrs.field(factory=dict)

    def apply(self, op: StoreOp) -> StoreResult:
        if isinstance(op, AppendEvent):
            return self._append_event(op)
        if isinstance(op, AppendUserMessage):
            return self._append_user_message(op)
        if isinstance(op, UpdateChat):
            return self._update_chat(op)
        if isinstance(op, DeleteChat):
            return self._delete_chat(op)
        return None  # Broadcast: nobody else to tell

    def _row(self, chat_id: str) -> _Row | None:
        if chat_id in self.staged:
            return self.staged[chat_id]
        cached = self.cache.get(chat_id)
        if cached is not None:
            row: _Row | None = attrs.evolve(cached)
        else:
            found = self.db.execute(
                f"SELECT {_ROW_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,)
            ).fetchone()
            row = None if found is None else _Row.from_sql(found)
        self.staged[chat_id] = row
        return row

    def _row_or_new(self, chat_id: str, at: float) -> _Row:
        row = self._row(chat_id)
        if row is None:
            epoch = new_epoch()
            cursor = self.db.execute(
                "INSERT INTO chats (chat_id, epoch, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (chat_id, epoch, at, at),
            )
            assert cursor.lastrowid is not None
            row = self.staged[chat_id] = _Row(cursor.lastrowid, chat_id, epoch, at, at)
        return row

    def _append_event(self, op: AppendEvent) -> Appended:
        row = self._row_or_new(op.chat_id, op.at)
        seq = row.last_seq + 1
        payload = with_seq(op.payload, seq)
        inserted = self.db.execute(
            "INSERT INTO events (chat, seq, event_id, payload) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            (row.id, seq, op.event_id, payload),
        ).rowcount
        if not inserted:
            # A retry of an append that was stored: its first seq stands.
            seq, payload, epoch = self.db.execute(
                "SELECT e.seq, e.payload, c.epoch FROM events e JOIN chats c"
                " ON c.id = e.chat WHERE e.event_id = ?",
                (op.event_id,),
            ).fetchone()
            return Appended(seq, epoch, payload)
        row.last_seq = seq
        row.updated_at = max(row.updated_at, op.at)
        if row.preview is None and op.text:
            row.preview = op.text[:PREVIEW_CHARS]
        return Appended(seq, row.epoch, payload)

    def _append_user_message(self, op: AppendUserMessage) -> StoredUserMessage:
        row = self._row_or_new(op.chat_id, op.at)
        self.db.execute(
            "INSERT INTO user_messages (chat, after_seq, at, client_id, content,"
            " media, turn_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.last_seq,
                op.at,
                op.client_id,
                op.content,
                _json.encode(list(op.media)).decode(),
                op.turn_id,
            ),
        )
        row.updated_at = max(row.updated_at, op.at)
        if row.title is None and op.content.strip():
            row.title = op.content.strip()[:TITLE_CHARS]
        if row.preview is None and op.content.strip():
            row.preview = op.content.strip()[:PREVIEW_CHARS]
        return StoredUserMessage(row.last_seq, row.epoch)

    def _update_chat(self, op: UpdateChat) -> ChatMeta:
        row = self._row_or_new(op.chat_id, op.at)
        if op.workspace_scope is not msgspec.UNSET:
            row.workspace_scope = op.workspace_scope
        if op.goal_state is not msgspec.UNSET:
            row.goal_state = op.goal_state
        if op.title is not msgspec.UNSET:
            row.title = op.title
        return row.meta()

    def _delete_chat(self, op: DeleteChat) -> bool:
        row = self._row(op.chat_id)
        if row is None:
            return False
        self.db.execute("DELETE FROM events WHERE chat = ?", (row.id,))
        self.db.execute("DELETE FROM user_messages WHERE chat = ?", (row.id,))
        self.db.execute("DELETE FROM chats WHERE id = ?", (row.id,))
        self.staged[op.chat_id] = None
        return True

    def save(self) -> None:
        """Write each touched row once, trimming logs past ``history_limit``."""
        for row in self.staged.values():
            if row is None:
                continue
            first = row.last_seq - self.history_limit + 1
            if first > row.first_seq:
                self.db.execute(
                    "DELETE FROM events WHERE chat = ? AND seq < ?", (row.id, first)
                )
                self.db.execute(
                    "DELETE FROM user_messages WHERE chat = ? AND after_seq < ?",
                    (row.id, first - 1),
                )
                row.first_seq = first
            self.db.execute(
                "UPDATE chats SET updated_at = ?, first_seq = ?, last_seq = ?,"
                " workspace_scope = ?, goal_state = ?, title = ?, preview = ?"
                " WHERE id = ?",
                (
                    row.updated_at,
                    row.first_seq,
                    row.last_seq,
                    _dump(row.workspace_scope),
                    _dump(row.goal_state),
                    row.title,
                    row.preview,
                    row.id,
                ),
            )


def _dump(value: Any) -> str | None:
    return None if value is None else _json.encode(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else _unjson.decode(text)
