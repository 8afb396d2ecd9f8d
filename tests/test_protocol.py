"""Client frames → requests (PROTOCOL 3.1-3.3) and events → JSON (section 4).

``parse_frame`` is sans-IO: text in, a request / soft error / None out.
Expected values come from PROTOCOL.md, not from running the code.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from trio_channel.core.events import (
    Attached,
    Delta,
    Error,
    GoalState,
    GoalStatus,
    Message,
    Ready,
    ReasoningEnd,
    RuntimeModelUpdated,
    ServerEvent,
    SessionUpdated,
    StreamEnd,
    TurnEnd,
    encode_event,
)
from trio_channel.core.protocol import (
    Attach,
    ChatMessage,
    Envelope,
    LegacyContent,
    NewChat,
    SetWorkspaceScope,
    parse_frame,
    valid_chat_id,
)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


# --- 3.1 legacy frames ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # empty or whitespace-only: ignored
        ("", None),
        ("   ", None),
        (" \t\r\n ", None),
        # not starting with `{` after stripping: the stripped text
        ("hello", LegacyContent("hello")),
        ("  hello world \n", LegacyContent("hello world")),
        ("line 1\nline 2", LegacyContent("line 1\nline 2")),
        ("[1, 2]", LegacyContent("[1, 2]")),
        ('"a json string"', LegacyContent('"a json string"')),
        ("42", LegacyContent("42")),
        # starting with `{` but not valid JSON: the stripped text
        ("  {not json  ", LegacyContent("{not json")),
        ('{"content": "hi"', LegacyContent('{"content": "hi"')),
        ('{"content": "hi"} trailing', LegacyContent('{"content": "hi"} trailing')),
        ("{", LegacyContent("{")),
        # JSON object without a string `type`: first non-blank string of
        # content/text/message, passed unstripped
        ('{"content": "  hi  "}', LegacyContent("  hi  ")),
        ('  {"content": "x"}  ', LegacyContent("x")),
        ('{"text": "t"}', LegacyContent("t")),
        ('{"message": "m"}', LegacyContent("m")),
        ('{"content": "c", "text": "t", "message": "m"}', LegacyContent("c")),
        ('{"content": "  ", "text": "t"}', LegacyContent("t")),
        ('{"content": 5, "text": "", "message": " m "}', LegacyContent(" m ")),
        ('{"content": ["x"], "text": {"a": 1}, "message": "m"}', LegacyContent("m")),
        ('{"message": "first", "content": "wins"}', LegacyContent("wins")),
        # ... and none of them usable: ignored
        ("{}", None),
        ('{"foo": "bar"}', None),
        ('{"content": " ", "text": "\\n", "message": ""}', None),
        ('{"content": null, "text": 1, "message": true}', None),
        # `type` that is not a string: still legacy
        ('{"type": 5, "content": "five"}', LegacyContent("five")),
        ('{"type": null, "text": "n"}', LegacyContent("n")),
        ('{"type": ["message"], "content": "l"}', LegacyContent("l")),
        ('{"type": {"t": "message"}, "message": "o"}', LegacyContent("o")),
        ('{"type": true, "chat_id": "c", "content": "b"}', LegacyContent("b")),
        ('{"type": 5}', None),
    ],
)
def test_legacy_frames(text: str, expected: LegacyContent | None) -> None:
    assert parse_frame(text) == expected


# --- 3.2 typed envelopes ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (frame(type="new_chat"), NewChat(msgspec.UNSET)),
        (frame(type="new_chat", workspace_scope=None), NewChat(None)),
        (
            frame(type="new_chat", workspace_scope={"root": "/w"}),
            NewChat({"root": "/w"}),
        ),
        (frame(type="attach", chat_id="c1"), Attach("c1", None)),
        (
            frame(type="set_workspace_scope", chat_id="c1", workspace_scope={"a": 1}),
            SetWorkspaceScope("c1", {"a": 1}),
        ),
        (
            frame(type="set_workspace_scope", chat_id="c1", workspace_scope=None),
            SetWorkspaceScope("c1", None),
        ),
        # unknown fields are ignored
        (
            frame(type="attach", chat_id="c1", extra={"deep": [1, 2]}, foo=None),
            Attach("c1", None),
        ),
        (frame(type="new_chat", chat_id="ignored", x=[1]), NewChat(msgspec.UNSET)),
        # surrounding whitespace is fine
        ("\n " + frame(type="attach", chat_id="c1") + " \t", Attach("c1", None)),
    ],
)
def test_typed_envelopes(text: str, expected: object) -> None:
    assert parse_frame(text) == expected


def test_message_envelope_keeps_its_fields() -> None:
    media = [{"data_url": "data:image/png;base64,AAAA"}]
    result = parse_frame(
        frame(
            type="message",
            chat_id="c1",
            content="  hi  ",
            media=media,
            webui=True,
            cli_apps=[{"name": "git"}],
            image_generation={"enabled": True},
            unknown_field={"x": 1},
        )
    )
    assert isinstance(result, ChatMessage)
    assert (result.chat_id, result.content) == ("c1", "  hi  ")
    env = result.envelope
    assert env.media == media
    assert env.webui is True
    assert env.cli_apps == [{"name": "git"}]
    assert env.image_generation == {"enabled": True}
    assert env.workspace_scope is msgspec.UNSET


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        ("x", "unknown type: 'x'"),
        ("Message", "unknown type: 'Message'"),  # case-sensitive
        ("", "unknown type: ''"),
        ("it's", 'unknown type: "it\'s"'),  # Python repr switches quotes
        ("a\nb", "unknown type: 'a\\nb'"),
        ("é", "unknown type: 'é'"),
        (" message", "unknown type: ' message'"),
    ],
)
def test_unknown_type_uses_python_repr(kind: str, detail: str) -> None:
    assert parse_frame(frame(type=kind, chat_id="c1")) == Error(detail=detail)


# --- chat_id ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chat_id", "ok"),
    [
        ("a", True),
        ("A" * 64, True),
        ("A" * 65, False),
        ("", False),
        ("websocket:abc-DEF_123", True),
        ("::--__", True),
        ("0" * 36, True),
        ("with space", False),
        ("dot.ted", False),
        ("slash/ed", False),
        ("émile", False),
        ("١٢٣", False),  # Unicode digits are not [0-9]
        ("abc\n", False),
        ("\nabc", False),
        (5, False),
        (None, False),
        (["abc"], False),
        ({"id": "abc"}, False),
    ],
)
def test_chat_id_rule(chat_id: object, ok: bool) -> None:
    assert valid_chat_id(chat_id) is ok
    for kind in ("attach", "message", "set_workspace_scope"):
        result = parse_frame(
            frame(type=kind, chat_id=chat_id, content="hi", workspace_scope=None)
        )
        assert (result != Error(detail="invalid chat_id")) is ok, kind


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # step 1 before step 2
        ({"chat_id": "bad id"}, Error(detail="invalid chat_id")),
        ({"chat_id": "bad id", "content": 5}, Error(detail="invalid chat_id")),
        ({"content": "hi"}, Error(detail="invalid chat_id")),
        # step 2: content not a string
        ({"chat_id": "c1"}, Error(detail="missing content")),
        ({"chat_id": "c1", "content": None}, Error(detail="missing content")),
        ({"chat_id": "c1", "content": 5}, Error(detail="missing content")),
        ({"chat_id": "c1", "content": ["hi"]}, Error(detail="missing content")),
        ({"chat_id": "c1", "content": {"text": "hi"}}, Error(detail="missing content")),
        # step 2 comes before step 3 (media)
        ({"chat_id": "c1", "media": "bad"}, Error(detail="missing content")),
    ],
)
def test_message_check_order(fields: dict[str, Any], expected: Error) -> None:
    assert parse_frame(frame(type="message", **fields)) == expected


def test_blank_string_content_is_left_to_step_six() -> None:
    result = parse_frame(frame(type="message", chat_id="c1", content="   "))
    assert isinstance(result, ChatMessage)
    assert result.content == "   "


@pytest.mark.parametrize(
    ("since_seq", "expected"),
    [
        (0, 0),
        (7, 7),
        (2**40, 2**40),
        (2**63 - 1, 2**63 - 1),
        (True, None),
        (False, None),
        (1.0, None),
        (2.5, None),
        ("3", None),
        (None, None),
        ([1], None),
    ],
)
def test_attach_since_seq(since_seq: object, expected: int | None) -> None:
    text = frame(type="attach", chat_id="c1", since_seq=since_seq)
    assert parse_frame(text) == Attach("c1", expected)


# --- pathological JSON: never raises (3.3 ext) --------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECTS = '{"a":' * 5_000 + "1" + "}" * 5_000


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ('{"content": ' + DEEP + "}", None),
        ('{"content": ' + DEEP_OBJECTS + ', "text": "t"}', LegacyContent("t")),
        (
            '{"type": "message", "chat_id": "c1", "content": ' + DEEP + "}",
            Error(detail="missing content"),
        ),
        ('{"type": "new_chat", "junk": ' + DEEP + "}", NewChat(msgspec.UNSET)),
        ('{"type": "attach", "chat_id": "c1", "x": ' + DEEP + "}", Attach("c1", None)),
    ],
)
def test_extreme_nesting_never_raises(text: str, parsed: object) -> None:
    # Must not raise (RecursionError included). Either the decoder copes, or
    # it gives up and 3.1's "not valid JSON" rule makes the text the content.
    assert parse_frame(text) in (parsed, LegacyContent(text.strip()))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Numbers JSON allows but no float/int64 holds: still a typed envelope.
        ('{"type":"attach","chat_id":"c1","since_seq":1e999}', Attach("c1", None)),
        ('{"type":"attach","chat_id":"c1","since_seq":-1e999}', Attach("c1", None)),
        # PROTOCOL 3: a seq outside 0..2^63-1 is refused, never stored.
        (
            '{"type":"attach","chat_id":"c1","since_seq":' + "9" * 40 + "}",
            Error(detail="invalid since_seq", chat_id="c1"),
        ),
        (
            '{"type":"attach","chat_id":"c1","since_seq":9223372036854775808}',
            Error(detail="invalid since_seq", chat_id="c1"),
        ),
        (
            '{"type":"attach","chat_id":"c1","since_seq":-1}',
            Error(detail="invalid since_seq", chat_id="c1"),
        ),
        ('{"type":"new_chat","junk":1e999}', NewChat(msgspec.UNSET)),
        ('{"content": 1e999, "text": "t"}', LegacyContent("t")),
        ('{"type": 1e999, "content": "c"}', LegacyContent("c")),
    ],
)
def test_huge_numbers(text: str, expected: object) -> None:
    assert parse_frame(text) == expected


def test_huge_number_in_media_is_still_a_message() -> None:
    # Step 3/5 (media) must answer this, not the legacy path: it is a valid
    # JSON object with a string `type`.
    text = '{"type":"message","chat_id":"c1","content":"hi","media":[1e999]}'
    result = parse_frame(text)
    assert isinstance(result, ChatMessage)
    assert (result.chat_id, result.content) == ("c1", "hi")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("\ud800", LegacyContent("\ufffd")),
        ("hi \udcff there", LegacyContent("hi \ufffd there")),
        ('{"content": "\ud800"}', LegacyContent("\ufffd")),
        ('{"type": "\udc00"}', Error(detail="unknown type: '\ufffd'")),
        # escaped surrogates are valid JSON text: decoded, then replaced
        ('{"text": "\\ud800"}', LegacyContent("\ufffd")),
        ('{"content": "a\\udc00b\\ud83d\\ude00"}', LegacyContent("a\ufffdb\U0001f600")),
        (
            '{"type":"message","chat_id":"c","content":"x\\ud800","\\udfff":1}',
            ChatMessage(
                "c", "x\ufffd", Envelope(type="message", chat_id="c", content="x\ufffd")
            ),
        ),
    ],
)
def test_lone_surrogates_become_replacement_characters(
    text: str, parsed: object
) -> None:
    # PROTOCOL 3: before anything else sees the frame, so nothing downstream
    # (store, logs, the wire) can fail to encode it.
    result = parse_frame(text)
    assert result == parsed
    msgspec.json.encode(result.content if hasattr(result, "content") else result.detail)


# --- section 4: encoding --------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Ready(chat_id="c1", client_id="me"), {"chat_id": "c1", "client_id": "me"}),
        (Attached(chat_id="c1"), {"chat_id": "c1"}),
        (Message(chat_id="c1", text="hi"), {"chat_id": "c1", "text": "hi"}),
        (
            Message(chat_id="c1", text="", seq=3, latency_ms=0, media=["/m/a.png"]),
            {
                "chat_id": "c1",
                "seq": 3,
                "text": "",
                "media": ["/m/a.png"],
                "latency_ms": 0,
            },
        ),
        (
            Delta(chat_id="c1", text="d", seq=1),
            {"chat_id": "c1", "seq": 1, "text": "d"},
        ),
        (
            Delta(chat_id="c1", text="d", seq=1, stream_id={"n": [1]}),
            {"chat_id": "c1", "seq": 1, "text": "d", "stream_id": {"n": [1]}},
        ),
        (
            StreamEnd(chat_id="c1", seq=2, stream_id="s"),
            {"chat_id": "c1", "seq": 2, "stream_id": "s"},
        ),
        (ReasoningEnd(chat_id="c1", seq=2), {"chat_id": "c1", "seq": 2}),
        (TurnEnd(chat_id="c1", seq=4), {"chat_id": "c1", "seq": 4}),
        (
            TurnEnd(chat_id="c1", seq=4, latency_ms=0),
            {"chat_id": "c1", "seq": 4, "latency_ms": 0},
        ),
        (
            GoalState(chat_id="c1", goal_state={"g": 1}),
            {"chat_id": "c1", "goal_state": {"g": 1}},
        ),
        (GoalStatus(chat_id="c1", status="idle"), {"chat_id": "c1", "status": "idle"}),
        (
            GoalStatus(chat_id="c1", status="running", started_at=1.5),
            {"chat_id": "c1", "status": "running", "started_at": 1.5},
        ),
        (SessionUpdated(chat_id="c1"), {"chat_id": "c1"}),
        (
            SessionUpdated(chat_id="c1", scope="metadata", workspace_scope=None),
            {"chat_id": "c1", "scope": "metadata", "workspace_scope": None},
        ),
        (
            SessionUpdated(chat_id="c1", scope="metadata", workspace_scope={"r": "/"}),
            {"chat_id": "c1", "scope": "metadata", "workspace_scope": {"r": "/"}},
        ),
        (RuntimeModelUpdated(model_name="m"), {"model_name": "m"}),
        (Error(detail="invalid chat_id"), {"detail": "invalid chat_id"}),
        (
            Error(
                detail="workspace_scope_rejected", reason="chat_running", chat_id="c1"
            ),
            {
                "detail": "workspace_scope_rejected",
                "reason": "chat_running",
                "chat_id": "c1",
            },
        ),
    ],
)
def test_encode_event(event: ServerEvent, expected: dict[str, Any]) -> None:
    data = encode_event(event)
    tag = type(event).__struct_config__.tag
    assert data.startswith(b'{"event":"' + str(tag).encode() + b'"')
    assert json.loads(data) == {"event": tag, **expected}


def test_session_updated_null_scope_is_sent_unset_is_not() -> None:
    null = encode_event(SessionUpdated(chat_id="c1", workspace_scope=None))
    unset = encode_event(SessionUpdated(chat_id="c1"))
    assert null == b'{"event":"session_updated","chat_id":"c1","workspace_scope":null}'
    assert unset == b'{"event":"session_updated","chat_id":"c1"}'


def test_rate_limited_frame_is_exact() -> None:
    assert encode_event(Error(detail="rate_limited")) == (
        b'{"event":"error","detail":"rate_limited"}'
    )
