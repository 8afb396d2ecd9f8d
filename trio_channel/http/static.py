"""The chat page's files: a directory served as a single-page app (PROTOCOL 6).

One implementation for the bundled page (``trio_channel/webui/``) and for a
build given with ``--webui-dir`` (nanobot's own web UI, say):

- :func:`static_candidates` decides, without touching the disk, which files a
  request path may name: the file itself when the path is plainly a file
  under the directory, then ``index.html`` (so ``/``, ``/chat/123`` and
  anything unknown get the app, which routes on the client);
- :func:`static_headers` gives a file its type and cache policy;
- :func:`open_static` (blocking: run it in a worker thread) opens a candidate
  walking down from the directory one component at a time, each opened
  relative to its parent and never through a symlink.

Nothing outside the directory is ever served: a path is refused (and the app
answers instead) when, after decoding each segment exactly once, a segment is
empty, starts with a dot (``..``, hidden files), holds ``/``, ``\\``, NUL or
another control character, or is not UTF-8; and no symlink below the
directory is followed, whether it points inside or out. Hard links cannot be
told from files and are served; making one takes write access to the
directory anyway.

Cache policy: ``index.html`` is ``no-cache`` (a new build is picked up at the
next load); files under ``assets/`` are content-hashed by Vite, so
``public, max-age=31536000, immutable``; everything else (``sw.js``,
``manifest.json``, icons, the bundled page's unhashed ``app.js``) is
``no-cache`` too, since their names stay the same from one build to the next.
Every answer carries ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import unquote

from .response import FILE_FLAGS, regular_file

INDEX: Final = "index.html"
#: Deeper paths than this are not looked up (a Vite build is 2-3 deep).
MAX_DEPTH: Final = 16
#: Longest file name in bytes (``NAME_MAX`` on Linux).
MAX_NAME_BYTES: Final = 255
IMMUTABLE: Final = "public, max-age=31536000, immutable"
NO_CACHE: Final = "no-cache"
#: The directory whose files are named by their content hash.
HASHED_DIR: Final = "assets"

_TEXT = "; charset=utf-8"
CONTENT_TYPES: Final[Mapping[str, str]] = {
    ".html": "text/html" + _TEXT,
    ".js": "text/javascript" + _TEXT,
    ".mjs": "text/javascript" + _TEXT,
    ".css": "text/css" + _TEXT,
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain" + _TEXT,
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
}
OCTET_STREAM: Final = "application/octet-stream"

_INDEX_PARTS: Final = (INDEX,)


def static_parts(path: str) -> tuple[str, ...] | None:
    """The path components below the directory that ``path`` names, or None.

    ``path`` is the request path without its query, still percent-encoded.
    ``/`` names ``index.html``. It is split on ``/`` first and each segment
    decoded once, so ``%2F`` never makes a new segment; None (serve the app
    instead) for anything that is not plainly a file name at every level.
    """
    rest = path[1:] if path.startswith("/") else path
    if not rest:
        return _INDEX_PARTS
    segments = rest.split("/")
    if len(segments) > MAX_DEPTH:
        return None
    parts = []
    for segment in segments:
        try:
            name = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            return None
        if not _plain_name(name):
            return None
        parts.append(name)
    return tuple(parts)


def _plain_name(name: str) -> bool:
    if not name or name[0] == "." or len(name.encode()) > MAX_NAME_BYTES:
        return False
    return not any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def static_candidates(path: str) -> list[tuple[str, ...]]:
    """What to try to open for ``path``, in order: the file, then the app."""
    parts = static_parts(path)
    if parts is None or parts == _INDEX_PARTS:
        return [_INDEX_PARTS]
    return [parts, _INDEX_PARTS]


def static_headers(parts: Sequence[str]) -> list[tuple[str, str]]:
    """Content type, cache policy and ``nosniff`` for the file at ``parts``."""
    name = parts[-1]
    dot = name.rfind(".")
    content_type = OCTET_STREAM
    if dot > 0:
        content_type = CONTENT_TYPES.get(name[dot:].lower(), OCTET_STREAM)
    hashed = len(parts) > 1 and parts[0] == HASHED_DIR and name != INDEX
    return [
        ("Content-Type", content_type),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", IMMUTABLE if hashed else NO_CACHE),
    ]


def open_static(root: Path, parts: Sequence[str]) -> tuple[int, int] | None:
    """``(fd, size)`` of the regular file at ``root/parts...``, else None.

    Each directory is opened relative to its parent with ``O_NOFOLLOW``, and
    the file likewise (without blocking, so a FIFO cannot hang the thread),
    then checked with ``fstat``: what is checked is what is read, and a
    symlink anywhere below ``root`` (or a rename racing this walk) never
    leads outside it. ``root`` itself may be a symlink: the operator chose
    it. Blocking: run in a worker thread.
    """
    if not parts:
        return None
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        current = os.open(root, dir_flags)
    except (OSError, ValueError):
        return None
    try:
        for name in parts[:-1]:
            child = os.open(name, dir_flags | os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = child
        fd = os.open(parts[-1], FILE_FLAGS, dir_fd=current)
    except (OSError, ValueError):
        return None
    finally:
        os.close(current)
    return regular_file(fd)
