"""The Redis session store: chat logs several daemons share.

The same contract as the SQLite store (``tests/test_store_contract.py``
runs against both), with Redis underneath (key layout in
:mod:`.redis_layout`, every write a Lua script from :mod:`.redis_scripts`):

- a batch is pipelined, one script per operation, in order; each script is
  atomic, and a retried batch stores nothing twice (event ids; user message
  ids among the last ones);
- every append also adds the event to its partition's fan-out stream, which
  every node reads (:mod:`trio_channel.cluster.feed`), so a subscriber on
  any node sees it; a user's message also joins the partition's inbox for
  the agent that owns the partition (:mod:`trio_channel.cluster.inbox`);
- a chat's keys slide an idle TTL (``chat_ttl_s``): a chat that expired and
  comes back starts a new log with a new epoch;
- agent output carries the partition lease's fencing token: a node that
  lost its lease cannot write into a chat it no longer owns.

Durability is Redis's (docs/scaling.md): with ``appendfsync always`` nothing
acknowledged is lost; with ``everysec`` up to a second may be, and clients
are told (``history_reset``), never silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

import attrs
import msgspec
import trio

from ..config import masked_url
from . import redis_scripts as lua
from ._coredis import Call, RedisLink, Script
from .base import (
    Appended,
    AppendEvent,
    AppendUserMessage,
    ChatMeta,
    DeleteChat,
    EventPage,
    Fenced,
    MarkTurnStarted,
    StoredUserMessage,
    StoreError,
    StoreOp,
    StoreResult,
    UpdateChat,
    UserMessage,
    new_epoch,
)
from .redis_layout import CONF_KEY, PROBE_KEY, Layout
from .redis_url import parse_redis_url

__all__ = ["RedisStore"]

#: A chat nobody wrote to for this long is forgotten (30 days).
DEFAULT_CHAT_TTL_S: Final = 30 * 24 * 3600
#: The consumer group the agents read each partition's inbox with.
AGENTS_GROUP: Final = "agents"
#: Fan-out entries kept per partition (``MAXLEN ~``): enough for a node that
#: blinks to read on; a longer gap is caught up from the chat logs.
FAN_MAXLEN: Final = 20_000

_json = msgspec.json.Encoder()
_unjson = msgspec.json.Decoder()

_APPEND_EVENT = Script("append_event", lua.APPEND_EVENT)
_APPEND_USER = Script("append_user_message", lua.APPEND_USER_MESSAGE)
_UPDATE_CHAT = Script("update_chat", lua.UPDATE_CHAT)
_DELETE_CHAT = Script("delete_chat", lua.DELETE_CHAT)
_BROADCAST = Script("broadcast", lua.BROADCAST)
_READ_EVENTS = Script("read_events", lua.READ_EVENTS)
_CHAT_META = Script("chat_meta", lua.CHAT_META)
_PARTITION_CHATS = Script("partition_chats", lua.PARTITION_CHATS)
_USER_MESSAGES = Script("user_messages", lua.USER_MESSAGES)
_PROBE = Script("probe", lua.PROBE)
_CONFIGURE = Script("configure", lua.CONFIGURE)
_MARK_STARTED = Script("mark_started", lua.MARK_STARTED)


@attrs.define(eq=False)
class RedisStore:
    url: str
    history_limit: int = 10_000
    partitions: int = 16
    chat_ttl_s: float = DEFAULT_CHAT_TTL_S
    #: This daemon's id: fan-out entries it wrote are not delivered to it
    #: again (it fanned them out itself).
    node: str = attrs.field(factory=lambda: uuid.uuid4().hex[:12])
    description: str = attrs.field(init=False)
    shared: bool = attrs.field(default=True, init=False)
    layout: Layout = attrs.field(init=False)
    _link: RedisLink | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.layout = Layout(self.partitions)
        shown = masked_url(self.url)
        self.description = f"redis {shown} ({self.partitions} partitions)"

    @property
    def on_cluster(self) -> bool:
        """Whether the URL names a Redis Cluster (one feed loop per partition)."""
        try:
            return parse_redis_url(self.url).topology == "cluster"
        except ValueError:  # the link refuses it, saying why
            return False

    @property
    def link(self) -> RedisLink:
        if self._link is None:
            raise StoreError("the redis store is not running", transient=True)
        return self._link

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Connect, agree on the partition count, serve until cancelled."""
        refused: StoreError | None = None
        async with RedisLink.open(self.url) as link:
            agreed = int(
                await link.run(Call(_CONFIGURE, [CONF_KEY], [self.partitions]))
            )
            if agreed != self.partitions:
                # Raised outside coredis's task group, which would wrap it.
                refused = StoreError(
                    f"this deployment uses {agreed} partitions, "
                    f"this daemon is configured for {self.partitions}",
                    transient=False,
                )
        if refused is not None:
            raise refused
        await self._serve(task_status)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        async with RedisLink.open(self.url) as link:
            self._link = link
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._link = None

    # --- writes -------------------------------------------------------------------

    async def write(self, ops: Sequence[StoreOp]) -> list[StoreResult]:
        results = await self.link.run_all([self._call(op) for op in ops])
        out: list[StoreResult] = []
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(op, AppendEvent) and "FENCED" in str(result):
                    out.append(Fenced(str(result)))
                    continue
                raise StoreError(f"redis: {result}", transient=False)
            out.append(self._result(op, result))
        return out

    def write_now(self, ops: Sequence[StoreOp]) -> None:
        """Never: every write is a network round trip."""
        return None

    def _call(self, op: StoreOp) -> Call:
        if isinstance(op, MarkTurnStarted):
            return Call(
                _MARK_STARTED,
                [self.layout.started(op.partition)],
                [op.entry, op.attempt],
            )
        keys = self.layout.chat(op.chat_id)
        chat = [keys.meta, keys.log, keys.eids, keys.users, keys.recent]
        ttl = int(self.chat_ttl_s * 1000)
        if isinstance(op, AppendEvent):
            return Call(
                _APPEND_EVENT,
                [
                    *chat,
                    keys.fan,
                    keys.sessions,
                    keys.fence,
                    keys.inbox,
                    self.layout.started(keys.partition),
                ],
                [
                    op.chat_id,
                    op.event_id,
                    op.payload,
                    op.at,
                    self.node,
                    op.fence or "",
                    ttl,
                    self.history_limit,
                    FAN_MAXLEN,
                    new_epoch(),
                    (op.text or "")[:160],
                    AGENTS_GROUP,
                    op.ack or "",
                ],
            )
        if isinstance(op, AppendUserMessage):
            content = op.content.strip()
            return Call(
                _APPEND_USER,
                [*chat, keys.sessions, keys.inbox, keys.fan],
                [
                    op.chat_id,
                    op.message_id or uuid.uuid4().hex,
                    op.at,
                    op.client_id,
                    op.content,
                    _json.encode(list(op.media)),
                    op.turn_id or "",
                    ttl,
                    new_epoch(),
                    content[:80] if content else "",
                    op.inbound or b"",
                    op.echo or b"",
                    self.node,
                    FAN_MAXLEN,
                ],
            )
        if isinstance(op, UpdateChat):
            pairs: list[str | bytes | int | float] = []
            for name, value in (
                ("scope", op.workspace_scope),
                ("goal", op.goal_state),
                ("title", op.title),
            ):
                if value is msgspec.UNSET:
                    continue
                encoded = (
                    b""
                    if value is None
                    else value.encode()
                    if name == "title"
                    else _json.encode(value)
                )
                pairs += [name, encoded]
            return Call(
                _UPDATE_CHAT,
                [*chat, keys.sessions],
                [op.chat_id, op.at, ttl, new_epoch(), *pairs],
            )
        if isinstance(op, DeleteChat):
            return Call(
                _DELETE_CHAT,
                [*chat, keys.sessions, keys.fan],
                [op.chat_id, self.node, FAN_MAXLEN],
            )
        running: list[str | float] = [""]
        if op.running is not None:
            is_running, started = op.running
            running = ["run", started or 0.0] if is_running else ["idle"]
        return Call(
            _BROADCAST,
            [keys.fan, keys.meta],
            [op.chat_id, self.node, op.payload, op.kind, FAN_MAXLEN, *running],
        )

    def _result(self, op: StoreOp, result: Any) -> StoreResult:
        if isinstance(op, AppendEvent):
            seq, epoch, payload = result
            return Appended(int(seq), _str(epoch), bytes(payload))
        if isinstance(op, AppendUserMessage):
            after, epoch = result
            return StoredUserMessage(int(after), _str(epoch))
        if isinstance(op, UpdateChat):
            meta = _meta(op.chat_id, result, self.history_limit)
            assert meta is not None
            return meta
        if isinstance(op, DeleteChat):
            return bool(int(result))
        return None

    async def probe(self) -> None:
        await self.link.run(Call(_PROBE, [PROBE_KEY], [self.node]))

    # --- reads ----------------------------------------------------------------------

    async def chat(self, chat_id: str) -> ChatMeta | None:
        keys = self.layout.chat(chat_id)
        flat = await self.link.run(Call(_CHAT_META, [keys.meta], []))
        return _meta(chat_id, flat, self.history_limit)

    async def chats(self, limit: int) -> list[ChatMeta]:
        calls = [
            Call(
                _PARTITION_CHATS,
                [self.layout.sessions(p)],
                [limit, f"{self.layout.tag(p)}:c:"],
            )
            for p in range(self.partitions)
        ]
        metas: list[ChatMeta] = []
        for result in await self.link.run_all(calls):
            if isinstance(result, BaseException):
                raise StoreError(f"redis: {result}", transient=False)
            for i in range(0, len(result), 2):
                meta = _meta(_str(result[i]), result[i + 1], self.history_limit)
                if meta is not None:
                    metas.append(meta)
        metas.sort(key=lambda m: m.updated_at, reverse=True)
        return metas[:limit]

    async def read_events(self, chat_id: str, after_seq: int, limit: int) -> EventPage:
        keys = self.layout.chat(chat_id)
        result = await self.link.run(
            Call(_READ_EVENTS, [keys.meta, keys.log], [f"{after_seq + 1}-0", limit])
        )
        epoch, last, first = _str(result[0]), int(result[1]), int(result[2])
        if not epoch:
            return EventPage(1, [], 0, None)
        events = [
            (int(result[i]), bytes(result[i + 1])) for i in range(3, len(result), 2)
        ]
        return EventPage(first, events, last, epoch)

    async def user_messages(
        self, chat_id: str, since_seq: int = 0, limit: int = 10_000
    ) -> list[UserMessage]:
        keys = self.layout.chat(chat_id)
        result = await self.link.run(
            Call(_USER_MESSAGES, [keys.users], [since_seq, limit])
        )
        messages = []
        for i in range(0, len(result), 2):
            after = int(_str(result[i]).partition("-")[0])
            fields = _fields(result[i + 1])
            messages.append(
                UserMessage(
                    chat_id,
                    after,
                    float(fields["t"]),
                    _str(fields["c"]),
                    _str(fields["m"]),
                    tuple(_unjson.decode(fields["media"])),
                    _str(fields["turn"]) or None,
                )
            )
        return messages


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _fields(flat: Any) -> dict[str, bytes]:
    return {_str(flat[i]): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}


def _meta(chat_id: str, flat: Any, history_limit: int) -> ChatMeta | None:
    if isinstance(flat, dict):
        fields = {_str(k): bytes(v) for k, v in flat.items()}
    else:
        fields = _fields(flat or [])
    if "epoch" not in fields:
        return None

    def json_field(name: str) -> Any:
        raw = fields.get(name)
        return None if not raw else _unjson.decode(raw)

    last = int(fields.get("seq", b"0"))
    return ChatMeta(
        chat_id=chat_id,
        epoch=_str(fields["epoch"]),
        created_at=float(fields.get("created", b"0")),
        updated_at=float(fields.get("updated", b"0")),
        first_seq=int(fields.get("first", b"1")),
        last_seq=last,
        workspace_scope=json_field("scope"),
        goal_state=json_field("goal"),
        title=_str(fields["title"]) if fields.get("title") else None,
        preview=_str(fields["preview"]) if fields.get("preview") else None,
        run_started_at=float(fields["run"]) if fields.get("run") else None,
    )
