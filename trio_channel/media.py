"""Client media: check data URLs, keep them on disk, sign URLs to serve them.

Three layers, kept apart so each is tested alone:

* :func:`check_media` is pure. It applies PROTOCOL 3.2 steps 3-5 to the
  ``media`` field of a ``message`` envelope and returns the decoded files or the
  reason to refuse them. It does no I/O, so the server runs it in a worker
  thread: decoding 37 MB of base64 on the event loop would stall every
  connection.
* :func:`save_media` and :func:`discard_media` move bytes to and from disk off
  the event loop, and never leave part of a refused message behind.
* :class:`MediaSigner` turns a path under the media root into
  ``/api/media/<sig>/<payload>`` and back (PROTOCOL 6). Its secret lives in the
  data directory (:func:`load_or_create_secret`), so URLs survive restarts.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from hashlib import sha256
from pathlib import Path, PurePosixPath
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
        await trio.to_thread.run_sync(_unlink_all, todo)


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
        _unlink_all([str(path)])
        raise
    return str(path)


def _unlink_all(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete media file %s: %s", path, exc)


# --- signed URLs -----------------------------------------------------------------

SECRET_BYTES: Final = 32


def load_or_create_secret(path: Path) -> bytes:
    """The media URL secret kept at ``path``, created on first use.

    Keeping it on disk (mode 0o600) is what lets URLs handed out before a
    restart still work after it. A new file is written to a temporary name and
    renamed into place, so no reader ever sees a partial secret; a file that
    does not hold exactly 32 bytes is replaced (its URLs were unverifiable
    anyway). Blocking: the server calls it through ``trio.to_thread``.
    """
    try:
        with open(path, "rb") as f:
            secret = f.read(SECRET_BYTES + 1)
    except FileNotFoundError:
        pass
    else:
        if len(secret) == SECRET_BYTES:
            return secret
        log.warning(
            "%s does not hold a %d-byte secret; replacing it", path, SECRET_BYTES
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as f:  # mkstemp creates it with mode 0o600
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_all([tmp])
        raise
    return secret


@attrs.frozen
class MediaUrlError:
    """The HTTP answer for a media URL that does not check out."""

    status: int
    body: str


_INVALID_SIGNATURE: Final = MediaUrlError(401, "invalid signature")
_INVALID_PAYLOAD: Final = MediaUrlError(400, "invalid payload")
_NOT_FOUND: Final = MediaUrlError(404, "not found")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")


@attrs.frozen
class MediaSigner:
    """Signs paths under ``media_root`` into URLs, and checks them back.

    ``payload`` is the unpadded base64url of the path relative to the root
    (POSIX separators, UTF-8) and ``sig`` the unpadded base64url of the first
    16 bytes of HMAC-SHA256(secret, payload): only files we chose to link to
    can be fetched, and nothing outside the root even then.
    """

    secret: bytes = attrs.field(repr=False)
    media_root: Path

    def url_for(self, path: Path) -> str | None:
        """``/api/media/<sig>/<payload>`` for ``path``, or None if outside the root.

        Both paths are resolved first, so ``..`` and symlinks cannot point a
        URL outside the root. A name that is not valid UTF-8 gets no URL.
        """
        try:
            root = self.media_root.resolve()
            relative = path.resolve().relative_to(root)
            if not relative.parts:
                return None
            payload = _b64url(relative.as_posix().encode("utf-8"))
        except (OSError, RuntimeError, ValueError):
            return None
        return f"/api/media/{self._sign(payload)}/{payload}"

    def verify(self, sig: str, payload: str) -> Path | MediaUrlError:
        """The absolute path a URL names, or the error to answer with.

        Never raises on client input. Whether the file exists is for the
        route to find out.
        """
        if not (sig.isascii() and payload.isascii()):
            return _INVALID_SIGNATURE
        if not hmac.compare_digest(sig, self._sign(payload)):
            return _INVALID_SIGNATURE
        relative = _unb64url_text(payload)
        if relative is None:
            return _INVALID_PAYLOAD
        if "\0" in relative or PurePosixPath(relative).is_absolute():
            return _NOT_FOUND
        try:
            root = self.media_root.resolve()
            target = (root / relative).resolve()
        except (OSError, RuntimeError, ValueError):
            return _NOT_FOUND
        if target == root or not target.is_relative_to(root):
            return _NOT_FOUND
        return target

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self.secret, payload.encode("ascii"), sha256)
        return _b64url(mac.digest()[:16])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url_text(payload: str) -> str | None:
    """Strictly decode unpadded base64url into non-empty UTF-8 text, or None."""
    if not _B64URL_RE.fullmatch(payload) or len(payload) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        text = raw.decode("utf-8")
    except ValueError:
        return None
    return text or None
