"""Server text frames, built once per event.

Server frames are unmasked and we negotiate no extension (no
permessage-deflate), so a text frame is the same bytes for every subscriber:
an event fanned out to N connections is framed once (:func:`text_frame`) and
each connection's writer sends everything queued in one ``send_all``. The
bytes are exactly what ``wsproto`` would produce for the same message; control
frames (ping, pong, close) come from the connection's ``wsproto`` object.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, unfragmented text frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _FIN_TEXT, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload
