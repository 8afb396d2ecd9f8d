"""Local media paths to signed URLs: a message's ``media`` and markdown images.

PROTOCOL 4 ("Markdown rewrite") and 6 ("Media URL"). The agent names files on
its own disk; clients can only fetch ``/api/media/<sig>/<payload>`` URLs for
files under the media root. :class:`MediaLinker` bridges the two: a file
already under the root is signed as is, any other file is first copied to
``<media root>/websocket/<12 hex>-<name>``.

Two kinds of entry points, because only some of the work may block:

* :meth:`MediaLinker.needs_media_urls` and :meth:`MediaLinker.might_rewrite`
  are pure and cheap: the dispatcher asks them on the event loop, so the
  common event (no media, no ``![``) never pays for a thread.
* :meth:`MediaLinker.media_urls`, :meth:`MediaLinker.rewrite_markdown` and
  :meth:`MediaLinker.link_message` stat and copy files: run them with
  ``trio.to_thread.run_sync``. They never raise on odd input or a failed
  copy; what cannot be linked is left as it was.

The markdown scan is linear in the text. Fenced code blocks, paragraphs and
inline code spans are found by small loops over regex matches; images are
matched by a regex whose repeats are all possessive (nothing is ever given
back) and whose every repeat stops at a character that also ends any other
attempt reaching it (see ``_IMAGE``), so no character is scanned more than a
few times whatever the input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import unquote

import attrs
import msgspec

from ..core.events import MediaUrl, Message
from .signing import MediaSigner

log = logging.getLogger(__name__)

#: Extensions (lower-cased) a markdown image may link to.
IMAGE_EXTENSIONS: Final = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".svg", ".mp4", ".mov", ".webm"}
)
#: Sub-directory of the media root that receives copies.
COPY_DIR: Final = "websocket"
#: Local images looked up per text; later ones are left as written. Bounds the
#: filesystem work (and copies) one message can cause.
MAX_LINKS_PER_TEXT: Final = 1000
_MAX_NAME: Final = 100

# --- markdown scanning (pure) -------------------------------------------------

# A line that opens or closes a fenced code block: optional blockquote markers
# and indentation, an optional list marker, then 3+ backticks or tildes.
_FENCE_LINE: Final = re.compile(
    r"^[ \t>]*+(?P<marker>(?:[-+*]|[0-9]{1,9}[.)])[ \t]++)?"
    r"(?P<fence>`{3,}+|~{3,}+)(?P<rest>[^\n]*+)",
    re.MULTILINE,
)
# A blank line ends a paragraph; no image or code span crosses it.
_BLANK_LINE: Final = re.compile(r"\n[ \t\r]*+\n")
_BACKTICKS: Final = re.compile(r"`++")

# Whitespace inside ``(...)``: spaces and at most one line ending.
_WS: Final = r"[ \t]*+(?:\r?\n[ \t]*+)?"
_WS1: Final = r"(?:[ \t]++(?:\r?\n[ \t]*+)?|\r?\n[ \t]*+)"
# ``![alt](url "title")``. Each repeat is possessive and stops at a character
# that ends every other attempt too: alt text at an unescaped ``[`` or ``]``
# (every ``![`` holds one), an ``<url>`` at ``<`` or ``>``, a bare URL at
# whitespace or an unbalanced paren, a title at its closing quote. So the
# attempts from different ``![`` never rescan the same stretch more than a
# constant number of times. Alt text with nested brackets is not matched
# (left as written), nor is a bare URL with parens nested twice.
_IMAGE: Final = re.compile(
    r"!\[(?:[^\[\]\\]|\\[\s\S])*+\]"
    r"\(" + _WS + r"(?:"
    r"<(?P<angle>(?:[^<>\r\n\\]|\\[^\r\n])*+)>"
    r"|(?P<bare>(?!<)(?:[^\s()\\]|\\\S|\((?:[^\s()\\]|\\\S)*+\))++)"
    r")"
    r"(?:" + _WS1 + r"(?:"
    r'"(?:[^"\\]|\\[\s\S])*+"'
    r"|'(?:[^'\\]|\\[\s\S])*+'"
    r"|\((?:[^()\\]|\\[\s\S])*+\)"
    r"))?" + _WS + r"\)"
)
_ESCAPED: Final = re.compile(r"\\([!-/:-@\[-`{-~])")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*+:")
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]++")


def image_url_spans(text: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each markdown image's URL in ``text``, in order.

    The span is the URL alone: inside the angle brackets of ``<url>``, without
    title or whitespace. Images in fenced code blocks, in inline code spans,
    or whose ``!`` is backslash-escaped are not reported. Pure and linear in
    ``len(text)``.
    """
    for start, end in _prose_ranges(text):
        if text.find("![", start, end) < 0:
            continue
        for m in _IMAGE.finditer(text, start, end):
            if _escaped_at(text, m.start()):
                continue
            group = "angle" if m.start("angle") >= 0 else "bare"
            yield m.start(group), m.end(group)


def _prose_ranges(text: str) -> Iterator[tuple[int, int]]:
    """Ranges of ``text`` outside code, each within a single paragraph."""
    pos = 0
    for block_start, block_end in _fenced_blocks(text):
        yield from _paragraph_prose(text, pos, block_start)
        pos = block_end
    yield from _paragraph_prose(text, pos, len(text))


def _fenced_blocks(text: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each fenced code block, fences included.

    CommonMark's rule: the closing fence uses the opening's character, is at
    least as long, and has nothing but whitespace after it; a block left open
    runs to the end of the text.
    """
    if "```" not in text and "~~~" not in text:
        return
    opened: tuple[str, int, int] | None = None  # fence char, length, start
    for m in _FENCE_LINE.finditer(text):
        fence = m["fence"]
        if opened is None:
            if fence[0] == "`" and "`" in m["rest"]:
                continue  # inline code, not a fence
            opened = (fence[0], len(fence), m.start())
        elif (
            m["marker"] is None
            and fence[0] == opened[0]
            and len(fence) >= opened[1]
            and not m["rest"].strip()
        ):
            yield opened[2], m.end()
            opened = None
    if opened is not None:
        yield opened[2], len(text)


def _paragraph_prose(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    pos = start
    for m in _BLANK_LINE.finditer(text, start, end):
        yield from _outside_code_spans(text, pos, m.start())
        pos = m.end()
    yield from _outside_code_spans(text, pos, end)


def _outside_code_spans(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Split ``text[start:end]`` around its inline code spans.

    A run of N backticks opens a span closed by the next run of exactly N;
    with no such run it is literal. "Next run of the same length" is computed
    for all runs in one backward pass, so this stays linear however many
    unmatched runs there are.
    """
    if start >= end:
        return
    if text.find("`", start, end) < 0:
        yield start, end
        return
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(text, start, end)]
    following: list[int] = [-1] * len(runs)
    last_of_length: dict[int, int] = {}
    for i in range(len(runs) - 1, -1, -1):
        length = runs[i][1] - runs[i][0]
        following[i] = last_of_length.get(length, -1)
        last_of_length[length] = i
    pos = start
    i = 0
    while i < len(runs):
        closer = following[i]
        if closer < 0:
            i += 1
            continue
        yield pos, runs[i][0]
        pos = runs[closer][1]
        i = closer + 1
    yield pos, end


def _escaped_at(text: str, index: int) -> bool:
    """Whether ``text[index]`` follows an odd number of backslashes."""
    k = index
    while k > 0 and text[k - 1] == "\\":
        k -= 1
    return (index - k) % 2 == 1


def local_image_path(url: str) -> str | None:
    """The filesystem path a markdown image URL names, or None if not local.

    Not local: empty, a scheme (``http:``, ``data:``), a host (``//...``), a
    query or fragment (``?``, ``#``, checked before percent-decoding so that
    ``%3F`` is just a character of the name), an ``/api/media/`` URL, or
    percent escapes that do not decode to UTF-8 without NUL. Markdown
    backslash escapes are undone, then percent escapes, then ``~`` expanded.
    The result may still be relative. Pure apart from ``~user`` lookups.
    """
    url = _ESCAPED.sub(r"\1", url)
    if (
        not url
        or url.startswith(("//", "/api/media/"))
        or "?" in url
        or "#" in url
        or _SCHEME.match(url)
    ):
        return None
    try:
        path = unquote(url, errors="strict")
    except UnicodeDecodeError:
        return None
    if not path or "\0" in path:
        return None
    return os.path.expanduser(path)


def safe_filename(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9._-]``, no leading dot, at most 100 chars.

    The extension is kept when the name is shortened, since the media route
    picks the served type from it.
    """
    cleaned = _UNSAFE_NAME.sub("_", name).lstrip(".")
    if len(cleaned) > _MAX_NAME:
        suffix = os.path.splitext(cleaned)[1][:16]
        cleaned = cleaned[: _MAX_NAME - len(suffix)] + suffix
    return cleaned or "file"


# --- linking (blocking) -----------------------------------------------------------


@attrs.frozen
class MediaLinker:
    """Turns files the agent names into signed media URLs.

    ``media_root`` is ``<data_dir>/media``, the root ``signer`` signs under.
    ``workspace`` is the agent's working directory: markdown images may only
    link to files inside it, and ``None`` turns the markdown rewrite off
    (``media`` lists are linked either way: the agent chose to send those).

    Stateless apart from the files it copies, so one instance serves every
    chat, from any thread.
    """

    signer: MediaSigner
    media_root: Path
    workspace: Path | None = None

    @staticmethod
    def needs_media_urls(paths: list[str] | None) -> bool:
        """Whether :meth:`media_urls` has anything to do. Pure; for the loop."""
        return bool(paths)

    def might_rewrite(self, text: str) -> bool:
        """False when :meth:`rewrite_markdown` surely returns ``text`` as is.

        Pure and cheap (one substring search): for the event loop.
        """
        return self.workspace is not None and "![" in text

    def needs_linking(self, message: Message) -> bool:
        """Whether :meth:`link_message` may change ``message``. Pure."""
        return self.needs_media_urls(message.media) or self.might_rewrite(message.text)

    def media_urls(self, paths: list[str]) -> list[MediaUrl]:
        """Signed URLs for a ``message``'s ``media`` paths, in order.

        A regular file under the media root (after resolving symlinks) is
        signed where it is; any other is copied under ``websocket/`` first.
        Missing files, directories and files that cannot be copied are
        skipped. ``name`` is the basename as the agent wrote it. Blocking.
        """
        media_real = _realpath(self.media_root)
        links: dict[Path, str | None] = {}
        urls: list[MediaUrl] = []
        for raw in paths:
            if not isinstance(raw, str) or not raw or "\0" in raw:
                continue
            real = _regular_file(raw)
            if real is None:
                continue
            url = self._link(real, media_real, links)
            if url is not None:
                urls.append(MediaUrl(url=url, name=os.path.basename(raw)))
        return urls

    def rewrite_markdown(self, text: str) -> str:
        """``text`` with local workspace images pointed at signed media URLs.

        Only the URL of each image changes (PROTOCOL 4); everything else,
        code blocks and code spans included, is kept byte for byte. A URL is
        replaced when :func:`local_image_path` accepts it and it resolves
        (relative to the workspace, symlinks followed) to an existing regular
        file inside the workspace with an extension in
        :data:`IMAGE_EXTENSIONS`. Each source file is copied at most once
        per call. Returns ``text`` itself when nothing changed. Blocking.
        """
        if self.workspace is None or not self.might_rewrite(text):
            return text
        workspace = self.workspace
        workspace_real = _realpath(workspace)
        media_real = _realpath(self.media_root)
        by_url: dict[str, str | None] = {}
        links: dict[Path, str | None] = {}
        pieces: list[str] = []
        last = 0
        for start, end in image_url_spans(text):
            raw = text[start:end]
            if raw not in by_url:
                if len(by_url) >= MAX_LINKS_PER_TEXT:
                    break
                real = _workspace_image(workspace, workspace_real, raw)
                by_url[raw] = (
                    None if real is None else self._link(real, media_real, links)
                )
            url = by_url[raw]
            if url is not None:
                pieces += (text[last:start], url)
                last = end
        if not pieces:
            return text
        pieces.append(text[last:])
        return "".join(pieces)

    def link_message(self, message: Message) -> Message:
        """``message`` with its text rewritten and its ``media`` linked.

        New URLs are appended to any ``media_urls`` the agent set itself;
        ``media`` is kept. Returns ``message`` itself when nothing changed.
        Blocking.
        """
        changes: dict[str, object] = {}
        text = self.rewrite_markdown(message.text)
        if text != message.text:
            changes["text"] = text
        if message.media:
            urls = self.media_urls(message.media)
            if urls:
                changes["media_urls"] = [*(message.media_urls or ()), *urls]
        if not changes:
            return message
        return msgspec.structs.replace(message, **changes)

    def _link(
        self, real: Path, media_real: Path | None, links: dict[Path, str | None]
    ) -> str | None:
        """Signed URL for the regular file ``real``, copying it if needed."""
        if real in links:
            return links[real]
        url = None
        if media_real is not None and real.is_relative_to(media_real):
            url = self.signer.url_for(real)
        if url is None:
            try:
                copy = _copy_into(self.media_root / COPY_DIR, real)
            except OSError as exc:
                log.warning("could not copy %s into the media root: %s", real, exc)
            else:
                url = self.signer.url_for(copy)
        links[real] = url
        return url


def _realpath(path: Path | str) -> Path | None:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return None


def _regular_file(path: Path | str) -> Path | None:
    """The resolved path if ``path`` names an existing regular file, else None."""
    real = _realpath(path)
    if real is None:
        return None
    try:
        mode = os.stat(real).st_mode
    except (OSError, ValueError):
        return None
    return real if stat.S_ISREG(mode) else None


def _workspace_image(
    workspace: Path, workspace_real: Path | None, url: str
) -> Path | None:
    """The file a markdown image URL names, if it may be linked at all."""
    if workspace_real is None:
        return None
    path = local_image_path(url)
    if path is None:
        return None
    real = _regular_file(workspace / path)
    if (
        real is None
        or real == workspace_real
        or not real.is_relative_to(workspace_real)
        or real.suffix.lower() not in IMAGE_EXTENSIONS
    ):
        return None
    return real


def _copy_into(directory: Path, source: Path) -> Path:
    """Copy ``source`` to ``directory/<12 hex>-<name>`` atomically; return it.

    The copy is written to a temporary file (mode 0o600), synced, then
    renamed into place: the media route serves files as immutable, so it must
    never see a partial one. ``directory`` is created with mode 0o700.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with open(os.open(source, flags), "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise OSError(f"{source} is not a regular file")
        _make_private_dir(directory)
        target = directory / f"{secrets.token_hex(6)}-{safe_filename(source.name)}"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
        try:
            with open(fd, "wb") as dst:
                os.fchmod(dst.fileno(), 0o600)
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return target


def _make_private_dir(directory: Path) -> None:
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
