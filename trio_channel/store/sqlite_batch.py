"""The SQLite store's write side: chat rows, their cache, one write transaction.

Kept apart from :mod:`trio_channel.store.sqlite` (which owns connections,
threads and reads) because this is the code every stored event runs
through: plain synchronous functions over one ``sqlite3.Connection``, the
same on the event loop and in a worker thread.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from threading import Lock
from typing import Any, Final

import attrs
import msgspec

from .base import (
    PREVIEW_CHARS,
    TITLE_CHARS,
    Appended,
    AppendEvent,
    AppendUserMessage,
    ChatMeta,
    DeleteChat,
    StoredUserMessage,
    StoreOp,
    StoreResult,
    UpdateChat,
    new_epoch,
    with_seq,
)

__all__ = ["ROW_COLUMNS", "SEQ_BOUNDS", "Batch", "Row", "RowCache", "load_json"]

#: A chat's first and last ``seq``, from its events (the truth): the row's
#: own columns may trail them, see :data:`ROW_WRITE_INTERVAL_S`.
SEQ_BOUNDS: Final = (
    "coalesce((SELECT min(seq) FROM events WHERE chat = chats.id), first_seq),"
    " coalesce((SELECT max(seq) FROM events WHERE chat = chats.id), last_seq)"
)
ROW_COLUMNS: Final = (
    f"id, chat_id, epoch, created_at, updated_at, {SEQ_BOUNDS},"
    " workspace_scope, goal_state, title, preview"
)
#: A chat row is written again when something other than its ``seq`` and
#: ``updated_at`` changed, or when ``updated_at`` moved this far past what
#: the file holds. So a plain append writes only its event (and the id
#: index): updating the row and its ``updated_at`` index doubled the pages
#: a commit writes to the WAL (47 against 25 µs a commit, measured). On disk
#: ``updated_at`` trails by less than this; the cache and every answer
#: while the row is cached have it exact.
ROW_WRITE_INTERVAL_S: Final = 1.0

_json = msgspec.json.Encoder()
_unjson = msgspec.json.Decoder()


@attrs.define(slots=True)
class Row:
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
    #: ``updated_at`` as the file has it.
    stored_updated_at: float = 0.0
    #: Changed beyond ``seq`` and ``updated_at`` since the row was written.
    dirty: bool = False

    def copy(self) -> Row:
        """A staged copy (``attrs.evolve`` costs five times more, per event)."""
        return Row(
            self.id,
            self.chat_id,
            self.epoch,
            self.created_at,
            self.updated_at,
            self.first_seq,
            self.last_seq,
            self.workspace_scope,
            self.goal_state,
            self.title,
            self.preview,
            self.stored_updated_at,
            self.dirty,
        )

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
    def from_sql(cls, row: tuple[Any, ...]) -> Row:
        return cls(
            id=row[0],
            chat_id=row[1],
            epoch=row[2],
            created_at=row[3],
            updated_at=row[4],
            first_seq=row[5],
            last_seq=row[6],
            workspace_scope=load_json(row[7]),
            goal_state=load_json(row[8]),
            title=row[9],
            preview=row[10],
            stored_updated_at=row[4],
        )


@attrs.define
class RowCache:
    """Committed chat rows, least recently used evicted first.

    Written by the writer thread only; the event loop may peek (under the
    lock) to answer :meth:`SqliteStore.chat` without a thread hop.
    """

    capacity: int
    _rows: OrderedDict[str, Row] = attrs.field(factory=OrderedDict)
    _lock: Lock = attrs.field(factory=Lock)

    def get(self, chat_id: str) -> Row | None:
        with self._lock:
            row = self._rows.get(chat_id)
            if row is not None:
                self._rows.move_to_end(chat_id)
            return row

    def install(self, rows: dict[str, Row | None]) -> None:
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


@attrs.define
class Batch:
    """One write transaction: staged copies of every chat row it touches."""

    db: sqlite3.Connection
    cache: RowCache
    history_limit: int
    #: chat_id -> the row after this batch; None: deleted.
    staged: dict[str, Row | None] = attrs.field(factory=dict)

    def apply(self, op: StoreOp) -> StoreResult:
        if isinstance(op, AppendEvent):
            return self._append_event(op)
        if isinstance(op, AppendUserMessage):
            return self._append_user_message(op)
        if isinstance(op, UpdateChat):
            return self._update_chat(op)
        if isinstance(op, DeleteChat):
            return self._delete_chat(op)
        return None  # Broadcast, MarkTurnStarted: nobody else to tell

    def _row(self, chat_id: str) -> Row | None:
        if chat_id in self.staged:
            return self.staged[chat_id]
        cached = self.cache.get(chat_id)
        if cached is not None:
            row: Row | None = cached.copy()
        else:
            found = self.db.execute(
                f"SELECT {ROW_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,)
            ).fetchone()
            row = None if found is None else Row.from_sql(found)
        self.staged[chat_id] = row
        return row

    def _row_or_new(self, chat_id: str, at: float) -> Row:
        row = self._row(chat_id)
        if row is None:
            epoch = new_epoch()
            cursor = self.db.execute(
                "INSERT INTO chats (chat_id, epoch, created_at, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (chat_id, epoch, at, at),
            )
            assert cursor.lastrowid is not None
            row = self.staged[chat_id] = Row(
                cursor.lastrowid, chat_id, epoch, at, at, stored_updated_at=at
            )
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
            row.dirty = True
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
        text = op.content.strip()
        if text and (row.title is None or row.preview is None):
            row.title = text[:TITLE_CHARS] if row.title is None else row.title
            row.preview = text[:PREVIEW_CHARS] if row.preview is None else row.preview
            row.dirty = True
        return StoredUserMessage(row.last_seq, row.epoch)

    def _update_chat(self, op: UpdateChat) -> ChatMeta:
        row = self._row_or_new(op.chat_id, op.at)
        if op.workspace_scope is not msgspec.UNSET:
            row.workspace_scope = op.workspace_scope
        if op.goal_state is not msgspec.UNSET:
            row.goal_state = op.goal_state
        if op.title is not msgspec.UNSET:
            row.title = op.title
        row.dirty = True
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
        """Trim logs past ``history_limit``; write the rows that need it, once.

        See :data:`ROW_WRITE_INTERVAL_S` for which rows need it.
        """
        for row in self.staged.values():
            if row is None:
                continue
            first = row.last_seq - self.history_limit + 1
            if first > row.first_seq:
                row.dirty = True
                self.db.execute(
                    "DELETE FROM events WHERE chat = ? AND seq < ?", (row.id, first)
                )
                self.db.execute(
                    "DELETE FROM user_messages WHERE chat = ? AND after_seq < ?",
                    (row.id, first - 1),
                )
                row.first_seq = first
            if (
                not row.dirty
                and row.updated_at - row.stored_updated_at < ROW_WRITE_INTERVAL_S
            ):
                continue
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
            row.stored_updated_at = row.updated_at
            row.dirty = False


def _dump(value: Any) -> str | None:
    return None if value is None else _json.encode(value).decode()


def load_json(text: str | None) -> Any:
    return None if text is None else _unjson.decode(text)
