"""Stream assembly: join ``delta`` text per ``(chat_id, stream_id)``.

Pure. Deltas of two streams in one chat never mix (PROTOCOL 4), so a stream
is keyed by its chat and its ``stream_id`` (any JSON value, compared by its
JSON text). ``stream_end`` closes the stream and names its whole text: the
server's own ``text`` when it sent one (the markdown rewrite changed the
stream), else the joined deltas. Reasoning streams (``reasoning_delta`` /
``reasoning_end``) are kept apart from answer streams.

Bounded: at most ``max_streams`` open streams (the oldest open one is dropped
past that) and ``max_chars`` characters per stream (a stream past it stops
growing), as the server bounds its own buffers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import attrs
import msgspec

__all__ = ["StreamAssembler"]

DEFAULT_MAX_STREAMS = 256
DEFAULT_MAX_CHARS = 16 * 1024 * 1024

_key_encoder = msgspec.json.Encoder()

StreamKey = tuple[str, bytes, bool]


def _key(chat_id: str, stream_id: Any, reasoning: bool) -> StreamKey:
    return (chat_id, _key_encoder.encode(stream_id), reasoning)


@attrs.define
class _Buffer:
    parts: list[str] = attrs.field(factory=list)
    size: int = 0


@attrs.define
class StreamAssembler:
    """Open streams of every chat, and their text so far."""

    max_streams: int = DEFAULT_MAX_STREAMS
    max_chars: int = DEFAULT_MAX_CHARS
    _open: OrderedDict[StreamKey, _Buffer] = attrs.field(
        factory=OrderedDict, init=False
    )

    def add(
        self, chat_id: str, stream_id: Any, text: str, *, reasoning: bool = False
    ) -> None:
        """Append one delta's text."""
        key = _key(chat_id, stream_id, reasoning)
        buf = self._open.get(key)
        if buf is None:
            while len(self._open) >= self.max_streams:
                self._open.popitem(last=False)
            buf = self._open[key] = _Buffer()
        room = self.max_chars - buf.size
        if room > 0 and text:
            piece = text[:room]
            buf.parts.append(piece)
            buf.size += len(piece)

    def text(self, chat_id: str, stream_id: Any, *, reasoning: bool = False) -> str:
        """The text of an open stream so far (``""`` when not open)."""
        buf = self._open.get(_key(chat_id, stream_id, reasoning))
        if buf is None:
            return ""
        if len(buf.parts) > 1:
            buf.parts[:] = ["".join(buf.parts)]
        return buf.parts[0] if buf.parts else ""

    def finish(
        self,
        chat_id: str,
        stream_id: Any,
        server_text: str | None = None,
        *,
        reasoning: bool = False,
    ) -> str:
        """Close a stream; its whole text (the server's when it sent one)."""
        key = _key(chat_id, stream_id, reasoning)
        buf = self._open.pop(key, None)
        if server_text is not None:
            return server_text
        return "" if buf is None else "".join(buf.parts)

    def drop_chat(self, chat_id: str) -> None:
        """Forget every open stream of a chat (after ``history_reset``)."""
        for key in [k for k in self._open if k[0] == chat_id]:
            del self._open[key]

    def open_streams(self, chat_id: str) -> int:
        return sum(1 for k in self._open if k[0] == chat_id)
