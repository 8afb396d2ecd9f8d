"""A chat's history in the shape nanobot's web UI restores after a reload.

``GET /api/sessions/{key}/webui-thread`` (PROTOCOL 6) answers what
:func:`build_webui_thread` returns: the persisted events of one chat, exactly
as clients received them, folded together with the user's own messages into
the ``UIMessage`` rows that nanobot's web UI keeps in memory while it is
live. Both UI versions we serve (the seed's commit and today's HEAD) read the
same rows:

- a **user row** per user message: ``role: "user"``, ``content``, ``media``
  (``{"kind","url","name"}``; ``url`` left out when the file cannot be
  signed, so the UI shows a named placeholder) and ``images`` when every
  attachment is an image;
- per agent **reply** (everything the agent sent after a user message, up to
  its ``turn_end`` or the next user message) one **answer row**
  (``role: "assistant"``: the reply's text segments in the order they
  started, streams assembled per ``stream_id``, joined by a blank line;
  ``reasoning``; ``media`` from the already signed ``media_urls``;
  ``latencyMs`` from ``turn_end``), preceded by one **activity row**
  (``role: "tool", kind: "trace"``: tool hints, progress lines, file edits)
  when the reply had any, because both UIs draw tool traces and file edits
  only from ``kind: "trace"`` rows.

Ids are stable (derived from ``seq`` and ``after_seq``), so a reload gives
the same ids; ``createdAt`` is Unix milliseconds, as the UIs want. Everything
here is pure: plain data in, a JSON-ready dict out; the one outside call,
``media_url``, signs attachment paths.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import msgspec

#: ``WEBUI_TRANSCRIPT_SCHEMA_VERSION`` of nanobot's transcript module, at both
#: commits we serve.
SCHEMA_VERSION: Final = 3
SESSION_KEY_PREFIX: Final = "websocket:"

_IMAGE_EXTS: Final = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".svg"})
_VIDEO_EXTS: Final = frozenset({".mp4", ".mov", ".webm"})
_TRACE_KINDS: Final = frozenset({"tool_hint", "progress"})

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


@attrs.frozen
class ThreadUserMessage:
    """One of the user's messages, as the store keeps it."""

    #: The chat's last ``seq`` when it arrived: it sits after that event.
    after_seq: int
    #: Unix seconds.
    at: float
    client_id: str
    content: str
    #: Absolute paths of the attachments.
    media: tuple[str, ...] = ()
    turn_id: str | None = None


def build_webui_thread(
    chat_id: str,
    events: Iterable[tuple[int, bytes]],
    user_messages: Iterable[ThreadUserMessage],
    *,
    media_url: Callable[[str], str | None],
    workspace_scope: Any = None,
    created_at: float = 0.0,
    running: bool = False,
) -> dict[str, Any]:
    """The ``webui-thread`` payload of one chat.

    ``events`` are ``(seq, payload)`` in ``seq`` order, each payload the
    event's JSON as clients received it; unknown types and undecodable
    payloads are skipped. ``user_messages`` may come in any order of
    ``after_seq`` (ties keep their order); ``media_url`` signs their
    attachment paths (None: cannot). ``created_at`` (Unix seconds) dates
    replies that no user message precedes; ``running`` says a turn is still
    under way (``has_pending_tool_calls``, which today's UI reads to keep
    its "working" state across a reload).
    """
    builder = WebuiThreadBuilder(
        chat_id,
        user_messages,
        media_url=media_url,
        workspace_scope=workspace_scope,
        created_at=created_at,
        running=running,
    )
    builder.feed(events)
    return builder.finish()


class WebuiThreadBuilder:
    """:func:`build_webui_thread` one page of events at a time.

    What it holds grows with the rows it will answer, not with the events it
    was fed, so a long history can be read from the store in pages.
    """

    def __init__(
        self,
        chat_id: str,
        user_messages: Iterable[ThreadUserMessage],
        *,
        media_url: Callable[[str], str | None],
        workspace_scope: Any = None,
        created_at: float = 0.0,
        running: bool = False,
    ) -> None:
        self._head = {
            "schemaVersion": SCHEMA_VERSION,
            "sessionKey": SESSION_KEY_PREFIX + chat_id,
        }
        self._tail = {"workspace_scope": workspace_scope}
        self._running = running
        self._users = deque(sorted(user_messages, key=lambda m: m.after_seq))
        self._media_url = media_url
        self._fold = _Fold(anchor_ms=_ms(created_at))

    def feed(self, events: Iterable[tuple[int, bytes]]) -> None:
        """More events, in ``seq`` order, after those fed before."""
        for seq, payload in events:
            # A user message with after_seq = s sits after event s.
            while self._users and self._users[0].after_seq < seq:
                self._fold.user(self._users.popleft(), self._media_url)
            try:
                event = _decode.decode(payload)
            except msgspec.DecodeError:
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                self._fold.event(seq, event)

    def finish(self) -> dict[str, Any]:
        """The payload; the user messages after the last event come last."""
        while self._users:
            self._fold.user(self._users.popleft(), self._media_url)
        return {
            **self._head,
            "messages": self._fold.rows(),
            **self._tail,
            "completed_turn_ids": list(self._fold.completed_turn_ids),
            "has_pending_tool_calls": self._running,
        }


def media_kind(name: str) -> str:
    """``image``, ``video`` or ``file``, by extension (as nanobot's UI infers it)."""
    ext = os.path.splitext(name)[1].lower()
    if ext in _IMAGE_EXTS:
        return "image"
    return "video" if ext in _VIDEO_EXTS else "file"


# --- folding -------------------------------------------------------------------


@attrs.define
class _Segment:
    text: str = ""
    media: list[dict[str, str]] = attrs.field(factory=list)


@attrs.define
class _Reply:
    first_seq: int
    anchor_ms: int
    turn_id: str | None
    segments: list[_Segment] = attrs.field(factory=list)
    reasoning: list[_Segment] = attrs.field(factory=list)
    traces: list[str] = attrs.field(factory=list)
    tool_events: list[dict[str, Any]] = attrs.field(factory=list)
    #: Keyed so a later event for the same edit (editing, then done) updates it.
    file_edits: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    latency_ms: int | None = None
    interrupted: bool = False

    def add_segment(self) -> _Segment:
        segment = _Segment()
        self.segments.append(segment)
        return segment


@attrs.frozen
class _UserRow:
    row: dict[str, Any]


@attrs.define
class _Fold:
    """The state of one pass over a chat's history."""

    anchor_ms: int
    turn_id: str | None = None
    completed_turn_ids: list[str] = attrs.field(factory=list)
    _rows: list[_UserRow | _Reply] = attrs.field(factory=list)
    _reply: _Reply | None = None
    #: Open streams by stream key; a stream's text stays in the reply it
    #: started in, even if a user message arrives before it ends.
    _streams: dict[str, _Segment] = attrs.field(factory=dict)
    _thinking: dict[str, _Segment] = attrs.field(factory=dict)
    _same_after: dict[int, int] = attrs.field(factory=dict)

    def user(
        self, message: ThreadUserMessage, media_url: Callable[[str], str | None]
    ) -> None:
        self._reply = None
        self.anchor_ms = _ms(message.at)
        self.turn_id = message.turn_id
        nth = self._same_after.get(message.after_seq, 0)
        self._same_after[message.after_seq] = nth + 1
        row: dict[str, Any] = {
            "id": f"user-{message.after_seq}-{nth}",
            "role": "user",
            "content": message.content,
            "createdAt": self.anchor_ms,
        }
        if message.turn_id:
            row["turnId"] = message.turn_id
        media = []
        for path in message.media:
            name = os.path.basename(path)
            item = {"kind": media_kind(name), "name": name}
            url = media_url(path)
            if url is not None:
                item["url"] = url
            media.append(item)
        if media:
            row["media"] = media
            if all(m["kind"] == "image" for m in media):
                row["images"] = [
                    {k: m[k] for k in ("url", "name") if k in m} for m in media
                ]
        self._rows.append(_UserRow(row))

    def event(self, seq: int, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        key = _stream_key(ev.get("stream_id"))
        text = ev.get("text")
        if kind == "delta" and isinstance(text, str) and text:
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = self._open(seq).add_segment()
            stream.text += text
        elif kind == "stream_end":
            stream = self._streams.pop(key, None)
            if isinstance(text, str):  # the whole stream, rewritten
                if stream is None:
                    stream = self._open(seq).add_segment()
                stream.text = text
        elif kind == "reasoning_delta" and isinstance(text, str) and text:
            thought = self._thinking.get(key)
            if thought is None:
                thought = _Segment()
                self._open(seq).reasoning.append(thought)
                self._thinking[key] = thought
            thought.text += text
        elif kind == "reasoning_end":
            self._thinking.pop(key, None)
        elif kind == "message":
            self._message(seq, ev)
        elif kind == "file_edit" and isinstance(ev.get("edits"), list):
            reply = self._open(seq)
            for edit in ev["edits"]:
                if isinstance(edit, dict):
                    edit_key = _file_edit_key(edit, len(reply.file_edits))
                    reply.file_edits[edit_key] = {
                        **reply.file_edits.get(edit_key, {}),
                        **edit,
                    }
        elif kind == "turn_end":
            self._turn_end(ev)

    def _open(self, seq: int) -> _Reply:
        """The reply under way, or a new one starting at event ``seq``."""
        if self._reply is None:
            self._reply = _Reply(seq, self.anchor_ms, self.turn_id)
            self._rows.append(self._reply)
        return self._reply

    def _message(self, seq: int, ev: dict[str, Any]) -> None:
        text = ev.get("text")
        text = text if isinstance(text, str) else ""
        message_kind = ev.get("kind")
        if message_kind in _TRACE_KINDS:
            tool_events = ev.get("tool_events")
            tools = [e for e in tool_events or () if isinstance(e, dict)]
            if not (text or tools):
                return
            reply = self._open(seq)
            if text:
                reply.traces.append(text)
            reply.tool_events.extend(tools)
            return
        if message_kind == "reasoning":
            if text:
                self._open(seq).reasoning.append(_Segment(text))
            return
        media = _signed_media(ev.get("media_urls"))
        latency = _latency(ev.get("latency_ms"))
        if not (text or media or latency is not None):
            return
        reply = self._open(seq)
        if text or media:
            reply.segments.append(_Segment(text, media))
        if latency is not None:
            reply.latency_ms = latency

    def _turn_end(self, ev: dict[str, Any]) -> None:
        reply = self._reply
        self._reply = None
        self._streams.clear()
        self._thinking.clear()
        if reply is None:
            return
        latency = _latency(ev.get("latency_ms"))
        if latency is not None:
            reply.latency_ms = latency
        if ev.get("interrupted") is True:
            reply.interrupted = True
        elif reply.turn_id and reply.turn_id not in self.completed_turn_ids:
            self.completed_turn_ids.append(reply.turn_id)

    def rows(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in self._rows:
            if isinstance(item, _UserRow):
                out.append(item.row)
            else:
                out.extend(_reply_rows(item))
        return out


def _reply_rows(reply: _Reply) -> list[dict[str, Any]]:
    rows = []
    turn = {"turnId": reply.turn_id} if reply.turn_id else {}
    if reply.traces or reply.file_edits or reply.tool_events:
        activity: dict[str, Any] = {
            "id": f"activity-{reply.first_seq}",
            "role": "tool",
            "kind": "trace",
            "content": reply.traces[-1] if reply.traces else "",
            "traces": list(reply.traces),
            "activitySegmentId": f"activity-{reply.first_seq}",
            "createdAt": reply.anchor_ms + 1,
            **turn,
        }
        if reply.file_edits:
            activity["fileEdits"] = list(reply.file_edits.values())
        if reply.tool_events:
            activity["toolEvents"] = list(reply.tool_events)
        rows.append(activity)
    content = "\n\n".join(s.text for s in reply.segments if s.text)
    media = [m for s in reply.segments for m in s.media]
    reasoning = "\n\n".join(s.text for s in reply.reasoning if s.text)
    if content or media or reasoning:
        answer: dict[str, Any] = {
            "id": f"agent-{reply.first_seq}",
            "role": "assistant",
            "content": content,
            "createdAt": reply.anchor_ms + max(1, reply.latency_ms or 0),
            **turn,
        }
        if reasoning:
            answer["reasoning"] = reasoning
        if media:
            answer["media"] = media
        if reply.latency_ms is not None:
            answer["latencyMs"] = reply.latency_ms
        if reply.interrupted:
            answer["interrupted"] = True  # ours; the UIs ignore it
        rows.append(answer)
    return rows


# --- small pieces ------------------------------------------------------------------


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _stream_key(stream_id: Any) -> str:
    """Streams are told apart by their ``stream_id`` (any JSON value)."""
    try:
        return _encode.encode(stream_id).decode()
    except (TypeError, ValueError):  # pragma: no cover - it came from JSON
        return repr(stream_id)


def _latency(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 else None


def _signed_media(value: Any) -> list[dict[str, str]]:
    """``media_urls`` items (already signed) as UI attachments."""
    media = []
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict) and isinstance(item.get("url"), str) and item["url"]:
            name = item.get("name")
            name = name if isinstance(name, str) else ""
            media.append({"kind": media_kind(name), "url": item["url"], "name": name})
    return media


def _file_edit_key(edit: dict[str, Any], position: int) -> str:
    """One edit's identity: its tool call, else its tool and path."""
    call_id = edit.get("call_id")
    tool = str(edit.get("tool") or "")
    if isinstance(call_id, str) and call_id:
        return f"call\0{call_id}\0{tool}"
    path = edit.get("path")
    if isinstance(path, str) and path:
        return f"path\0{tool}\0{path}"
    return f"nth\0{position}"
