"""The session store contract, run against every implementation.

A backend joins by adding a param to the ``store`` fixture (see
``tests/conftest.py``). Each test is behaviour the layers above rely on:
seq from 1 with no gaps, idempotent appends, pages, epochs, trimming, user
messages, metadata.
"""

from __future__ import annotations

import msgspec

from trio_channel.store.base import (
    Appended,
    AppendEvent,
    AppendUserMessage,
    ChatMeta,
    DeleteChat,
    SessionStore,
    StoredUserMessage,
    UpdateChat,
    with_seq,
)

_ids = iter(range(10**9))


def event(
    chat_id: str, text: str = "x", *, event_id: str | None = None, at: float = 5.5
) -> AppendEvent:
    payload = msgspec.json.encode(
        {"event": "message", "chat_id": chat_id, "text": text}
    )
    return AppendEvent(
        chat_id,
        event_id or f"test:{next(_ids):012x}",
        payload,
        at=at,
        text=text,
    )


async def append(store: SessionStore, *ops: AppendEvent) -> list[Appended]:
    results = await store.write(ops)
    assert all(isinstance(r, Appended) for r in results)
    return results  # type: ignore[return-value]


async def test_seq_starts_at_one_per_chat_without_gaps(store: SessionStore) -> None:
    first = await append(store, event("a"), event("a"), event("b"))
    second = await append(store, event("a"))
    assert [r.seq for r in first + second] == [1, 2, 1, 3]


async def test_payload_gets_its_seq_and_reads_back_byte_for_byte(
    store: SessionStore,
) -> None:
    (stored,) = await append(store, event("c", "hello"))
    assert msgspec.json.decode(stored.payload) == {
        "event": "message",
        "chat_id": "c",
        "text": "hello",
        "seq": 1,
    }
    page = await store.read_events("c", 0, 10)
    assert page.events == [(1, stored.payload)]
    assert (page.first_seq, page.last_seq, page.epoch) == (1, 1, stored.epoch)


async def test_with_seq_appends_the_member() -> None:
    assert with_seq(b'{"a":1}', 12) == b'{"a":1,"seq":12}'


async def test_write_now_is_write_done_at_once_or_nothing(store: SessionStore) -> None:
    await append(store, event("n"))
    ops = [event("n", "now"), AppendUserMessage("n", 6.0, "u", "hi")]
    results = store.write_now(ops)
    page = await store.read_events("n", 0, 10)
    if results is None:  # a store that declines (Redis) applied nothing
        assert [seq for seq, _ in page.events] == [1]
        return
    appended, user = results
    assert isinstance(appended, Appended) and appended.seq == 2
    assert isinstance(user, StoredUserMessage) and user.after_seq == 2
    assert page.events[-1] == (2, appended.payload)


async def test_the_same_event_id_is_stored_once(store: SessionStore) -> None:
    op = event("d", "once", event_id="node:1")
    first = await append(store, op)
    again = await append(store, op, event("d", "next"))
    same_batch = await append(
        store, event("d", "x", event_id="node:9"), event("d", "y", event_id="node:9")
    )
    assert first[0].seq == again[0].seq == 1
    assert again[0].payload == first[0].payload
    assert again[1].seq == 2
    assert [r.seq for r in same_batch] == [3, 3]
    page = await store.read_events("d", 0, 10)
    assert [seq for seq, _ in page.events] == [1, 2, 3]


async def test_pages(store: SessionStore) -> None:
    await append(store, *[event("p", str(i)) for i in range(25)])
    page = await store.read_events("p", 10, 10)
    assert [seq for seq, _ in page.events] == list(range(11, 21))
    assert page.last_seq == 25
    tail = await store.read_events("p", 20, 10)
    assert [seq for seq, _ in tail.events] == [21, 22, 23, 24, 25]
    assert (await store.read_events("p", 25, 10)).events == []
    assert (await store.read_events("p", 2**62, 10)).events == []


async def test_unknown_chat(store: SessionStore) -> None:
    assert await store.chat("nobody") is None
    page = await store.read_events("nobody", 0, 10)
    assert (page.first_seq, page.events, page.last_seq, page.epoch) == (1, [], 0, None)
    assert await store.user_messages("nobody") == []
    assert await store.write([DeleteChat("nobody")]) == [False]


async def test_epoch_is_stable_until_the_chat_is_deleted(store: SessionStore) -> None:
    (a,) = await append(store, event("e"))
    (b,) = await append(store, event("e"))
    assert a.epoch == b.epoch
    meta = await store.chat("e")
    assert meta is not None and meta.epoch == a.epoch
    assert await store.write([DeleteChat("e")]) == [True]
    assert await store.chat("e") is None
    assert (await store.read_events("e", 0, 10)).events == []
    (c,) = await append(store, event("e"))
    assert c.seq == 1
    assert c.epoch != a.epoch


async def test_history_is_trimmed_to_the_limit(store: SessionStore) -> None:
    limit = store.history_limit  # type: ignore[attr-defined]
    await store.write([AppendUserMessage("t", 1.0, "me", "early")])
    await append(store, *[event("t", str(i)) for i in range(limit + 5)])
    await store.write([AppendUserMessage("t", 2.0, "me", "late")])
    page = await store.read_events("t", 0, limit * 2)
    assert [seq for seq, _ in page.events] == list(range(6, limit + 6))
    assert page.first_seq == 6
    meta = await store.chat("t")
    assert meta is not None and (meta.first_seq, meta.last_seq) == (6, limit + 5)
    assert [m.content for m in await store.user_messages("t")] == ["late"]


async def test_user_messages_sit_after_the_last_event(store: SessionStore) -> None:
    (stored,) = await store.write(
        [AppendUserMessage("u", 5.0, "alice", "  hello there  ", ("/m/a.png",), "t1")]
    )
    assert isinstance(stored, StoredUserMessage) and stored.after_seq == 0
    await append(store, event("u", "answer"), event("u"))
    (later,) = await store.write([AppendUserMessage("u", 6.0, "bob", "again")])
    assert isinstance(later, StoredUserMessage) and later.after_seq == 2
    assert later.epoch == stored.epoch
    messages = await store.user_messages("u")
    assert [
        (m.after_seq, m.client_id, m.content, m.media, m.turn_id) for m in messages
    ] == [
        (0, "alice", "  hello there  ", ("/m/a.png",), "t1"),
        (2, "bob", "again", (), None),
    ]
    assert [m.content for m in await store.user_messages("u", since_seq=1)] == ["again"]
    meta = await store.chat("u")
    assert meta is not None
    assert (meta.title, meta.preview, meta.created_at, meta.updated_at) == (
        "hello there",
        "hello there",
        5.0,
        6.0,
    )


async def test_title_is_cut_and_preview_falls_back_to_the_reply(
    store: SessionStore,
) -> None:
    await append(store, event("r", "the agent spoke first"))
    await store.write([AppendUserMessage("r", 2.0, "me", "q" * 200)])
    meta = await store.chat("r")
    assert meta is not None
    assert meta.title == "q" * 80
    assert meta.preview == "the agent spoke first"
    (updated,) = await store.write([UpdateChat("r", 3.0, title="Named")])
    assert isinstance(updated, ChatMeta) and updated.title == "Named"


async def test_chat_state_is_kept(store: SessionStore) -> None:
    scope = {"project": "x", "big": 10**30, "nested": [{"a": None}]}
    (meta,) = await store.write(
        [UpdateChat("s", 1.0, workspace_scope=scope, goal_state={"goal": "win"})]
    )
    assert isinstance(meta, ChatMeta)
    assert (meta.workspace_scope, meta.goal_state, meta.last_seq) == (
        scope,
        {"goal": "win"},
        0,
    )
    await store.write([UpdateChat("s", 2.0, goal_state=None)])
    got = await store.chat("s")
    assert got is not None
    assert (got.workspace_scope, got.goal_state) == (scope, None)


async def test_chats_newest_first(store: SessionStore) -> None:
    for i, chat_id in enumerate(["old", "mid", "new"]):
        await store.write([AppendUserMessage(chat_id, 10.0 + i, "me", chat_id)])
    await store.write([AppendUserMessage("old", 20.0, "me", "bump")])
    assert [m.chat_id for m in await store.chats(10)] == ["old", "new", "mid"]
    assert [m.chat_id for m in await store.chats(2)] == ["old", "new"]


async def test_text_with_every_kind_of_character(store: SessionStore) -> None:
    text = "emoji 😀, NUL \x00, RTL \u202e, replacement \ufffd"
    (stored,) = await append(store, event("z", text))
    await store.write([AppendUserMessage("z", 1.0, "c", text)])
    (_seq, payload) = (await store.read_events("z", 0, 1)).events[0]
    assert payload == stored.payload
    assert msgspec.json.decode(payload)["text"] == text
    assert (await store.user_messages("z"))[0].content == text
