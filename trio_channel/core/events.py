"""Typed events: what the agent sends, and what the server says on its own.

Each event is a ``msgspec.Struct`` tagged by its ``event`` field, so the object
the agent puts on the outbound channel *is* the wire frame: the dispatcher
encodes it once with a reused encoder and fans the same bytes out to every
subscriber. ``omit_defaults`` keeps optional fields off the wire unless set.

Persisted events (``message``, ``delta``, ``stream_end``, ``reasoning_delta``,
``reasoning_end``, ``file_edit``, ``turn_end``) carry a per-chat ``seq``
assigned by the server; agents leave it at 0.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec


class _Event(msgspec.Struct, tag_field="event", omit_defaults=True, kw_only=True):
    """Base of every server→client event."""

    persisted: ClassVar[bool] = False


class _ChatEvent(_Event, kw_only=True):
    chat_id: str


class _PersistedEvent(_ChatEvent, kw_only=True):
    persisted: ClassVar[bool] = True
    #: Assigned by the server (per chat, from 1, no gaps); agents leave it 0.
    seq: int = 0


class MediaUrl(msgspec.Struct, omit_defaults=True):
    url: str
    name: str = ""


class Message(_PersistedEvent, tag="message", kw_only=True):
    text: str
    media: list[str] | None = None
    media_urls: list[MediaUrl] | None = None
    reply_to: str | None = None
    latency_ms: int | None = None
    tool_events: list[Any] | None = None
    agent_ui: Any = None
    kind: Literal["tool_hint", "progress"] | None = None


class Delta(_PersistedEvent, tag="delta", kw_only=True):
    text: str
    stream_id: Any = None


class StreamEnd(_PersistedEvent, tag="stream_end", kw_only=True):
    stream_id: Any = None
    #: The whole assembled stream; only set when the server rewrote it.
    text: str | None = None


class ReasoningDelta(_PersistedEvent, tag="reasoning_delta", kw_only=True):
    text: str
    stream_id: Any = None


class ReasoningEnd(_PersistedEvent, tag="reasoning_end", kw_only=True):
    stream_id: Any = None


class FileEdit(_PersistedEvent, tag="file_edit", kw_only=True):
    edits: list[dict[str, Any]]


class TurnEnd(_PersistedEvent, tag="turn_end", kw_only=True):
    latency_ms: int | None = None
    goal_state: dict[str, Any] | None = None
    #: The turn was cut short (its agent's node died) and will run again.
    interrupted: bool = False


class GoalState(_ChatEvent, tag="goal_state", kw_only=True):
    goal_state: dict[str, Any]


class GoalStatus(_ChatEvent, tag="goal_status", kw_only=True):
    status: Literal["running", "idle"]
    #: Unix seconds; only with ``running``.
    started_at: float | None = None


class SessionUpdated(_ChatEvent, tag="session_updated", kw_only=True):
    scope: str | None = None
    #: UNSET leaves the field out; None is sent as ``null`` (the default scope).
    workspace_scope: Any = msgspec.UNSET


class RuntimeModelUpdated(_Event, tag="runtime_model_updated", kw_only=True):
    """Goes to every open connection; not chat-scoped."""

    model_name: str
    model_preset: str | None = None


#: Events about one chat (they carry ``chat_id``).
ChatEvent = (
    Message
    | Delta
    | StreamEnd
    | ReasoningDelta
    | ReasoningEnd
    | FileEdit
    | TurnEnd
    | GoalState
    | GoalStatus
    | SessionUpdated
)
#: Everything an agent may put on the outbound channel.
AgentEvent = ChatEvent | RuntimeModelUpdated


# --- events only the server sends --------------------------------------


class Ready(_Event, tag="ready", kw_only=True):
    chat_id: str
    client_id: str


class Attached(_Event, tag="attached", kw_only=True):
    chat_id: str
    #: The chat log's epoch (PROTOCOL 5): resume only within the same epoch.
    epoch: str | None = None
    #: The chat's newest ``seq`` when the connection attached (0: none yet).
    last_seq: int | None = None


class Error(_Event, tag="error", kw_only=True):
    """A soft error: answers the sender only and never closes the connection."""

    detail: str
    reason: str | None = None
    chat_id: str | None = None
    first_seq: int | None = None
    #: With ``history_reset``: the chat's current epoch.
    epoch: str | None = None
    #: The ``turn_id`` of the ``message`` this error answers, when it had one.
    turn_id: str | None = None


class UserMessageEcho(_Event, tag="user_message", kw_only=True):
    """A user's accepted message, live to the chat's *other* connections."""

    chat_id: str
    text: str
    starts_turn: bool
    turn_id: str | None = None
    media_urls: list[MediaUrl] | None = None


class MessageAccepted(_Event, tag="message_accepted", kw_only=True):
    """To the sender of a ``message`` with ``turn_id`` and ``webui: true``."""

    chat_id: str
    turn_id: str
    #: True when no turn of the chat was running, so this message starts one.
    starts_turn: bool


class WebuiError(msgspec.Struct, kw_only=True):
    status: int
    message: str


class WebuiResponse(_Event, tag="webui_response", kw_only=True):
    """The answer to a ``webui_request`` (PROTOCOL 3.2)."""

    request_id: str
    ok: bool
    result: Any = msgspec.UNSET
    error: WebuiError | None = None


ServerEvent = (
    AgentEvent
    | Ready
    | Attached
    | Error
    | UserMessageEcho
    | MessageAccepted
    | WebuiResponse
)

_encoder = msgspec.json.Encoder()


def encode_event(event: ServerEvent) -> bytes:
    """Encode one event to its JSON text (UTF-8 bytes)."""
    return _encoder.encode(event)


_JOINABLE = Delta | ReasoningDelta


def join_deltas(first: bytes, then: bytes) -> bytes:
    """Two encoded deltas of one stream as one: ``first`` with both texts.

    Several daemons append through Redis, where stream deltas are most of
    the writes: the deltas of a stream that queue while a batch is being
    written become one (every node's clients then see the same delta).
    """
    head = msgspec.json.decode(first, type=_JOINABLE)
    tail = msgspec.json.decode(then, type=_JOINABLE)
    return encode_event(msgspec.structs.replace(head, text=head.text + tail.text))


# --- client → agent -----------------------------------------------------


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A client's message, validated and ready for the agent."""

    chat_id: str
    client_id: str
    content: str
    #: Absolute paths of the attachments saved under ``<data_dir>/media/``.
    media: tuple[str, ...] = ()
    #: ``remote``, ``streaming`` and, when sent, ``webui``, ``cli_apps``,
    #: ``mcp_presets``, ``workspace_scope``, ``image_generation``.
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Unix seconds when the server accepted the message.
    received_at: float = 0.0
    #: The client's id for this turn (nanobot's web UI sends one), if any.
    turn_id: str | None = None
