"""Making text safe at the edge: lone UTF-16 surrogates become U+FFFD.

A JSON text may spell a lone surrogate (``"\\ud800"``) that no UTF-8 encoder
accepts: let one through and the first log line, store write or frame that
encodes it raises ``UnicodeEncodeError`` far from where it came in. PROTOCOL
3 has them replaced with U+FFFD before anything else sees the frame, and the
same for strings in agent events. These helpers do that for any JSON-shaped
value (``dict``/``list``/``str``/numbers...), keys included. Pure.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["REPLACEMENT", "has_surrogates", "scrub", "scrub_text"]

REPLACEMENT: Final = "\ufffd"
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds a code point no UTF-8 encoder will take."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def scrub_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD.

    A pair that a JSON decoder already joined is one astral character, not
    two surrogates, so only lone halves are left to replace. ASCII text (the
    usual case) is returned as is without a scan.
    """
    if text.isascii():
        return text
    return _SURROGATE.sub(REPLACEMENT, text)


def scrub(value: Any) -> Any:
    """A copy of a JSON-shaped ``value`` with every string scrubbed.

    Dict keys are scrubbed too. Values that are not ``str``, ``dict``,
    ``list`` or ``tuple`` are returned as they are. Nesting deeper than the
    interpreter's recursion limit allows never reaches this far: decoders
    refuse it first.
    """
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value
