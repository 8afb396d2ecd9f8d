"""The SQLite schema of the session store, and the migration from the first one.

Why the tables look like this (DESIGN "the hot path"): every stored event
should cost little, so

- a chat has a small integer ``id``; events are keyed ``(chat, seq)``, which
  only ever grows at the end of each chat's range (append-only B-tree), and
  the 36-character chat id is stored once, in ``chats``;
- the event id index is over ids the channel makes in increasing order
  (``<node>:<counter>``), so it too is appended to, not scattered;
- the chat row is updated once per chat per batch, not per event.

``PRAGMA user_version`` is the schema version. Version 0 with an ``events``
table is the first release's layout (``chat_id`` text in every row); it is
migrated in one transaction at start-up, keeping every event and ``seq``.
"""

from __future__ import annotations

import sqlite3
from typing import Final

SCHEMA_VERSION: Final = 2

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    chat_id TEXT NOT NULL UNIQUE,
    epoch TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    first_seq INTEGER NOT NULL DEFAULT 1,
    last_seq INTEGER NOT NULL DEFAULT 0,
    workspace_scope TEXT,
    goal_state TEXT,
    title TEXT,
    preview TEXT
);
CREATE INDEX IF NOT EXISTS chats_by_update ON chats (updated_at);
CREATE TABLE IF NOT EXISTS events (
    chat INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (chat, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (event_id);
CREATE TABLE IF NOT EXISTS user_messages (
    id INTEGER PRIMARY KEY,
    chat INTEGER NOT NULL,
    after_seq INTEGER NOT NULL,
    at REAL NOT NULL,
    client_id TEXT NOT NULL,
    content TEXT NOT NULL,
    media TEXT NOT NULL,
    turn_id TEXT
);
CREATE INDEX IF NOT EXISTS user_messages_by_chat ON user_messages (chat, after_seq);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

#: The first release's tables, renamed out of the way before the migration.
_V1_TABLES: Final = ("chats", "events", "user_messages")


def prepare(db: sqlite3.Connection) -> None:
    """Create the schema, or migrate the first release's, in one transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this trio-channel knows"
        )
    db.execute("BEGIN IMMEDIATE")
    try:
        if _has_v1_layout(db):
            _migrate_v1(db)
        else:
            for statement in _statements(SCHEMA):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _has_v1_layout(db: sqlite3.Connection) -> bool:
    columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
    return "chat_id" in columns


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Rename the old tables, create the new ones, copy, drop the old ones.

    Chats keep their ``seq``; every chat gets a fresh epoch. Deleted chats
    (the first release kept their rows to keep counting) are dropped: a
    chat that comes back starts a new log with a new epoch.
    """
    for table in _V1_TABLES:
        db.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
    db.execute("DROP INDEX IF EXISTS user_messages_by_chat")
    for statement in _statements(SCHEMA):
        db.execute(statement)
    db.execute(
        "INSERT INTO chats (chat_id, epoch, created_at, updated_at, first_seq,"
        " last_seq, workspace_scope, goal_state)"
        " SELECT chat_id, lower(hex(randomblob(8))), created_at, updated_at,"
        " first_seq, last_seq, workspace_scope, goal_state FROM old_chats"
        " WHERE deleted = 0"
    )
    db.execute(
        "INSERT INTO events (chat, seq, event_id, payload)"
        " SELECT c.id, e.seq, e.event_id, e.payload"
        " FROM old_events e JOIN chats c ON c.chat_id = e.chat_id"
    )
    db.execute(
        "INSERT INTO user_messages (chat, after_seq, at, client_id, content, media)"
        " SELECT c.id, u.after_seq, u.at, u.client_id, u.content, u.media"
        " FROM old_user_messages u JOIN chats c ON c.chat_id = u.chat_id"
        " ORDER BY u.id"
    )
    db.execute(
        "UPDATE chats SET title = substr(m.content, 1, 80), preview ="
        " substr(m.content, 1, 160) FROM (SELECT chat, content, min(id) FROM"
        " user_messages GROUP BY chat) AS m WHERE m.chat = chats.id"
    )
    for table in _V1_TABLES:
        db.execute(f"DROP TABLE old_{table}")
