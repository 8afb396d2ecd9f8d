"""Signed media URLs (PROTOCOL 6) and the secret behind them.

:class:`MediaSigner` turns a path under the media root into
``/api/media/<sig>/<payload>`` and back. Its secret lives in the data
directory (:func:`load_or_create_secret`), so URLs survive restarts.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import re
import secrets
import tempfile
from hashlib import sha256
from pathlib import Path, PurePosixPath
from typing import Final

import attrs

from .ingress import unlink_all

log = logging.getLogger(__name__)

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
        unlink_all([tmp])
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
