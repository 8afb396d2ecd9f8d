"""Serving media files (PROTOCOL 6): byte ranges and headers by type (pure).

:func:`parse_range` decides one ``Range`` header against a file's size;
:func:`media_headers` picks the served type and the headers that keep a
browser from guessing (``nosniff``, a strict CSP for SVG).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import attrs

from ..media.ingress import IMAGE_MIMES, VIDEO_MIMES


@attrs.frozen
class ByteRange:
    """Bytes ``start`` to ``end`` of a file, both inclusive."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@attrs.frozen
class RangeNotSatisfiable:
    """Answer 416 with ``Content-Range: bytes */SIZE``."""


NOT_SATISFIABLE: Final = RangeNotSatisfiable()
_RANGE_SPEC_RE: Final = re.compile(r"\s*([0-9]*)\s*-\s*([0-9]*)\s*")
#: Bigger than any file; keeps int() away from huge digit strings.
_HUGE: Final = 10**18


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


def parse_range(
    header: str | None, size: int
) -> ByteRange | RangeNotSatisfiable | None:
    """Decide a ``Range`` header against a file of ``size`` bytes.

    None: serve the whole file (no header, or a unit other than ``bytes``,
    which RFC 9110 says to ignore). One range, ``a-b`` (``b`` clipped to the
    end), ``a-`` or ``-n`` (the last ``n`` bytes): that range (206). Several
    ranges, a malformed one, or one that starts past the end: 416.
    """
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s for s in spec.split(",") if s.strip()]
    if len(specs) != 1:
        return NOT_SATISFIABLE
    m = _RANGE_SPEC_RE.fullmatch(specs[0])
    if m is None or not (m[1] or m[2]):
        return NOT_SATISFIABLE
    if not m[1]:
        suffix = _number(m[2])
        if suffix == 0 or size == 0:
            return NOT_SATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1)
    start = _number(m[1])
    end = _number(m[2]) if m[2] else size - 1
    if start >= size or end < start:
        return NOT_SATISFIABLE
    return ByteRange(start, min(end, size - 1))


SVG_CSP: Final = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
)
MEDIA_CACHE_CONTROL: Final = "private, max-age=31536000, immutable"
_MEDIA_TYPES: Final[Mapping[str, str]] = {
    **{ext: mime for mime, ext in IMAGE_MIMES.items()},
    **{ext: mime for mime, ext in VIDEO_MIMES.items()},
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
}


def media_headers(name: str) -> list[tuple[str, str]]:
    """Headers for a media file, by its extension (PROTOCOL 3.2 and 6).

    The image and video types clients may upload, plus SVG with a CSP that
    forbids scripts; anything else is ``application/octet-stream``. Always
    ``nosniff``, so a browser never guesses its way to HTML.
    """
    dot = name.rfind(".")
    mime = _MEDIA_TYPES.get(name[dot:].lower(), "application/octet-stream")
    headers = [
        ("Content-Type", mime),
        ("X-Content-Type-Options", "nosniff"),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", MEDIA_CACHE_CONTROL),
    ]
    if mime == "image/svg+xml":
        headers.append(("Content-Security-Policy", SVG_CSP))
    return headers
