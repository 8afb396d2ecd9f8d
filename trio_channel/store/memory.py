"""The in-memory session store (``session_store = "memory"``).

The same contract as the SQLite store, in plain dicts: nothing survives a
restart, and every chat stays in memory until deleted (each log is still
trimmed to ``history_limit``). For tests, demos and daemons that must not
write to disk. Writes finish without I/O, so MockClock tests never wait on a
thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import islice

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
    StoreOp,
    StoreResult,
    UpdateChat,
    UserMessage,
    new_epoch,
    with_seq,
)


@attrs.define
class _Log:
    meta: ChatMeta
    #: ``(seq, event_id, payload)``, oldest first.
    events: deque[tuple[int, str, bytes]] = attrs.field(factory=deque)
    users: deque[UserMessage] = attrs.field(factory=deque)


@attrs.define(eq=False)
class MemoryStore:
    """Chat logs in memory (see the module docstring)."""

    history_limit: int = 10_000
    description: str = "memory (nothing is kept after a restart)"
    shared: bool = attrs.field(default=False, init=False)
    _logs: dict[str, _Log] = attrs.field(factory=dict, init=False)
    #: event id -> (chat_id, seq, payload), for idempotent appends.
    _ids: dict[str, tuple[str, int, bytes]] = attrs.field(factory=dict, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def write(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        await trio.lowlevel.checkpoint()
        return self.write_now(ops)

    def write_now(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        results: list[StoreResult] = []
        for op in ops:
            if isinstance(op, AppendEvent):
                results.append(self._append_event(op))
            elif isinstance(op, AppendUserMessage):
                results.append(self._append_user_message(op))
            elif isinstance(op, UpdateChat):
                results.append(self._update_chat(op))
            elif isinstance(op, DeleteChat):
                results.append(self._delete_chat(op))
            else:
                # Broadcast, MarkTurnStarted: nobody else to tell
                results.append(None)
        return results

    async def probe(self) -> None:
        await trio.lowlevel.checkpoint()

    def _log(self, chat_id: str, at: float) -> _Log:
        log = self._logs.get(chat_id)
        if log is None:
            meta = ChatMeta(chat_id, new_epoch(), created_at=at, updated_at=at)
            log = self._logs[chat_id] = _Log(meta)
        return log

    def _append_event(self, op: AppendEvent) -> Appended:
        known = self._ids.get(op.event_id)
        if known is not None:
            return Appended(known[1], self._logs[known[0]].meta.epoch, known[2])
        log = self._log(op.chat_id, op.at)
        meta = log.meta
        seq = meta.last_seq + 1
        payload = with_seq(op.payload, seq)
        log.events.append((seq, op.event_id, payload))
        self._ids[op.event_id] = (op.chat_id, seq, payload)
        preview = meta.preview
        if preview is None and op.text:
            preview = op.text[:PREVIEW_CHARS]
        log.meta = attrs.evolve(
            meta,
            last_seq=seq,
            updated_at=max(meta.updated_at, op.at),
            preview=preview,
        )
        self._trim(log)
        return Appended(seq, meta.epoch, payload)

    def _append_user_message(self, op: AppendUserMessage) -> StoredUserMessage:
        log = self._log(op.chat_id, op.at)
        meta = log.meta
        log.users.append(
            UserMessage(
                op.chat_id,
                meta.last_seq,
                op.at,
                op.client_id,
                op.content,
                op.media,
                op.turn_id,
            )
        )
        text = op.content.strip()
        log.meta = attrs.evolve(
            meta,
            updated_at=max(meta.updated_at, op.at),
            title=meta.title
            if meta.title is not None or not text
            else text[:TITLE_CHARS],
            preview=meta.preview
            if meta.preview is not None or not text
            else text[:PREVIEW_CHARS],
        )
        return StoredUserMessage(meta.last_seq, meta.epoch)

    def _update_chat(self, op: UpdateChat) -> ChatMeta:
        log = self._log(op.chat_id, op.at)
        changes = {
            name: value
            for name, value in (
                ("workspace_scope", op.workspace_scope),
                ("goal_state", op.goal_state),
                ("title", op.title),
            )
            if value is not msgspec.UNSET
        }
        log.meta = attrs.evolve(log.meta, **changes)
        return log.meta

    def _delete_chat(self, op: DeleteChat) -> bool:
        log = self._logs.pop(op.chat_id, None)
        if log is None:
            return False
        for _, event_id, _ in log.events:
            self._ids.pop(event_id, None)
        return True

    def _trim(self, log: _Log) -> None:
        first = log.meta.last_seq - self.history_limit + 1
        if first <= log.meta.first_seq:
            return
        while log.events and log.events[0][0] < first:
            self._ids.pop(log.events.popleft()[1], None)
        while log.users and log.users[0].after_seq < first - 1:
            log.users.popleft()
        log.meta = attrs.evolve(log.meta, first_seq=first)

    # --- reads ----------------------------------------------------------------

    async def chat(self, chat_id: str) -> ChatMeta | None:
        await trio.lowlevel.checkpoint()
        log = self._logs.get(chat_id)
        return None if log is None else log.meta

    async def chats(self, limit: int) -> list[ChatMeta]:
        await trio.lowlevel.checkpoint()
        metas = sorted(
            (log.meta for log in self._logs.values()),
            key=lambda m: m.updated_at,
            reverse=True,
        )
        return metas[:limit]

    async def read_events(self, chat_id: str, after_seq: int, limit: int) -> EventPage:
        await trio.lowlevel.checkpoint()
        log = self._logs.get(chat_id)
        if log is None:
            return EventPage(1, [], 0, None)
        meta = log.meta
        # Seqs in a log have no gaps: the index of after_seq + 1 is known.
        start = max(0, after_seq + 1 - meta.first_seq)
        page = islice(log.events, start, start + limit)
        events = [(seq, payload) for seq, _, payload in page]
        return EventPage(meta.first_seq, events, meta.last_seq, meta.epoch)

    async def user_messages(
        self, chat_id: str, since_seq: int = 0, limit: int = 10_000
    ) -> list[UserMessage]:
        await trio.lowlevel.checkpoint()
        log = self._logs.get(chat_id)
        if log is None:
            return []
        return [m for m in log.users if m.after_seq >= since_seq][:limit]
