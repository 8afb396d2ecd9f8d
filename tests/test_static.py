"""http.static: which file a page path names, its headers, and opening it.

The rule that matters: nothing outside the directory is ever served, however
the path is spelled (``..``, encoded once or twice, backslashes, NUL) and
whatever symlinks sit below the directory. The pure part is checked with
hypothesis over spellings; :func:`open_static` against a real tree holding
every kind of escape.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import hypothesis.strategies as st
import pytest
from hypothesis import assume, given

from trio_channel.http.static import (
    IMMUTABLE,
    NO_CACHE,
    open_static,
    static_candidates,
    static_headers,
    static_parts,
)

INDEX = ("index.html",)


# --- static_parts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("/", INDEX),
        ("", INDEX),
        ("/index.html", INDEX),
        ("/app.js", ("app.js",)),
        ("/assets/index-CrE3EAcQ.js", ("assets", "index-CrE3EAcQ.js")),
        ("/brand/nanobot_mark.svg", ("brand", "nanobot_mark.svg")),
        ("/a%20b.js", ("a b.js",)),
        ("/caf%C3%A9.css", ("café.css",)),
        ("/chat/123", ("chat", "123")),
        ("/a..b", ("a..b",)),
        # Decoded once only: "%2e%2e" is an odd but plain file name.
        ("/%252e%252e/x", ("%2e%2e", "x")),
        ("/" + "/".join(["d"] * 16), ("d",) * 16),
    ],
)
def test_plain_paths_name_their_file(path: str, parts: tuple[str, ...]) -> None:
    assert static_parts(path) == parts


@pytest.mark.parametrize(
    "path",
    [
        "/..",
        "/../etc/passwd",
        "/assets/../../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2E%2E%2Fetc%2Fpasswd",
        "/..%2f..%2fetc",
        "/assets%2F..%2F..%2Fsecret",
        "/.",
        "/.git/config",
        "/assets/.env",
        "/a//b",
        "//etc/passwd",
        "/a%5C..%5Csecret",
        "/a\\b",
        "/a%00.js",
        "/a\x00.js",
        "/a%0a.js",
        "/a%7f",
        "/%ff.js",
        "/%C3",
        "/" + "x" * 256,
        "/" + "/".join(["d"] * 17),
    ],
)
def test_anything_else_names_nothing(path: str) -> None:
    assert static_parts(path) is None


def _inside(parts: tuple[str, ...]) -> bool:
    joined = os.path.normpath(os.path.join("/root", *parts))
    return joined.startswith("/root/") and len(Path(joined).parts) == len(parts) + 2


_SEGMENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "%2e",
        "%2e%2e",
        "%2E%2e",
        "%252e%252e",
        ".%2e",
        "%2f",
        "%2F..",
        "..%2F",
        "%5c",
        "\\..",
        "%00",
        "\x00",
        "a",
        "assets",
        "index.html",
        ".hidden",
        "%2ehidden",
        "%",
        "%zz",
        "ok%20name",
    ]
)


@given(st.lists(st.one_of(_SEGMENTS, st.text(max_size=6)), max_size=6))
def test_no_spelling_climbs_out_or_reaches_a_hidden_name(
    segments: list[str],
) -> None:
    parts = static_parts("/" + "/".join(segments))
    if parts is None:
        return
    assert _inside(parts), parts
    for name in parts:
        assert name and not name.startswith(".")
        assert not set(name) & {"/", "\\", "\x00"}


@given(st.lists(st.one_of(_SEGMENTS, st.text(max_size=6)), min_size=1, max_size=4))
def test_a_plain_name_round_trips_through_percent_encoding(
    segments: list[str],
) -> None:
    """What a browser sends for a file is what we look up, no more."""
    assume(segments != [""])  # that is "/", the app
    parts = static_parts("/" + "/".join(quote(s, safe="") for s in segments))
    assert parts == (tuple(segments) if all(map(plain, segments)) else None)


def plain(name: str) -> bool:
    if not name or name.startswith("."):
        return False
    return not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name)


def test_candidates_are_the_file_then_the_app() -> None:
    assert static_candidates("/") == [INDEX]
    assert static_candidates("/index.html") == [INDEX]
    assert static_candidates("/assets/a.js") == [("assets", "a.js"), INDEX]
    assert static_candidates("/chat/42") == [("chat", "42"), INDEX]
    assert static_candidates("/../secret") == [INDEX]


# --- static_headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "content_type", "cache"),
    [
        (INDEX, "text/html; charset=utf-8", NO_CACHE),
        (("assets", "index-CrE3EAcQ.js"), "text/javascript; charset=utf-8", IMMUTABLE),
        (("assets", "x-1.css"), "text/css; charset=utf-8", IMMUTABLE),
        (("assets", "fonts", "k.woff2"), "font/woff2", IMMUTABLE),
        (("assets", "logo.PNG"), "image/png", IMMUTABLE),
        (("sw.js",), "text/javascript; charset=utf-8", NO_CACHE),
        (("app.js",), "text/javascript; charset=utf-8", NO_CACHE),
        (("manifest.json",), "application/json", NO_CACHE),
        (("brand", "nanobot_mark.svg"), "image/svg+xml", NO_CACHE),
        (("brand", "icon.png"), "image/png", NO_CACHE),
        (("asset-manifest.json.gz",), "application/octet-stream", NO_CACHE),
        (("LICENSE",), "application/octet-stream", NO_CACHE),
        (("assets",), "application/octet-stream", NO_CACHE),
    ],
)
def test_headers(parts: tuple[str, ...], content_type: str, cache: str) -> None:
    assert static_headers(parts) == [
        ("Content-Type", content_type),
        ("X-Content-Type-Options", "nosniff"),
        ("Cache-Control", cache),
    ]
    assert IMMUTABLE == "public, max-age=31536000, immutable"
    assert NO_CACHE == "no-cache"


# --- open_static ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """root/ with files, a subdirectory, and every kind of escape."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        outside = base / "outside"
        outside.mkdir()
        (outside / "secret.txt").write_text("secret")
        root = base / "root"
        (root / "assets" / "deep").mkdir(parents=True)
        (root / "index.html").write_text("index")
        (root / "assets" / "a.js").write_text("a")
        (root / "assets" / "deep" / "b.css").write_text("b")
        (root / ".hidden").write_text("hidden")
        (root / "link-out.txt").symlink_to(outside / "secret.txt")
        (root / "link-in.js").symlink_to(root / "assets" / "a.js")
        (root / "dir-out").symlink_to(outside)
        (root / "dir-in").symlink_to(root / "assets")
        (root / "assets" / "up").symlink_to("..")
        os.mkfifo(root / "fifo")
        yield root


def read(opened: tuple[int, int] | None) -> bytes | None:
    if opened is None:
        return None
    fd, size = opened
    try:
        return os.pread(fd, size + 1, 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("parts", "content"),
    [
        (INDEX, b"index"),
        (("assets", "a.js"), b"a"),
        (("assets", "deep", "b.css"), b"b"),
        (("assets",), None),  # a directory
        (("missing.js",), None),
        (("assets", "missing", "x.js"), None),
        (("index.html", "x"), None),  # a file is no directory
        (("link-out.txt",), None),
        (("link-in.js",), None),  # symlinks are never followed, even inward
        (("dir-out", "secret.txt"), None),
        (("dir-in", "a.js"), None),
        (("assets", "up", "index.html"), None),
        (("fifo",), None),  # and does not hang
        ((), None),
    ],
)
def test_open_static(tree: Path, parts: tuple[str, ...], content: bytes | None) -> None:
    assert read(open_static(tree, parts)) == content


def test_open_static_reports_the_size(tree: Path) -> None:
    opened = open_static(tree, ("assets", "deep", "b.css"))
    assert opened is not None
    assert opened[1] == 1
    os.close(opened[0])


def test_a_missing_root_opens_nothing(tmp_path: Path) -> None:
    assert open_static(tmp_path / "nope", INDEX) is None
    (tmp_path / "file").write_text("x")
    assert open_static(tmp_path / "file", INDEX) is None


def test_the_root_itself_may_be_a_symlink(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "ui").symlink_to(tree)
    assert read(open_static(tmp_path / "ui", INDEX)) == b"index"


def test_no_descriptor_is_left_open(tree: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for parts in [("dir-out", "secret.txt"), ("assets", "deep", "nope"), ("fifo",)]:
        assert open_static(tree, parts) is None
    assert read(open_static(tree, ("assets", "deep", "b.css"))) == b"b"
    assert len(os.listdir("/proc/self/fd")) == before


_TREE_NAMES = st.sampled_from(
    ["secret.txt", "outside", "dir-out", "dir-in", "up", "link-out.txt", "deep", "a.js"]
)


@given(st.lists(st.one_of(_SEGMENTS, _TREE_NAMES), max_size=5))
def test_whatever_the_path_only_files_inside_are_opened(
    tree: Path, segments: list[str]
) -> None:
    real_root = os.path.realpath(tree)
    for parts in static_candidates("/" + "/".join(segments)):
        opened = open_static(tree, parts)
        if opened is None:
            continue
        fd, _ = opened
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        assert where.startswith(real_root + os.sep), where
        assert "outside" not in where
