"""Tests for trio_channel.media.rewrite: media paths and markdown images to URLs."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from trio_channel.core.events import MediaUrl, Message
from trio_channel.media import rewrite as rewrite_mod
from trio_channel.media.rewrite import (
    MediaLinker,
    image_url_spans,
    local_image_path,
    safe_filename,
)
from trio_channel.media.signing import MediaSigner

SECRET = b"s" * 32
PNG = b"\x89PNG\r\n\x1a\nfake png"
URL_RE = r"/api/media/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)"

#: Files created in the workspace (relative path -> bytes).
WORKSPACE_FILES = {
    "a.png": PNG,
    "a_b.png": b"underscore",
    "dir/b.jpg": b"jpeg bytes",
    "with space.png": b"spaced",
    "\u00fc.png": b"umlaut",
    "100%.png": b"percent",
    "UPPER.PNG": b"upper",
    "pic.svg": b"<svg/>",
    "clip.mp4": b"mp4",
    "notes.txt": b"text",
    "paren(1).png": b"paren",
}


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "media"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    for name, data in WORKSPACE_FILES.items():
        path = ws / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "outside.png").write_bytes(b"outside")
    (ws / "link.png").symlink_to(tmp_path / "outside.png")
    (ws / "inner-link.png").symlink_to(ws / "a.png")
    (ws / "sub.png").mkdir()
    return ws


@pytest.fixture
def signer(media_root: Path) -> MediaSigner:
    return MediaSigner(secret=SECRET, media_root=media_root)


@pytest.fixture
def linker(signer: MediaSigner, media_root: Path, workspace: Path) -> MediaLinker:
    return MediaLinker(signer=signer, media_root=media_root, workspace=workspace)


def resolve_url(signer: MediaSigner, url: str) -> Path:
    m = re.fullmatch(URL_RE, url)
    assert m, url
    target = signer.verify(m[1], m[2])
    assert isinstance(target, Path), target
    return target


def copies(media_root: Path) -> list[Path]:
    directory = media_root / "websocket"
    return sorted(directory.iterdir()) if directory.exists() else []


# --- markdown rewrite: table ---------------------------------------------------

# (template, url as written, source file in the workspace). "{}" in the
# template stands for the URL, before and after the rewrite.
REWRITTEN = [
    ("![a]({})", "a.png", "a.png"),
    ("text ![a]({}) more", "./dir/b.jpg", "dir/b.jpg"),
    ("![a]({})", "dir/../a.png", "a.png"),
    ("![a](<{}>)", "with space.png", "with space.png"),
    ("![a]({})", "with%20space.png", "with space.png"),
    ("![a]({})", "%C3%BC.png", "\u00fc.png"),
    ("![a]({})", "100%25.png", "100%.png"),
    ("![a]({})", "a\\_b.png", "a_b.png"),
    ("![a]({})", "paren(1).png", "paren(1).png"),
    ("![]({})", "UPPER.PNG", "UPPER.PNG"),
    ("![a]({})", "pic.svg", "pic.svg"),
    ("![a]({})", "clip.mp4", "clip.mp4"),
    ("![a]({})", "inner-link.png", "a.png"),
    ("![a]({})", "~/a.png", "a.png"),  # HOME is the workspace
    ('![a]({} "A title")', "a.png", "a.png"),
    ("![a]({} 'A title')", "a.png", "a.png"),
    ("![a]({} (A title))", "a.png", "a.png"),
    ("![a](\n  {}\n  )", "a.png", "a.png"),
    ("![a \\] b]({})", "a.png", "a.png"),
    ("``not code`` ![a]({}) `x`", "a.png", "a.png"),
    ("```\ncode\n```\n![a]({})", "a.png", "a.png"),
    ("> ![a]({})", "a.png", "a.png"),
    ("\\\\![a]({})", "a.png", "a.png"),  # escaped backslash, then an image
]

UNTOUCHED = [
    "![a](http://example.com/a.png)",
    "![a](https:a.png)",
    "![a](data:image/png;base64,AAAA)",
    "![a](//host/a.png)",
    "![a](a.png?x=1)",
    "![a](a.png#frag)",
    "![a](#frag)",
    "![a](/api/media/abc/def.png)",
    "![a](../outside.png)",
    "![a](link.png)",  # symlink out of the workspace
    "![a](notes.txt)",
    "![a](missing.png)",
    "![a](sub.png)",  # a directory
    "![a](.)",
    "![a](%ZZ.png)",
    "![a](%FF.png)",
    "![a](%00a.png)",
    "![a](with space.png)",  # bare URLs end at whitespace
    "![a](a.png",
    "![a]a.png)",
    "![a](<a.png>x)",
    "[a](a.png)",  # a link, not an image
    "\\![a](a.png)",
    "![a\n\nb](a.png)",  # a paragraph break in between
    "`![a](a.png)`",
    "`` ![a](a.png) ``",
    "x `a ![a](a.png) b` y",
    "```\n![a](a.png)\n```",
    "```python\n![a](a.png)\n```\n",
    "~~~\n![a](a.png)\n~~~",
    "````\n```\n![a](a.png)\n````",
    "```\r\n![a](a.png)\r\n```\r\n",
    "- ```\n  ![a](a.png)\n  ```",
    "> ```\n> ![a](a.png)\n> ```",
    "```\n![a](a.png)",  # an unclosed fence runs to the end
    "no images at all",
    "",
]


@pytest.fixture
def home_is_workspace(monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    monkeypatch.setenv("HOME", str(workspace))


@pytest.mark.parametrize(("template", "url", "source"), REWRITTEN)
@pytest.mark.usefixtures("home_is_workspace")
def test_rewritten(
    linker: MediaLinker,
    signer: MediaSigner,
    media_root: Path,
    workspace: Path,
    template: str,
    url: str,
    source: str,
) -> None:
    text = template.format(url)
    out = linker.rewrite_markdown(text)
    before, after = template.split("{}")
    m = re.fullmatch(re.escape(before) + f"({URL_RE})" + re.escape(after), out)
    assert m, out
    copy = resolve_url(signer, m[1])
    assert copy.parent == media_root / "websocket"
    assert re.fullmatch(r"[0-9a-f]{12}-[A-Za-z0-9._-]+", copy.name)
    assert copy.read_bytes() == (workspace / source).read_bytes()


@pytest.mark.parametrize("text", UNTOUCHED)
@pytest.mark.usefixtures("home_is_workspace")
def test_untouched(linker: MediaLinker, media_root: Path, text: str) -> None:
    assert linker.rewrite_markdown(text) == text
    assert copies(media_root) == []


def test_absolute_paths(
    linker: MediaLinker, signer: MediaSigner, tmp_path: Path
) -> None:
    inside = f"![a]({tmp_path}/ws/a.png)"
    copy = resolve_url(signer, linker.rewrite_markdown(inside)[5:-1])
    assert copy.read_bytes() == PNG
    outside = f"![a]({tmp_path}/outside.png)"
    assert linker.rewrite_markdown(outside) == outside


def test_tilde_outside_workspace(
    linker: MediaLinker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert linker.rewrite_markdown("![a](~/outside.png)") == "![a](~/outside.png)"
    # ~/ws/a.png is inside the workspace again.
    assert linker.rewrite_markdown("![a](~/ws/a.png)").startswith("![a](/api/media/")


def test_only_urls_change_in_mixed_text(linker: MediaLinker) -> None:
    text = (
        "Intro ![one](a.png 'T') and `![code](a.png)`.\n"
        "```md\n![fenced](a.png)\n```\n"
        "![two](<dir/b.jpg>) ![web](http://x/a.png) ![one again](a.png)\n"
    )
    out = linker.rewrite_markdown(text)
    urls = re.findall(URL_RE, out)
    assert len(urls) == 3
    assert re.sub(URL_RE, "U", out) == (
        "Intro ![one](U 'T') and `![code](a.png)`.\n"
        "```md\n![fenced](a.png)\n```\n"
        "![two](<U>) ![web](http://x/a.png) ![one again](U)\n"
    )


def test_one_copy_per_source_per_call(linker: MediaLinker, media_root: Path) -> None:
    out = linker.rewrite_markdown("![a](a.png) ![b](./a.png) ![c](inner-link.png)")
    assert len(set(re.findall(URL_RE, out))) == 1
    assert len(copies(media_root)) == 1


def test_files_in_media_root_are_signed_in_place(
    signer: MediaSigner, media_root: Path
) -> None:
    # A workspace that holds the media root (e.g. the data dir itself).
    image = media_root / "generated" / "x.png"
    image.parent.mkdir()
    image.write_bytes(PNG)
    linker = MediaLinker(
        signer=signer, media_root=media_root, workspace=media_root.parent
    )
    out = linker.rewrite_markdown("![x](media/generated/x.png)")
    assert resolve_url(signer, out[5:-1]) == image.resolve()
    assert copies(media_root) == []


def test_no_workspace_never_rewrites(
    signer: MediaSigner, media_root: Path, workspace: Path
) -> None:
    linker = MediaLinker(signer=signer, media_root=media_root)
    text = f"![a](a.png) ![b]({workspace}/a.png)"
    assert not linker.might_rewrite(text)
    assert linker.rewrite_markdown(text) is text
    assert copies(media_root) == []


def test_predicates(linker: MediaLinker, signer: MediaSigner, media_root: Path) -> None:
    assert linker.might_rewrite("see ![a](a.png)")
    assert not linker.might_rewrite("see [a](a.png) !")
    assert not MediaLinker.needs_media_urls(None)
    assert not MediaLinker.needs_media_urls([])
    assert MediaLinker.needs_media_urls(["/x.png"])
    assert not linker.needs_linking(Message(chat_id="c", text="hi"))
    assert linker.needs_linking(Message(chat_id="c", text="![a](a.png)"))
    assert linker.needs_linking(Message(chat_id="c", text="hi", media=["/x"]))


def test_unchanged_text_is_returned_as_is(linker: MediaLinker) -> None:
    text = "![a](missing.png)"
    assert linker.rewrite_markdown(text) is text


def test_copy_failure_leaves_text(
    signer: MediaSigner, tmp_path: Path, workspace: Path
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_bytes(b"")
    linker = MediaLinker(signer=signer, media_root=blocked, workspace=workspace)
    assert linker.rewrite_markdown("![a](a.png)") == "![a](a.png)"
    assert linker.media_urls([str(workspace / "a.png")]) == []


def test_link_cap(
    linker: MediaLinker, monkeypatch: pytest.MonkeyPatch, media_root: Path
) -> None:
    monkeypatch.setattr(rewrite_mod, "MAX_LINKS_PER_TEXT", 2)
    out = linker.rewrite_markdown("![](a.png) ![](x.png) ![](a.png) ![](dir/b.jpg)")
    assert re.sub(URL_RE, "U", out) == "![](U) ![](x.png) ![](U) ![](dir/b.jpg)"


# --- media_urls ------------------------------------------------------------------


def test_media_urls(
    linker: MediaLinker, signer: MediaSigner, media_root: Path, workspace: Path
) -> None:
    inside = media_root / "abc.png"
    inside.write_bytes(PNG)
    paths = [
        str(inside),
        str(workspace / "with space.png"),
        str(workspace / "missing.png"),
        str(workspace / "dir"),
        "",
        str(workspace / "notes.txt"),  # any type: the agent chose to send it
    ]
    urls = linker.media_urls(paths)
    assert [u.name for u in urls] == ["abc.png", "with space.png", "notes.txt"]
    assert resolve_url(signer, urls[0].url) == inside.resolve()
    spaced = resolve_url(signer, urls[1].url)
    assert spaced.parent == media_root / "websocket"
    assert spaced.name.endswith("-with_space.png")
    assert spaced.read_bytes() == b"spaced"
    assert resolve_url(signer, urls[2].url).read_bytes() == b"text"


def test_media_urls_symlink_out_of_media_root_is_copied(
    linker: MediaLinker, signer: MediaSigner, media_root: Path, tmp_path: Path
) -> None:
    (media_root / "link.png").symlink_to(tmp_path / "outside.png")
    [url] = linker.media_urls([str(media_root / "link.png")])
    copy = resolve_url(signer, url.url)
    assert copy.parent == media_root / "websocket"
    assert copy.read_bytes() == b"outside"
    assert url.name == "link.png"


def test_media_urls_one_copy_per_source(
    linker: MediaLinker, media_root: Path, workspace: Path
) -> None:
    urls = linker.media_urls([str(workspace / "a.png")] * 3)
    assert len({u.url for u in urls}) == 1
    assert len(copies(media_root)) == 1


def test_copy_modes(linker: MediaLinker, media_root: Path, workspace: Path) -> None:
    old = os.umask(0o022)
    try:
        linker.media_urls([str(workspace / "a.png")])
    finally:
        os.umask(old)
    directory = media_root / "websocket"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    [copy] = copies(media_root)  # no temporary file is left behind
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_link_message(
    linker: MediaLinker, signer: MediaSigner, workspace: Path
) -> None:
    plain = Message(chat_id="c", text="hello")
    assert linker.link_message(plain) is plain
    msg = Message(
        chat_id="c",
        text="![a](a.png)",
        media=[str(workspace / "dir/b.jpg")],
        media_urls=[MediaUrl(url="/api/media/x/y", name="given")],
    )
    out = linker.link_message(msg)
    assert out.text.startswith("![a](/api/media/")
    assert out.media == msg.media
    assert out.media_urls is not None
    assert [u.name for u in out.media_urls] == ["given", "b.jpg"]
    assert resolve_url(signer, out.media_urls[1].url).read_bytes() == b"jpeg bytes"


# --- pure helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("a.png", "a.png"),
        ("/abs/a.png", "/abs/a.png"),
        ("a%20b.png", "a b.png"),
        ("a%3Fb.png", "a?b.png"),  # an encoded "?" is part of the name
        ("a\\(1\\).png", "a(1).png"),
        ("a\\b.png", "a\\b.png"),  # not an escape: the backslash stays
        ("", None),
        ("#x", None),
        ("//h/a.png", None),
        ("/api/media/s/p", None),
        ("mailto:x@y", None),
        ("C:/a.png", None),
        ("a.png?x", None),
        ("a.png#x", None),
        ("%FF.png", None),
        ("%00.png", None),
    ],
)
def test_local_image_path(url: str, path: str | None) -> None:
    assert local_image_path(url) == path


def test_local_image_path_expands_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert local_image_path("~/x.png") == "/home/someone/x.png"
    assert local_image_path("%7E/x.png") == "/home/someone/x.png"


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("photo.png", "photo.png"),
        ("my photo (1).PNG", "my_photo_1_.PNG"),
        ("..hidden.png", "hidden.png"),
        ("\u00fc.png", "_.png"),
        ("...", "file"),
        ("", "file"),
        ("a" * 300 + ".webm", "a" * 95 + ".webm"),
    ],
)
def test_safe_filename(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


def test_image_url_spans() -> None:
    text = "![a](x.png) `![b](y.png)` ![c](<z w.png> 'q')"
    assert [text[a:b] for a, b in image_url_spans(text)] == ["x.png", "z w.png"]


# --- adversarial input ---------------------------------------------------------------


def test_patterns_never_backtrack_into_repeats() -> None:
    """Every unbounded repeat in the module's patterns is possessive.

    Together with the stop characters described at ``_IMAGE``, this is what
    keeps the scan linear; a plain ``*`` or ``+`` slipping in would fail here.
    """
    parser: Any = re._parser  # type: ignore[attr-defined]
    constants: Any = re._constants  # type: ignore[attr-defined]
    greedy = {constants.MAX_REPEAT, constants.MIN_REPEAT}

    def walk(node: Any) -> None:
        if isinstance(node, tuple | list):
            if len(node) == 2 and isinstance(node[0], int) and node[0] in greedy:
                _min, high, _body = node[1]
                assert high != constants.MAXREPEAT, pattern.pattern
            for child in node:
                walk(child)
        elif hasattr(node, "data"):  # a SubPattern
            walk(node.data)

    patterns = [v for v in vars(rewrite_mod).values() if isinstance(v, re.Pattern)]
    assert rewrite_mod._IMAGE in patterns
    for pattern in patterns:
        walk(parser.parse(pattern.pattern, pattern.flags))


MB = 1_000_000
ADVERSARIAL = [
    "![" * (MB // 2),
    "![a](" * (MB // 5),
    "![](<" * (MB // 5),
    "![](" + "(" * MB,
    "![](a(" * (MB // 6),
    "![](a " + " " * MB,
    "![" + "\\[" * (MB // 2),
    "![](a.png " + '"' * MB,
    '![](a.png "' * (MB // 11),
    "![](a.png '" * (MB // 11),
    "![](a.png (" * (MB // 11),
    "![a]" + "(" * MB,
    "[" * (MB // 2) + "](" * (MB // 4),
    "".join("`" * (i % 97 + 1) + "x" for i in range(20_000)),
    "```\n" * (MB // 4),
    "~~~ ![a](a.png)\n" * (MB // 16),
    "\n \n" * (MB // 3),
    "\\" * (MB + 1) + "![a](a.png)",  # an escaped "!"
    "![a](missing.png)" * (MB // 17),
    "".join(f"![](m{i}.png)" for i in range(70_000)),
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_input_is_fast(linker: MediaLinker, text: str) -> None:
    begin = time.perf_counter()
    out = linker.rewrite_markdown(text)
    assert time.perf_counter() - begin < 5  # linear: milliseconds in practice
    assert out == text
