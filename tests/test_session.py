"""One connection's protocol logic: frames in, replies and agent messages out.

A real :class:`ChatHub` and :class:`DefaultScopePolicy`; ``now`` and the wall
clock are passed in, so nothing here needs trio or a socket.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from trio_channel import InboundMessage
from trio_channel.config import ChannelConfig
from trio_channel.core.events import (
    Attached,
    Error,
    GoalState,
    GoalStatus,
    Ready,
    SessionUpdated,
    encode_event,
)
from trio_channel.core.hub import ChatHub
from trio_channel.core.protocol import valid_chat_id
from trio_channel.core.scope import NOT_AN_OBJECT, TOO_LARGE, DefaultScopePolicy
from trio_channel.core.session import ChatLog, ClientSession, Effects, NeedsMedia, Peer

WALL = 1_700_000_000.25
LOCAL = Peer("127.0.0.1", 5000)
REMOTE = Peer("10.0.0.2", 5000)
UNIX = Peer("")
HOME = "home-chat"
SCOPE = {"root": "/work/project"}
LOCALHOST_ONLY = "workspace controls are localhost-only"
META = {"remote": "127.0.0.1:5000", "streaming": True}


class Sub(str):
    """A hub subscriber that compares equal to its name; counts catch-ups."""

    behind: list[str]

    def deliver(self, frame: bytes) -> bool:
        return True

    def fell_behind(self, chat_id: str) -> None:
        self.__dict__.setdefault("behind", []).append(chat_id)

    def log_reset(self, chat_id: str, epoch: str) -> None:
        self.__dict__.setdefault("resets", []).append((chat_id, epoch))


def make(peer: Peer = LOCAL, *, start: bool = True, **kw: Any) -> ClientSession:
    """A session (default chat HOME; None: a fresh uuid4), started unless told."""
    if (default_chat := kw.pop("default_chat", HOME)) is not None:
        kw["default_chat"] = default_chat
    cfg = kw.pop("cfg", None) or ChannelConfig()
    session = ClientSession(
        hub=kw.pop("hub", None) or ChatHub(),
        key=Sub(kw.pop("key", "conn-1")),
        client_id=kw.pop("client_id", "alice"),
        peer=peer,
        allow_from=cfg.allow_from,
        streaming=cfg.streaming,
        rate_limit=cfg.rate_limit,
        scope_policy=DefaultScopePolicy(),
        wall_clock=lambda: WALL,
        **kw,
    )
    if start:
        session.start()
    return session


def on_frame(
    session: ClientSession, raw: str, now: float = 0.0, log: ChatLog | None = None
) -> Effects | NeedsMedia:
    """What the connection does with one frame: parse, then handle."""
    request = session.parse(raw, now)
    if isinstance(request, list):
        return Effects(request)
    return session.handle(request, log)


def send(
    session: ClientSession,
    text: str | dict[str, Any],
    now: float = 0.0,
    log: ChatLog | None = None,
) -> Effects:
    raw = text if isinstance(text, str) else json.dumps(text)
    effects = on_frame(session, raw, now, log)
    assert isinstance(effects, Effects)
    return effects


def msg(chat_id: str = "c1", content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"type": "message", "chat_id": chat_id, "content": content, **fields}


def set_scope(chat_id: str, scope: Any) -> dict[str, Any]:
    return {"type": "set_workspace_scope", "chat_id": chat_id, "workspace_scope": scope}


def run_turn(
    hub: ChatHub[Any], chat_id: str, started_at: float = 1_700_000_000.5
) -> None:
    hub.observe(GoalStatus(chat_id=chat_id, status="running", started_at=started_at))


def inbound(
    chat_id: str, content: str, metadata: dict[str, Any] | None = None, **kw: Any
) -> InboundMessage:
    return InboundMessage(
        chat_id=chat_id,
        client_id="alice",
        content=content,
        metadata=META if metadata is None else metadata,
        received_at=WALL,
        **kw,
    )


# --- start ---------------------------------------------------------------------


def test_start_sends_ready_then_registers_and_subscribes() -> None:
    hub: ChatHub[Any] = ChatHub()
    session = make(hub=hub, start=False, default_chat=None, client_id="anon-01ab")
    replies = session.start()
    chat_id = session.default_chat
    assert replies == [Ready(chat_id=chat_id, client_id="anon-01ab")]
    assert uuid.UUID(chat_id).version == 4 and valid_chat_id(chat_id)
    assert list(hub.subscribers(chat_id)) == ["conn-1"]


def test_start_hydrates_after_ready() -> None:
    hub: ChatHub[Any] = ChatHub()
    hub.observe(GoalState(chat_id=HOME, goal_state={"objective": "ship"}))
    run_turn(hub, HOME, 12.5)
    assert make(hub=hub, start=False).start() == [
        Ready(chat_id=HOME, client_id="alice"),
        GoalState(chat_id=HOME, goal_state={"objective": "ship"}),
        GoalStatus(chat_id=HOME, status="running", started_at=12.5),
    ]


# --- legacy frames ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "remote"),
    [(LOCAL, "127.0.0.1:5000"), (REMOTE, "10.0.0.2:5000"), (Peer("::1", 7), "[::1]:7")],
)
@pytest.mark.parametrize("streaming", [True, False])
def test_legacy_text_goes_to_the_default_chat(
    peer: Peer, remote: str, streaming: bool
) -> None:
    session = make(peer, cfg=ChannelConfig(streaming=streaming))
    effects = send(session, "  hello  ")
    meta = {"remote": remote, "streaming": streaming}
    assert effects == Effects([], inbound(HOME, "hello", meta))


def test_legacy_json_object_content_is_unstripped() -> None:
    expected = Effects([], inbound(HOME, "  spaced  "))
    assert send(make(), {"text": "  spaced  "}) == expected


@pytest.mark.parametrize("text", ["", "   ", "{}", '{"content": "  "}', '{"type": 3}'])
def test_ignored_frames_answer_nothing(text: str) -> None:
    assert send(make(), text) == Effects()


# --- typed message ------------------------------------------------------------------


def test_message_subscribes_and_delivers_cleaned_metadata() -> None:
    hub: ChatHub[Any] = ChatHub()
    session = make(hub=hub)
    frame = msg(
        "c1",
        "hi",
        webui=True,
        cli_apps=[
            {"name": " Git ", "display_name": "Git", "secret": "x"},
            {"name": "bad name!"},
            {"name": "GIT", "display_name": "dup"},
        ],
        mcp_presets=[{"name": "fs", "configured": True, "transport": "stdio"}],
        image_generation={"enabled": True, "aspect_ratio": "16:9"},
        unknown={"ignored": True},
    )
    effects = send(session, frame)
    meta = {
        "remote": "127.0.0.1:5000",
        "webui": True,
        "cli_apps": [{"name": "git", "display_name": "Git"}],
        "mcp_presets": [{"name": "fs", "transport": "stdio", "configured": True}],
        "image_generation": {"enabled": True, "aspect_ratio": "16:9"},
        "streaming": True,
    }
    assert effects == Effects([], inbound("c1", "hi", meta))
    assert list(hub.subscribers("c1")) == ["conn-1"]


@pytest.mark.parametrize(
    "extra",
    [
        {"webui": "true"},
        {"webui": 1},
        {"webui": False},
        {"cli_apps": "git"},
        {"cli_apps": [{"name": "-bad"}]},
        {"image_generation": {"enabled": "true"}},
        {"image_generation": {"enabled": 1}},
        {"image_generation": True},
        {"mcp_presets": []},
    ],
)
def test_metadata_keys_only_when_meaningful(extra: dict[str, Any]) -> None:
    effects = send(make(), msg(**extra))
    assert effects.deliver is not None
    assert effects.deliver.metadata == META


@pytest.mark.parametrize("media", [[], None])
@pytest.mark.parametrize("content", ["", "   ", "\n\t", "hi"])
def test_no_media_and_blank_content(content: str, media: list[Any] | None) -> None:
    hub: ChatHub[Any] = ChatHub()
    effects = send(make(hub=hub), msg(content=content, media=media))
    if content.strip():  # [] and null are "no media": delivered at once
        assert effects == Effects([], inbound("c1", content))
    else:
        assert effects == Effects([Error(detail="missing content")])
        assert list(hub.subscribers("c1")) == []


@pytest.mark.parametrize(
    "media", [[{"data_url": "data:image/png;base64,iVBORw=="}], [1], "oops", {}]
)
def test_media_present_needs_media(media: object) -> None:
    session = make()
    result = on_frame(session, json.dumps(msg(content="  ", media=media)), 0.0)
    assert isinstance(result, NeedsMedia)
    assert (result.request.chat_id, result.request.content) == ("c1", "  ")
    # once saved, blank content is fine (step 6) and the agent gets the paths
    effects = session.finish_message(result.request, ["/data/media/a.png"])
    assert effects.deliver == inbound("c1", "  ", media=("/data/media/a.png",))


@pytest.mark.parametrize(
    ("allow_from", "client_id", "admitted"),
    [
        (("alice",), "bob", False),
        (("alice",), "alice", True),
        (("alice",), "Alice", False),
        ((), "alice", False),
        (("*",), "bob", True),
    ],
)
@pytest.mark.parametrize(
    "frame",
    ["legacy text", msg(), msg(media=[{"data_url": "data:image/png;base64,AA=="}])],
)
def test_allow_list_is_checked_per_message(
    allow_from: tuple[str, ...], client_id: str, admitted: bool, frame: Any
) -> None:
    session = make(cfg=ChannelConfig(allow_from=allow_from), client_id=client_id)
    raw = frame if isinstance(frame, str) else json.dumps(frame)
    result = on_frame(session, raw, 0.0)
    if admitted:  # on to the media step, or straight to the agent
        assert isinstance(result, NeedsMedia) is ("media" in raw)
        assert isinstance(result, NeedsMedia) or result.deliver is not None
    else:
        assert result == Effects()  # dropped silently: no reply, no delivery


# --- hydration ---------------------------------------------------------------------


def test_message_hydrates_only_when_newly_subscribed() -> None:
    hub: ChatHub[Any] = ChatHub()
    hub.observe(GoalState(chat_id="c1", goal_state={"g": 1}))
    run_turn(hub, "c1", 99.0)
    session = make(hub=hub)
    hydration = [
        GoalState(chat_id="c1", goal_state={"g": 1}),
        GoalStatus(chat_id="c1", status="running", started_at=99.0),
    ]
    first = send(session, msg("c1"))
    second = send(session, msg("c1"))
    assert (first.replies, second.replies) == (hydration, [])
    assert first.deliver is not None and second.deliver is not None
    # the default chat is already subscribed by start()
    run_turn(hub, HOME)
    assert send(session, msg(HOME)).replies == []


def test_attach_replies_attached_then_hydrates() -> None:
    hub: ChatHub[Any] = ChatHub()
    hub.observe(GoalState(chat_id="c1", goal_state={"objective": "x"}))
    run_turn(hub, "c1", 1_700_000_000.5)
    session = make(hub=hub)
    effects = send(session, {"type": "attach", "chat_id": "c1"})
    assert effects == Effects(
        [
            Attached(chat_id="c1", last_seq=0),
            GoalState(chat_id="c1", goal_state={"objective": "x"}),
            GoalStatus(chat_id="c1", status="running", started_at=1_700_000_000.5),
        ]
    )
    assert b'"status":"running","started_at":1700000000.5}' in encode_event(
        effects.replies[2]
    )
    assert list(hub.subscribers("c1")) == ["conn-1"]
    hub.observe(GoalStatus(chat_id="c1", status="idle"))
    assert send(session, {"type": "attach", "chat_id": "c1"}).replies == [
        Attached(chat_id="c1", last_seq=0),
        GoalState(chat_id="c1", goal_state={"objective": "x"}),
    ]
    # a chat with nothing going on: attached only
    quiet = send(session, {"type": "attach", "chat_id": "quiet"})
    assert quiet == Effects([Attached(chat_id="quiet", last_seq=0)])


# --- new_chat and workspace scope --------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "fields", "scope"),
    [
        (LOCAL, {}, None),
        (LOCAL, {"workspace_scope": None}, None),
        (LOCAL, {"workspace_scope": {}}, None),
        (LOCAL, {"workspace_scope": SCOPE}, SCOPE),
        (Peer("::1", 1), {"workspace_scope": SCOPE}, SCOPE),
        (Peer("::ffff:127.0.0.1", 1), {"workspace_scope": SCOPE}, SCOPE),
        (REMOTE, {}, None),
        (REMOTE, {"workspace_scope": {}}, None),
        (UNIX, {"workspace_scope": None}, None),
    ],
)
def test_new_chat(peer: Peer, fields: dict[str, Any], scope: Any) -> None:
    hub: ChatHub[Any] = ChatHub()
    session = make(peer, hub=hub)
    effects = send(session, {"type": "new_chat", **fields})
    assert effects.deliver is None
    attached, updated = effects.replies
    assert isinstance(attached, Attached)
    chat_id = attached.chat_id
    assert uuid.UUID(chat_id).version == 4 and chat_id != HOME
    assert updated == SessionUpdated(
        chat_id=chat_id, scope="metadata", workspace_scope=scope
    )
    assert json.loads(encode_event(updated))["workspace_scope"] == scope
    assert list(hub.subscribers(chat_id)) == ["conn-1"]


@pytest.mark.parametrize(
    "peer", [REMOTE, UNIX, Peer("192.168.1.1", 1), Peer("::ffff:10.0.0.2", 1)]
)
def test_new_chat_scope_is_localhost_only(peer: Peer) -> None:
    hub: ChatHub[Any] = ChatHub()
    effects = send(make(peer, hub=hub), {"type": "new_chat", "workspace_scope": SCOPE})
    assert effects == Effects(
        [Error(detail="workspace_scope_rejected", reason=LOCALHOST_ONLY)]
    )
    assert encode_event(effects.replies[0]) == (
        b'{"event":"error","detail":"workspace_scope_rejected",'
        b'"reason":"workspace controls are localhost-only"}'
    )
    assert hub.connections["conn-1"] == {HOME}  # no chat was made


def test_set_workspace_scope_reaches_the_agent() -> None:
    session = make()
    effects = send(session, set_scope("c1", SCOPE))
    assert effects == Effects(
        [SessionUpdated(chat_id="c1", scope="metadata", workspace_scope=SCOPE)],
        scope_change=("c1", SCOPE),
    )
    delivered = send(session, msg("c1")).deliver
    assert delivered is not None
    assert delivered.metadata["workspace_scope"] == SCOPE
    # and back to the default scope: sent as null, left out of the metadata
    reset = send(session, set_scope("c1", None))
    assert encode_event(reset.replies[0]) == (
        b'{"event":"session_updated","chat_id":"c1","scope":"metadata","workspace_scope":null}'
    )
    delivered = send(session, msg("c1")).deliver
    assert delivered is not None and "workspace_scope" not in delivered.metadata


SCOPE_4096 = {"k": "x" * (4096 - len('{"k":""}'))}
SCOPE_4097 = {"k": "x" * (4097 - len('{"k":""}'))}


@pytest.mark.parametrize(
    ("peer", "scope", "reason"),
    [
        (REMOTE, SCOPE, LOCALHOST_ONLY),
        (UNIX, SCOPE, LOCALHOST_ONLY),
        (LOCAL, SCOPE_4097, TOO_LARGE),
        (LOCAL, [1, 2], NOT_AN_OBJECT),
        (LOCAL, "/work", NOT_AN_OBJECT),
        (LOCAL, 5, NOT_AN_OBJECT),
        (LOCAL, True, NOT_AN_OBJECT),
        (LOCAL, SCOPE_4096, None),
    ],
)
@pytest.mark.parametrize("kind", ["set_workspace_scope", "message"])
def test_scope_policy(peer: Peer, scope: Any, reason: str | None, kind: str) -> None:
    hub: ChatHub[Any] = ChatHub()
    session = make(peer, hub=hub)
    effects = send(session, {**msg("c1"), "type": kind, "workspace_scope": scope})
    if reason is None:
        assert hub.chats["c1"].workspace_scope == scope
        updated = SessionUpdated(chat_id="c1", scope="metadata", workspace_scope=scope)
        assert effects.replies == ([] if kind == "message" else [updated])
    else:
        rejected = Error(detail="workspace_scope_rejected", reason=reason, chat_id="c1")
        assert effects == Effects([rejected])
        assert list(hub.subscribers("c1")) == []


@pytest.mark.parametrize("kind", ["set_workspace_scope", "message"])
def test_scope_change_refused_while_the_turn_runs(kind: str) -> None:
    hub: ChatHub[Any] = ChatHub()
    session = make(hub=hub)
    run_turn(hub, "c1")
    frame = {**msg("c1"), "type": kind, "workspace_scope": SCOPE}
    rejected = Error(
        detail="workspace_scope_rejected", reason="chat_running", chat_id="c1"
    )
    assert send(session, frame) == Effects([rejected])
    hub.observe(GoalStatus(chat_id="c1", status="idle"))
    effects = send(session, frame)
    assert rejected not in effects.replies
    assert hub.chats["c1"].workspace_scope == SCOPE


# --- rate limit and close ---------------------------------------------------------


def test_rate_limit_burst_then_refill() -> None:
    session = make(cfg=ChannelConfig(rate_limit=1))
    limited = Effects([Error(detail="rate_limited")])
    assert send(session, "one", now=100.0).deliver is not None
    assert send(session, msg(), now=100.0).deliver is not None
    assert send(session, "three", now=100.0) == limited
    assert (
        encode_event(limited.replies[0]) == b'{"event":"error","detail":"rate_limited"}'
    )
    assert send(session, {"type": "attach", "chat_id": "c1"}, now=100.5) == limited
    assert send(session, "after a second", now=101.0).deliver is not None
    assert send(session, "too soon", now=101.0) == limited
    assert send(session, "later", now=103.5).deliver is not None
    assert send(session, "burst", now=103.5).deliver is not None
    assert send(session, "over", now=103.5) == limited


def test_close_removes_every_subscription() -> None:
    hub: ChatHub[Any] = ChatHub()
    session = make(hub=hub)
    other = make(hub=hub, key="conn-2", default_chat="other-home")
    send(session, {"type": "attach", "chat_id": "c1"})
    send(session, msg("c2"))
    new = send(session, {"type": "new_chat"}).replies[0]
    assert isinstance(new, Attached)
    send(other, {"type": "attach", "chat_id": "c1"})
    session.close()
    for chat_id in (HOME, "c2", new.chat_id):
        assert list(hub.subscribers(chat_id)) == []
    assert list(hub.subscribers("c1")) == ["conn-2"]
    assert "conn-1" not in hub.connections
    session.close()  # safe twice
