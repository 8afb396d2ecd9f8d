"""Client media: check data URLs and keep them on disk.

Two layers, kept apart so each is tested alone:

* :func:`check_media` is pure. It applies PROTOCOL 3.2 steps 3-5 to the
  ``media`` field of a ``message`` envelope and returns the decoded files or the
  reason to refuse them. It does no I/O, so the server runs it in a worker
  thread: decoding 37 MB of base64 on the event loop would stall every
  connection.
* :func:`save_media` and :func:`discard_media` move bytes to and from disk off
  the event loop, and never leave part of a refused message behind.
"""

from __future__ import annotations

import binascii
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

import attrs
import trio

log = logging.getLogger(__name__)

_MiB: Final = 1024 * 1024
MAX_IMAGES: Final = 4
MAX_VIDEOS: Final = 1
IMAGE_MAX_BYTES: Final = 8 * _MiB
VIDEO_MAX_BYTES: Final = 20 * _MiB

#: Accepted image types and the extension their files are saved with. SVG is
#: deliberately absent: it can carry script.
IMAGE_MIMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "image/png": ".png",
        "image/jpeg": ".jpg",
        "image/webp": ".webp",
        "image/gif": ".gif",
    }
)
VIDEO_MIMES: Final[Mapping[str, str]] = MappingProxyType(
    {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov"}
)

RejectReason = Literal[
    "too_many_images", "too_many_videos", "malformed", "decode", "mime", "size"
]


@attrs.frozen
class MediaRejected:
    """Why a message's media was refused.

    The caller answers ``{"event": "error", "detail": "image_rejected",
    "reason": reason}`` and hands nothing to the agent.
    """

    reason: RejectReason


@attrs.frozen
class DecodedMedia:
    """One accepted attachment, decoded and ready to be written."""

    mime: str
    # Up to 20 MiB: never let a repr() in a log or a failed assert print it.
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    extension: str


# --- validation (pure) ---------------------------------------------------------

# RFC 2045 tokens, after lower-casing: "type/subtype".
_MIME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")
# Every byte the lenient decoder would skip anyway: all but the alphabet and "=".
_B64_KEEP: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_DROP: Final = bytes(sorted(set(range(256)) - set(_B64_KEEP)))


def parse_data_url_mime(data_url: str) -> str | None:
    """The MIME type of ``data:<mime>[;params][;base64],<payload>``.

    Stripped and lower-cased, as PROTOCOL 3.2 compares it; None when the text
    is not a data URL or names no ``type/subtype``.
    """
    if data_url[:5].lower() != "data:":
        return None
    comma = data_url.find(",", 5)
    if comma < 0:
        return None
    mime = data_url[5:comma].partition(";")[0].strip().lower()
    return mime if _MIME_RE.fullmatch(mime) else None


def check_media(media: object) -> list[DecodedMedia] | MediaRejected:
    """Apply PROTOCOL 3.2 steps 3-5 to a ``message``'s ``media`` field.

    Returns the decoded files in the order sent (``[]`` for ``None``), or the
    first failure in the protocol's order: shape, counts, then each item in
    turn. Pure and CPU-bound: run it with ``trio.to_thread.run_sync``.
    """
    if media is None:
        return []
    if not isinstance(media, list):
        return MediaRejected("malformed")
    # Counts come before any per-item check, and only look at allowed types,
    # so five images and one broken item is ``too_many_images``.
    parsed: list[tuple[str | None, str | None]] = []
    images = videos = 0
    for item in media:
        data_url = _data_url_of(item)
        mime = None if data_url is None else parse_data_url_mime(data_url)
        images += mime in IMAGE_MIMES
        videos += mime in VIDEO_MIMES
        parsed.append((data_url, mime))
    if images > MAX_IMAGES:
        return MediaRejected("too_many_images")
    if videos > MAX_VIDEOS:
        return MediaRejected("too_many_videos")

    decoded: list[DecodedMedia] = []
    for data_url, mime in parsed:
        if data_url is None:
            return MediaRejected("malformed")
        if mime is None:
            return MediaRejected("decode")
        if mime in IMAGE_MIMES:
            extension, limit = IMAGE_MIMES[mime], IMAGE_MAX_BYTES
        elif mime in VIDEO_MIMES:
            extension, limit = VIDEO_MIMES[mime], VIDEO_MAX_BYTES
        else:
            return MediaRejected("mime")
        data = _decode_payload(data_url[data_url.index(",") + 1 :], limit)
        if isinstance(data, MediaRejected):
            return data
        decoded.append(DecodedMedia(mime=mime, data=data, extension=extension))
    return decoded


def _data_url_of(item: object) -> str | None:
    """The item's ``data_url`` when it is a non-empty string, else None."""
    if not isinstance(item, dict):
        return None
    data_url = item.get("data_url")
    return data_url if isinstance(data_url, str) and data_url else None


def _decode_payload(payload: str, limit: int) -> bytes | MediaRejected:
    """Decode like ``base64.b64decode(payload, validate=False)``, within ``limit``.

    Same bytes and the same failures as the reference's lenient decode, but a
    payload that is certainly too big is refused before it is decoded.
    """
    if not payload.isascii():
        return MediaRejected("decode")  # b64decode raises ValueError on these
    # The lenient decoder skips these bytes without changing its state, so
    # dropping them first changes nothing, and leaves what we can measure.
    clean = payload.encode("ascii").translate(None, _B64_DROP)
    size = _size_without_decoding(clean)
    if size is not None and size > limit:
        return MediaRejected("size")
    try:
        data = binascii.a2b_base64(clean)
    except binascii.Error:
        return MediaRejected("decode")
    if not data:
        return MediaRejected("decode")
    if len(data) > limit:
        return MediaRejected("size")
    return data


def _size_without_decoding(clean: bytes) -> int | None:
    """Decoded length of ``clean`` (alphabet and ``=`` only), if cheap and sure.

    When every ``=`` is at the end, all but the last partial group are plain
    4-to-3 groups; only that tail (three characters and pads at most) can
    change the length or fail, so decoding it alone settles both. A ``=``
    earlier on can stop the decoder early, so then we answer None and leave it
    to the real decode: this shortcut must never refuse what would have fit,
    nor answer ``size`` where the decoder would answer ``decode``.
    """
    body = clean.rstrip(b"=")
    if b"=" in body:
        return None
    whole = len(body) - len(body) % 4
    try:
        tail = binascii.a2b_base64(clean[whole:])
    except binascii.Error:
        return None
    return whole // 4 * 3 + len(tail)


# --- storage (trio, off the event loop) ---------------------------------------


async def save_media(items: Sequence[DecodedMedia], media_dir: Path) -> list[str]:
    """Write each item under a fresh random name in ``media_dir``; return paths.

    The directory is created (mode 0o700) if needed; files are created
    exclusively, mode 0o600, as ``<32 hex><extension>``. The returned paths are
    absolute and in the order of ``items``. If any write fails or the task is
    cancelled, the files already written by this call are deleted before the
    exception propagates. Once this returns, the caller owns the files: pass
    them on or :func:`discard_media` them.
    """
    if not items:
        return []
    root = await trio.to_thread.run_sync(_prepare_dir, media_dir)
    written: list[str] = []
    try:
        for item in items:
            written.append(await trio.to_thread.run_sync(_write_new_file, root, item))
        # A cancel that arrived during the last write is only seen at a
        # checkpoint: take it here, while the files are still ours to delete.
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        await discard_media(written)
        raise
    return written


async def discard_media(paths: Iterable[str]) -> None:
    """Delete files saved for a message that was refused after all.

    Missing files are ignored; other errors are logged, never raised, since
    this runs on error paths. Shielded from cancellation: a cancelled caller
    is exactly the one that must not leave files behind.
    """
    todo = list(paths)
    if not todo:
        return
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(unlink_all, todo)


def _prepare_dir(media_dir: Path) -> Path:
    media_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return media_dir.resolve()


def _write_new_file(root: Path, item: DecodedMedia) -> str:
    """Create one file exclusively; on failure, remove what was written."""
    path = root / (secrets.token_hex(16) + item.extension)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(item.data)
    except BaseException:
        unlink_all([str(path)])
        raise
    return str(path)


def unlink_all(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete media file %s: %s", path, exc)
