"""Client frames → typed requests (sans-IO).

A frame is either a *typed envelope* (a JSON object with a string ``type``) or
a *legacy frame* (anything else), as PROTOCOL 3 describes. Decoding goes
through one module-level ``msgspec`` decoder into a permissive
:class:`Envelope` Struct: every field is ``Any`` so that a wrong type becomes
the protocol's own soft error (``invalid chat_id``, ``missing content``)
instead of a generic validation message, and unknown fields are ignored.

Nothing here touches a socket, a clock or the hub; :mod:`trio_channel.session`
turns requests into effects.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
import msgspec

from .events import Error
from .textsafe import scrub, scrub_text

CHAT_ID_RE = re.compile(r"[A-Za-z0-9_:-]{1,64}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: ``seq`` values are 64-bit: anything outside is refused, never stored.
MAX_SEQ = 2**63 - 1


def valid_chat_id(value: object) -> bool:
    """``chat_id`` must match ``^[A-Za-z0-9_:-]{1,64}$`` everywhere."""
    return isinstance(value, str) and CHAT_ID_RE.fullmatch(value) is not None


class Envelope(msgspec.Struct, frozen=True):
    """Every field a client frame may carry, untyped on purpose (see module doc)."""

    type: Any = None
    chat_id: Any = None
    content: Any = None
    text: Any = None
    message: Any = None
    media: Any = None
    webui: Any = None
    cli_apps: Any = None
    mcp_presets: Any = None
    workspace_scope: Any = msgspec.UNSET
    image_generation: Any = None
    since_seq: Any = None
    epoch: Any = None
    turn_id: Any = None
    request_id: Any = None
    action: Any = None
    payload: Any = None


_envelope_decoder = msgspec.json.Decoder(Envelope)


@attrs.frozen
class LegacyContent:
    """Plain content for the connection's default chat."""

    content: str


@attrs.frozen
class NewChat:
    #: ``msgspec.UNSET`` when the envelope had no ``workspace_scope``.
    workspace_scope: Any


@attrs.frozen
class Attach:
    chat_id: str
    #: Replay persisted events after this ``seq`` (PROTOCOL 5); None: no replay.
    since_seq: int | None
    #: The epoch the client's ``since_seq`` belongs to, when it sent one.
    epoch: str | None = None


@attrs.frozen
class ChatMessage:
    """A ``message`` envelope that passed steps 1-2 of PROTOCOL 3.2."""

    chat_id: str
    content: str
    envelope: Envelope

    @property
    def turn_id(self) -> str | None:
        turn_id = self.envelope.turn_id
        return turn_id if isinstance(turn_id, str) else None


@attrs.frozen
class SetWorkspaceScope:
    chat_id: str
    workspace_scope: Any


@attrs.frozen
class WebuiRequest:
    """A ``webui_request``: an action the web UI asks of the channel."""

    request_id: str
    action: str
    payload: dict[str, Any]


Request = (
    LegacyContent | NewChat | Attach | ChatMessage | SetWorkspaceScope | WebuiRequest
)

INVALID_CHAT_ID = "invalid chat_id"
MISSING_CONTENT = "missing content"
INVALID_SINCE_SEQ = "invalid since_seq"
INVALID_REQUEST_ID = "invalid webui request_id"


def parse_frame(text: str) -> Request | Error | None:
    """Classify one client text frame.

    Returns a request, a soft :class:`~trio_channel.events.Error` to send back
    to the sender, or None when the frame is to be ignored.
    """
    stripped = scrub_text(text).strip()
    if not stripped:
        return None
    if not stripped.startswith("{"):
        return LegacyContent(stripped)
    env: Envelope | None
    try:
        env = _envelope_decoder.decode(stripped)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
        env = _decode_leniently(stripped)
        if env is None:
            # Not JSON we can read: PROTOCOL 3.1 makes the stripped text the
            # content. The connection stays open whatever the frame was.
            return LegacyContent(stripped)
    if not isinstance(env.type, str):
        return _legacy_object(env)
    return _typed(env)


def _decode_leniently(text: str) -> Envelope | None:
    """The slow path for what msgspec refuses but is still a JSON object.

    msgspec rejects numbers beyond a float (``1e999``) and lone surrogates;
    the standard library reads them (as ``inf``, and as a lone surrogate),
    like the reference server does, and every lone surrogate then becomes
    U+FFFD (PROTOCOL 3), keys included, before anything else sees the
    frame. Nesting too deep for either stays unreadable.
    """
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            return None
        return msgspec.convert(scrub(value), Envelope)
    except (ValueError, RecursionError, msgspec.ValidationError):
        return None


def _legacy_object(env: Envelope) -> LegacyContent | None:
    for candidate in (env.content, env.text, env.message):
        if isinstance(candidate, str) and candidate.strip():
            return LegacyContent(candidate)
    return None


def _typed(env: Envelope) -> Request | Error:
    kind = env.type
    if kind == "message":
        if not valid_chat_id(env.chat_id):
            return Error(detail=INVALID_CHAT_ID)
        if not isinstance(env.content, str):
            return Error(detail=MISSING_CONTENT)
        return ChatMessage(env.chat_id, env.content, env)
    if kind == "new_chat":
        return NewChat(env.workspace_scope)
    if kind == "attach":
        if not valid_chat_id(env.chat_id):
            return Error(detail=INVALID_CHAT_ID)
        since = env.since_seq
        # bool is an int subclass; `true` is not a seq.
        if not isinstance(since, int) or isinstance(since, bool):
            since = None
        elif not 0 <= since <= MAX_SEQ:
            return Error(detail=INVALID_SINCE_SEQ, chat_id=env.chat_id)
        epoch = env.epoch if isinstance(env.epoch, str) else None
        return Attach(env.chat_id, since, epoch)
    if kind == "webui_request":
        request_id = env.request_id
        if not isinstance(request_id, str) or not REQUEST_ID_RE.fullmatch(request_id):
            return Error(detail=INVALID_REQUEST_ID)
        action = env.action if isinstance(env.action, str) else ""
        payload = env.payload if isinstance(env.payload, dict) else {}
        return WebuiRequest(request_id, action, payload)
    if kind == "set_workspace_scope":
        if not valid_chat_id(env.chat_id):
            return Error(detail=INVALID_CHAT_ID)
        return SetWorkspaceScope(env.chat_id, env.workspace_scope)
    return Error(detail=f"unknown type: {kind!r}")
