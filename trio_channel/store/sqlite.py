"""The session store: per-chat event log with ``seq``, user messages, chat metadata.

Why it looks like this:

- **The dispatcher never waits on disk per event.** :meth:`SessionStore.append_event`
  is synchronous: it assigns the chat's next ``seq`` from an in-memory mirror,
  remembers the encoded event as *pending* and queues the write. One writer
  task (:meth:`SessionStore.run`) commits everything queued in one transaction
  per batch, off the event loop (``trio.to_thread``), then forgets the pending
  copies. Callers that produce writes call :meth:`SessionStore.wait_for_room`
  first, so the queue stays bounded (back-pressure, never unbounded memory).
- **Reads never miss an event still in flight.** A read takes the same lock the
  writer holds while it commits, reads the database, and appends the pending
  events: the database holds a prefix of the log and pending the rest, so
  replay has no gap and no duplicate while the agent keeps producing.
- **``seq`` is never reused.** It starts at 1 per chat, has no gaps, survives
  restarts (loaded at start) and even deleting a chat (a tombstone keeps it).
- **Chat metadata** (times, workspace scope, goal state) lives in memory and
  is written as dirty rows with the next batch, coalesced per chat.

SQLite in WAL mode is the first implementation; ``":memory:"`` gives the same
behaviour without a file (tests, or a daemon that must not persist).
"""

from __future__ import annotations

import itertools
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import msgspec
import trio

_T = TypeVar("_T")

DEFAULT_HISTORY_LIMIT = 10_000
DEFAULT_QUEUE_SIZE = 8192
DEFAULT_FLUSH_INTERVAL_S = 0.02

_json = msgspec.json.Encoder()
_unjson = msgspec.json.Decoder()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    chat_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    workspace_scope TEXT,
    goal_state TEXT,
    first_seq INTEGER NOT NULL DEFAULT 1,
    last_seq INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    chat_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (chat_id, seq),
    UNIQUE (chat_id, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id TEXT NOT NULL,
    after_seq INTEGER NOT NULL,
    at REAL NOT NULL,
    client_id TEXT NOT NULL,
    content TEXT NOT NULL,
    media TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS user_messages_by_chat ON user_messages (chat_id, id);
"""


@attrs.define
class ChatMeta:
    """What the store knows about one chat (mirrored in memory)."""

    chat_id: str
    created_at: float
    updated_at: float
    workspace_scope: Any = None
    goal_state: dict[str, Any] | None = None
    first_seq: int = 1
    last_seq: int = 0
    deleted: bool = False
    #: The title the chat was given; None until one is set.
    title: str | None = None
    #: The first user message text, else the first reply text; None while
    #: the chat has neither.
    preview: str | None = None


@attrs.frozen
class EventPage:
    """Persisted events of one chat after some ``seq``, in order."""

    #: The oldest ``seq`` still kept (``last_seq + 1`` when nothing is kept).
    first_seq: int
    #: ``(seq, payload)``; payload is the event's JSON as sent to clients.
    events: list[tuple[int, bytes]]
    #: The chat's newest ``seq`` when the page was read (0: no event yet).
    last_seq: int = 0


@attrs.frozen
class UserMessage:
    chat_id: str
    #: The chat's last ``seq`` when the message arrived: it sits after that event.
    after_seq: int
    at: float
    client_id: str
    content: str
    media: tuple[str, ...]


@attrs.frozen
class _AppendEvent:
    chat_id: str
    seq: int
    event_id: str
    payload: bytes


_Op = _AppendEvent | UserMessage


@attrs.define(eq=False)
class SessionStore:
    """Durable chat history. Run :meth:`run` in a nursery before using it."""

    path: str
    history_limit: int = DEFAULT_HISTORY_LIMIT
    queue_size: int = DEFAULT_QUEUE_SIZE
    wall_clock: Callable[[], float] = time.time
    #: Called with each batch's commit time in seconds (metrics hook).
    on_flush: Callable[[float], None] | None = None
    #: How long the writer gathers writes before committing them as one
    #: batch: fewer transactions and thread hops under load, at the price of
    #: what a kill -9 may lose (see docs/operations.md). At most 50 ms.
    flush_interval_s: float = attrs.field(
        default=DEFAULT_FLUSH_INTERVAL_S, validator=attrs.validators.le(0.05)
    )

    _chats: dict[str, ChatMeta] = attrs.field(factory=dict, init=False)
    _pending: dict[str, deque[tuple[int, bytes]]] = attrs.field(
        factory=dict, init=False
    )
    _ops: deque[_Op] = attrs.field(factory=deque, init=False)
    _dirty: set[str] = attrs.field(factory=set, init=False)
    _deleted: list[str] = attrs.field(factory=list, init=False)
    _db: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _writer_lot: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )
    _room_lot: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )
    _flushed_lot: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False
    )
    _event_ids: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _node: str = attrs.field(factory=lambda: secrets.token_hex(4), init=False)
    #: Writes asked for so far, and how many of them are committed.
    _requested: int = attrs.field(default=0, init=False)
    _committed: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    #: Someone waits for a commit: the writer skips gathering.
    _urgent: bool = attrs.field(default=False, init=False)

    # --- lifecycle ----------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the database, load every chat, then commit batches until cancelled.

        On cancellation everything queued is committed before returning
        (shielded), so a graceful shutdown keeps every event.
        """
        await self._off_loop(self._open)
        task_status.started()
        try:
            while True:
                while not self._ops and not self._dirty and not self._deleted:
                    await self._writer_lot.park()
                # Gather a batch, unless someone waits on flush() or the
                # queue is half full.
                with trio.move_on_after(self.flush_interval_s):
                    while not self._urgent and len(self._ops) < self.queue_size // 2:
                        await self._writer_lot.park()
                await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()
                async with self._lock:
                    db, self._db = self._db, None
                    if db is not None:
                        await self._off_loop(db.close)
                self._closed = True
                self._flushed_lot.unpark_all()

    @property
    def queue_depth(self) -> int:
        return len(self._ops)

    # --- writes (sync, hot path) ------------------------------------------------

    def append_event(
        self, chat_id: str, encode: Callable[[int], bytes]
    ) -> tuple[int, bytes]:
        """Assign the chat's next ``seq``, encode the event with it, queue the write.

        Returns ``(seq, payload)``; the payload is what clients receive.
        """
        meta = self._touch(chat_id)
        seq = meta.last_seq + 1
        payload = encode(seq)  # may raise: then the seq is not used up
        meta.last_seq = seq
        self._pending.setdefault(chat_id, deque()).append((seq, payload))
        event_id = f"{self._node}:{next(self._event_ids)}"
        self._queue(_AppendEvent(chat_id, seq, event_id, payload))
        return seq, payload

    def append_user_message(
        self, chat_id: str, client_id: str, content: str, media: tuple[str, ...]
    ) -> None:
        meta = self._touch(chat_id)
        self._queue(
            UserMessage(
                chat_id, meta.last_seq, meta.updated_at, client_id, content, media
            )
        )

    def update_chat(
        self,
        chat_id: str,
        *,
        workspace_scope: Any = msgspec.UNSET,
        goal_state: Any = msgspec.UNSET,
    ) -> ChatMeta:
        """Create or change a chat's metadata; written with the next batch."""
        meta = self._touch(chat_id)
        if workspace_scope is not msgspec.UNSET:
            meta.workspace_scope = workspace_scope
        if goal_state is not msgspec.UNSET:
            meta.goal_state = goal_state
        self._writer_lot.unpark_all()
        return meta

    async def wait_for_room(self) -> None:
        """Wait while the write queue is full (call before producing writes)."""
        while len(self._ops) >= self.queue_size:
            await self._room_lot.park()

    async def delete_chat(self, chat_id: str) -> bool:
        """Forget a chat's history; its ``seq`` keeps counting if it is reused."""
        meta = self._chats.get(chat_id)
        if meta is None or meta.deleted:
            return False
        meta.deleted = True
        meta.first_seq = meta.last_seq + 1
        meta.goal_state = meta.workspace_scope = None
        self._pending.pop(chat_id, None)
        self._ops = deque(op for op in self._ops if op.chat_id != chat_id)
        self._deleted.append(chat_id)
        self._dirty.add(chat_id)
        self._requested += 1
        self._writer_lot.unpark_all()
        await self.flush()
        return True

    # --- reads ------------------------------------------------------------------

    def chat(self, chat_id: str) -> ChatMeta | None:
        meta = self._chats.get(chat_id)
        return None if meta is None or meta.deleted else meta

    def chats(self) -> list[ChatMeta]:
        """Every live chat, most recently updated first."""
        live = [m for m in self._chats.values() if not m.deleted]
        return sorted(live, key=lambda m: m.updated_at, reverse=True)

    async def read_events(self, chat_id: str, after_seq: int, limit: int) -> EventPage:
        """Up to ``limit`` events with ``seq > after_seq``, committed or not."""
        async with self._lock:
            meta = self._chats.get(chat_id)
            if meta is None:
                return EventPage(1, [])
            rows: list[tuple[int, bytes]] = []
            if self._db is not None:
                rows = await self._off_loop(
                    self._select_events, chat_id, after_seq, limit
                )
            # Still holding the lock: the database holds a prefix of the log
            # and pending the rest, so this is exactly the log after after_seq.
            last = rows[-1][0] if rows else after_seq
            for seq, payload in self._pending.get(chat_id, ()):
                if len(rows) >= limit:
                    break
                if seq > last:
                    rows.append((seq, payload))
            return EventPage(meta.first_seq, rows, meta.last_seq)

    async def user_messages(self, chat_id: str) -> list[UserMessage]:
        """The chat's user messages, oldest first (committed ones: call flush())."""
        async with self._lock:
            if self._db is None:
                return []
            return await self._off_loop(self._select_user_messages, chat_id)

    async def flush(self) -> None:
        """Wait until every write asked for so far is committed."""
        target = self._requested
        self._urgent = True
        self._writer_lot.unpark_all()
        while self._committed < target and not self._closed:
            await self._flushed_lot.park()

    # --- internals ----------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run blocking database work in a worker thread.

        An in-memory database does no I/O, so it runs inline (after a
        checkpoint): cheaper, and deterministic under ``MockClock``, whose
        autojump would otherwise treat a thread's work as idle time.
        """
        if self.path == ":memory:":
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    def _touch(self, chat_id: str) -> ChatMeta:
        now = self.wall_clock()
        meta = self._chats.get(chat_id)
        if meta is None:
            meta = self._chats[chat_id] = ChatMeta(chat_id, now, now)
        elif meta.deleted:
            meta.deleted = False
            meta.created_at = now
        meta.updated_at = now
        self._dirty.add(chat_id)
        self._requested += 1
        return meta

    def _queue(self, op: _Op) -> None:
        self._ops.append(op)
        depth = len(self._ops)
        if depth == 1 or depth == self.queue_size // 2:
            self._writer_lot.unpark_all()

    async def _flush(self) -> None:
        async with self._lock:
            self._urgent = False
            upto = self._requested
            ops, self._ops = self._ops, deque()
            dirty, self._dirty = self._dirty, set()
            deleted, self._deleted = self._deleted, []
            metas = [attrs.evolve(self._chats[c]) for c in dirty if c in self._chats]
            self._room_lot.unpark_all()
            if self._db is not None and (ops or metas or deleted):
                started = trio.current_time()
                trimmed = await self._off_loop(self._write, ops, metas, deleted)
                if self.on_flush is not None:
                    self.on_flush(trio.current_time() - started)
                for chat_id, first_seq in trimmed.items():
                    self._chats[chat_id].first_seq = first_seq
            committed: dict[str, int] = {}
            for op in ops:
                if isinstance(op, _AppendEvent):
                    committed[op.chat_id] = op.seq
            for chat_id, seq in committed.items():
                pending = self._pending.get(chat_id)
                while pending and pending[0][0] <= seq:
                    pending.popleft()
                if not pending:
                    self._pending.pop(chat_id, None)
            self._committed = upto
            self._flushed_lot.unpark_all()

    # --- blocking database work (runs in a worker thread, under the lock) -------

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        for row in db.execute(
            "SELECT chat_id, created_at, updated_at, workspace_scope, goal_state,"
            " first_seq, last_seq, deleted FROM chats"
        ):
            self._chats[row[0]] = ChatMeta(
                chat_id=row[0],
                created_at=row[1],
                updated_at=row[2],
                workspace_scope=_load(row[3]),
                goal_state=_load(row[4]),
                first_seq=row[5],
                last_seq=row[6],
                deleted=bool(row[7]),
            )
        self._db = db

    def _write(
        self, ops: deque[_Op], metas: list[ChatMeta], deleted: list[str]
    ) -> dict[str, int]:
        db = self._db
        assert db is not None
        trimmed: dict[str, int] = {}
        db.execute("BEGIN")
        try:
            for chat_id in deleted:
                db.execute("DELETE FROM events WHERE chat_id = ?", (chat_id,))
                db.execute("DELETE FROM user_messages WHERE chat_id = ?", (chat_id,))
            db.executemany(
                "INSERT INTO chats (chat_id, created_at, updated_at, workspace_scope,"
                " goal_state, first_seq, last_seq, deleted) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (chat_id) DO UPDATE SET created_at = excluded.created_at,"
                " updated_at = excluded.updated_at,"
                " workspace_scope = excluded.workspace_scope,"
                " goal_state = excluded.goal_state, last_seq = excluded.last_seq,"
                " first_seq = excluded.first_seq, deleted = excluded.deleted",
                [
                    (
                        m.chat_id,
                        m.created_at,
                        m.updated_at,
                        _dump(m.workspace_scope),
                        _dump(m.goal_state),
                        m.first_seq,
                        m.last_seq,
                        int(m.deleted),
                    )
                    for m in metas
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO events (chat_id, seq, event_id, payload)"
                " VALUES (?,?,?,?)",
                [
                    (op.chat_id, op.seq, op.event_id, op.payload)
                    for op in ops
                    if isinstance(op, _AppendEvent)
                ],
            )
            db.executemany(
                "INSERT INTO user_messages (chat_id, after_seq, at, client_id,"
                " content, media) VALUES (?,?,?,?,?,?)",
                [
                    (
                        op.chat_id,
                        op.after_seq,
                        op.at,
                        op.client_id,
                        op.content,
                        _json.encode(list(op.media)).decode(),
                    )
                    for op in ops
                    if isinstance(op, UserMessage)
                ],
            )
            for meta in metas:
                first = meta.last_seq - self.history_limit + 1
                if first > meta.first_seq:
                    db.execute(
                        "DELETE FROM events WHERE chat_id = ? AND seq < ?",
                        (meta.chat_id, first),
                    )
                    db.execute(
                        "DELETE FROM user_messages WHERE chat_id = ? AND after_seq < ?",
                        (meta.chat_id, first - 1),
                    )
                    db.execute(
                        "UPDATE chats SET first_seq = ? WHERE chat_id = ?",
                        (first, meta.chat_id),
                    )
                    trimmed[meta.chat_id] = first
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return trimmed

    def _select_events(
        self, chat_id: str, after_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        assert self._db is not None
        return list(
            self._db.execute(
                "SELECT seq, payload FROM events WHERE chat_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (chat_id, after_seq, limit),
            )
        )

    def _select_user_messages(self, chat_id: str) -> list[UserMessage]:
        assert self._db is not None
        return [
            UserMessage(
                chat_id, row[0], row[1], row[2], row[3], tuple(_unjson.decode(row[4]))
            )
            for row in self._db.execute(
                "SELECT after_seq, at, client_id, content, media FROM user_messages"
                " WHERE chat_id = ? ORDER BY id",
                (chat_id,),
            )
        ]


def _dump(value: Any) -> str | None:
    return None if value is None else _json.encode(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else _unjson.decode(text)
