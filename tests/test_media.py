"""Tests for trio_channel.media.ingress: media checks, storage, signed URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_channel.media import ingress as media_mod
from trio_channel.media.ingress import (
    DecodedMedia,
    MediaRejected,
    check_media,
    discard_media,
    parse_data_url_mime,
    save_media,
)
from trio_channel.media.signing import MediaSigner, MediaUrlError, load_or_create_secret

MIB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
MP4 = b"\x00\x00\x00\x18ftypmp42"


def data_url(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def item(mime: str = "image/png", payload: bytes = PNG) -> dict[str, object]:
    return {"data_url": data_url(mime, payload), "name": "ignored.png"}


def raw(url: str) -> dict[str, object]:
    return {"data_url": url}


PNG_ITEM = item()
VIDEO_ITEM = item("video/mp4", MP4)
SVG_ITEM = item("image/svg+xml", b"<svg/>")


# --- parse_data_url_mime -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "mime"),
    [
        ("data:image/png;base64,AAAA", "image/png"),
        ("data: Image/PNG ;base64,AAAA", "image/png"),
        ("DATA:video/mp4,AAAA", "video/mp4"),
        ("data:image/svg+xml;charset=utf-8;base64,", "image/svg+xml"),
        ("data:", None),
        ("data:image/png;base64", None),  # no comma: no payload
        ("data:;base64,AAAA", None),
        ("data:junk,AAAA", None),
        ("data:image/,AAAA", None),
        ("data:imäge/png,AAAA", None),
        ("http://example.com/a.png", None),
        ("", None),
    ],
)
def test_parse_data_url_mime(url: str, mime: str | None) -> None:
    assert parse_data_url_mime(url) == mime


# --- check_media: the rejection table ----------------------------------------

# Each row builds its media lazily: some rows are megabytes long.
REJECTIONS: list[tuple[str, Callable[[], object], str]] = [
    # step 3: shape
    ("dict", lambda: PNG_ITEM, "malformed"),
    ("string", lambda: "data:image/png;base64,AAAA", "malformed"),
    ("number", lambda: 5, "malformed"),
    # step 4: counts, images before videos, over allowed types only
    ("5 images", lambda: [PNG_ITEM] * 5, "too_many_images"),
    ("5 images + broken", lambda: [42, *[PNG_ITEM] * 5], "too_many_images"),
    ("5 images + svg", lambda: [SVG_ITEM, *[PNG_ITEM] * 5], "too_many_images"),
    (
        "5 images + 2 videos",
        lambda: [VIDEO_ITEM] * 2 + [PNG_ITEM] * 5,
        "too_many_images",
    ),
    ("2 videos", lambda: [VIDEO_ITEM, VIDEO_ITEM], "too_many_videos"),
    ("2 videos + broken", lambda: [{}, VIDEO_ITEM, VIDEO_ITEM], "too_many_videos"),
    ("4 images + svg: svg not counted", lambda: [*[PNG_ITEM] * 4, SVG_ITEM], "mime"),
    (
        "5 mixed-case images",
        lambda: [raw("data:IMAGE/PNG,AAAA")] * 5,
        "too_many_images",
    ),
    # step 5: per item, in order
    ("item not a dict", lambda: [PNG_ITEM, 42], "malformed"),
    ("item is a list", lambda: [[PNG_ITEM]], "malformed"),
    ("no data_url", lambda: [{"name": "a.png"}], "malformed"),
    ("empty data_url", lambda: [raw("")], "malformed"),
    ("data_url not str", lambda: [{"data_url": 5}], "malformed"),
    ("bare data:", lambda: [raw("data:")], "decode"),
    ("data: junk", lambda: [raw("data:junk")], "decode"),
    ("not a data url", lambda: [raw("https://example.com/a.png")], "decode"),
    ("no comma", lambda: [raw("data:image/png;base64")], "decode"),
    ("svg", lambda: [SVG_ITEM], "mime"),
    ("text", lambda: [item("text/plain", b"hi")], "mime"),
    ("empty payload", lambda: [raw("data:image/png;base64,")], "decode"),
    ("blank payload", lambda: [raw("data:image/png;base64,\r\n ")], "decode"),
    ("pads only", lambda: [raw("data:image/png;base64,====")], "decode"),
    ("bad padding", lambda: [raw("data:image/png;base64,QUFBQQ")], "decode"),
    ("1 char over", lambda: [raw("data:image/png;base64,QUFBQ")], "decode"),
    ("non-ascii payload", lambda: [raw("data:image/png;base64,QUFBé")], "decode"),
    ("first failure wins", lambda: [SVG_ITEM, 42], "mime"),
    ("in item order", lambda: [42, SVG_ITEM], "malformed"),
    ("valid then bad", lambda: [PNG_ITEM, raw("data:image/png;base64,")], "decode"),
    ("image 8 MiB + 1", lambda: [item(payload=bytes(8 * MIB + 1))], "size"),
    ("video 20 MiB + 1", lambda: [item("video/webm", bytes(20 * MIB + 1))], "size"),
    (
        "bad pad beats size",
        lambda: [raw("data:image/png," + "A" * 12 * MIB + "AA")],
        "decode",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"),
    [pytest.param(make, reason, id=name) for name, make, reason in REJECTIONS],
)
def test_check_media_rejections(make: Callable[[], object], reason: str) -> None:
    assert check_media(make()) == MediaRejected(reason)  # type: ignore[arg-type]


def test_check_media_none_and_empty() -> None:
    assert check_media(None) == []
    assert check_media([]) == []


def test_check_media_accepts_the_limits_in_order() -> None:
    media = [
        *[item(mime, PNG + bytes([n])) for n, mime in enumerate(media_mod.IMAGE_MIMES)],
        item("video/quicktime", MP4),
    ]
    result = check_media(media)
    assert isinstance(result, list)
    assert [(m.mime, m.extension) for m in result] == [
        ("image/png", ".png"),
        ("image/jpeg", ".jpg"),
        ("image/webp", ".webp"),
        ("image/gif", ".gif"),
        ("video/quicktime", ".mov"),
    ]
    assert [m.data for m in result[:4]] == [PNG + bytes([n]) for n in range(4)]


def test_check_media_exactly_8_mib_image_passes() -> None:
    result = check_media([item(payload=b"\xff" * 8 * MIB)])
    assert isinstance(result, list)
    assert len(result[0].data) == 8 * MIB


def test_check_media_20_mib_video_passes() -> None:
    result = check_media([item("video/mp4", bytes(20 * MIB))])
    assert isinstance(result, list)
    assert result[0] == DecodedMedia("video/mp4", bytes(20 * MIB), ".mp4")


def test_check_media_lenient_base64_with_line_breaks_and_spaces() -> None:
    encoded = base64.encodebytes(PNG * 10).decode()  # MIME style: a line per 76
    url = "data: Image/PNG ;base64," + encoded.replace("\n", "\r\n ")
    result = check_media([{"data_url": url, "name": 7}])
    assert result == [DecodedMedia("image/png", PNG * 10, ".png")]


def test_size_shortcut_counts_alphabet_chars_not_length() -> None:
    # Exactly 8 MiB, but the text is far longer than 8 MiB * 4/3 because of
    # line breaks and spaces: a length-based shortcut would wrongly refuse it.
    encoded = base64.b64encode(bytes(8 * MIB)).decode()
    spaced = "  \n ".join(encoded[i : i + 16] for i in range(0, len(encoded), 16))
    assert len(spaced) > 12 * MIB  # well past 8 MiB * 4/3 plus any slack
    result = check_media([raw("data:image/png;base64," + spaced)])
    assert isinstance(result, list)
    assert result[0].data == bytes(8 * MIB)


def test_size_shortcut_does_not_decode_oversized_payloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []
    real = binascii.a2b_base64

    def spy(data: bytes) -> bytes:
        seen.append(len(data))
        return real(data)

    monkeypatch.setattr(binascii, "a2b_base64", spy)
    assert media_mod._decode_payload("QUFB" * 1000 + "QQ==", 100) == MediaRejected(
        "size"
    )
    assert max(seen) <= 4  # only the last group was looked at


def test_size_shortcut_stands_aside_for_early_padding() -> None:
    # The lenient decoder stops at "QQ==": the rest never counts.
    payload = "QQ==" + "QUFB" * 1000
    assert media_mod._size_without_decoding(payload.encode()) is None
    assert media_mod._decode_payload(payload, 10) == base64.b64decode(payload)


def reference_decode(payload: str, limit: int) -> bytes | MediaRejected:
    """PROTOCOL 3.2's last two checks, the slow and obvious way."""
    try:
        data = base64.b64decode(payload, validate=False)
    except ValueError:
        return MediaRejected("decode")
    if not data:
        return MediaRejected("decode")
    return MediaRejected("size") if len(data) > limit else data


@settings(database=None, max_examples=500)
@given(
    payload=st.text(alphabet="AQgw/+09=\n \t-_.!é", max_size=40),
    limit=st.integers(min_value=0, max_value=32),
)
def test_decode_matches_lenient_b64decode(payload: str, limit: int) -> None:
    assert media_mod._decode_payload(payload, limit) == reference_decode(payload, limit)


@settings(database=None, max_examples=500)
@given(clean=st.text(alphabet="AQgw=", max_size=40).map(str.encode))
def test_size_without_decoding_is_exact_when_given(clean: bytes) -> None:
    size = media_mod._size_without_decoding(clean)
    if size is not None:
        assert size == len(binascii.a2b_base64(clean))


# --- save_media / discard_media -----------------------------------------------

ITEMS = [
    DecodedMedia("image/png", PNG, ".png"),
    DecodedMedia("video/mp4", MP4 * 1000, ".mp4"),
    DecodedMedia("image/gif", b"GIF89a", ".gif"),
]


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def assert_saved(paths: list[str], media_dir: Path) -> None:
    assert len(set(paths)) == len(ITEMS)
    assert stat.S_IMODE(media_dir.stat().st_mode) == 0o700
    for name, saved in zip(paths, ITEMS, strict=True):
        path = Path(name)
        assert path.is_absolute()
        assert path.parent == media_dir.resolve()
        assert re.fullmatch(r"[0-9a-f]{32}", path.stem)
        assert path.suffix == saved.extension
        assert path.read_bytes() == saved.data
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_save_media_writes_private_files_with_random_names(
    tmp_path: Path,
) -> None:
    media_dir = tmp_path / "data" / "media"
    paths = await save_media(ITEMS, media_dir)
    assert_saved(paths, media_dir)
    again = await save_media(ITEMS[:1], media_dir)  # existing dir is fine
    assert again[0] not in paths


async def test_save_media_nothing_to_save(tmp_path: Path) -> None:
    assert await save_media([], tmp_path / "media") == []


async def test_save_media_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = media_mod._write_new_file
    calls = 0

    def fail_on_second(root: Path, saved: DecodedMedia) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")
        return real(root, saved)

    monkeypatch.setattr(media_mod, "_write_new_file", fail_on_second)
    with pytest.raises(OSError, match="No space"):
        await save_media(ITEMS, tmp_path)
    assert calls == 2
    assert listing(tmp_path) == []


async def test_save_media_half_written_file_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class BrokenFile:
        def __init__(self, fd: int, mode: str) -> None:
            self.fd = fd

        def __enter__(self) -> BrokenFile:
            return self

        def __exit__(self, *exc: object) -> None:
            os.close(self.fd)

        def write(self, data: bytes) -> int:
            os.write(self.fd, data[:3])
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(media_mod, "open", BrokenFile, raising=False)
    with pytest.raises(OSError, match="Input/output"):
        await save_media(ITEMS, tmp_path)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("count", [1, 3])
async def test_save_media_cancelled_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    real = media_mod._write_new_file
    with trio.CancelScope() as scope:

        def write_then_cancel(root: Path, saved: DecodedMedia) -> str:
            path = real(root, saved)
            trio.from_thread.run_sync(scope.cancel)
            return path

        monkeypatch.setattr(media_mod, "_write_new_file", write_then_cancel)
        await save_media(ITEMS[:count], tmp_path)
    assert scope.cancelled_caught
    assert listing(tmp_path) == []


async def test_discard_media(tmp_path: Path) -> None:
    paths = await save_media(ITEMS, tmp_path)
    await discard_media([*paths[:2], str(tmp_path / "missing.png")])
    assert listing(tmp_path) == [Path(paths[2]).name]
    await discard_media([])


async def test_discard_media_runs_even_when_cancelled(tmp_path: Path) -> None:
    paths = await save_media(ITEMS, tmp_path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await discard_media(iter(paths))
    assert listing(tmp_path) == []


# --- secret -----------------------------------------------------------------------


def test_secret_persists_across_loads(tmp_path: Path) -> None:
    path = tmp_path / "data" / "media-secret"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert path.read_bytes() == first
    assert listing(path.parent) == ["media-secret"]  # no temp file left
    assert load_or_create_secret(tmp_path / "other") != first


@pytest.mark.parametrize("content", [b"", b"short", bytes(33)])
def test_secret_of_the_wrong_size_is_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "media-secret"
    path.write_bytes(content)
    secret = load_or_create_secret(path)
    assert len(secret) == 32
    assert path.read_bytes() == secret
    assert load_or_create_secret(path) == secret


# --- MediaSigner ----------------------------------------------------------------

SECRET = b"s" * 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(payload: str, secret: bytes = SECRET) -> str:
    """The signature as PROTOCOL 6 defines it, computed independently."""
    return b64url(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:16])


def split(url: str) -> tuple[str, str]:
    prefix = "/api/media/"
    assert url.startswith(prefix)
    sig, payload = url.removeprefix(prefix).split("/")
    return sig, payload


@pytest.fixture
def signer(tmp_path: Path) -> MediaSigner:
    root = tmp_path / "media"
    (root / "sub dir").mkdir(parents=True)
    return MediaSigner(SECRET, root)


def test_signer_round_trip(signer: MediaSigner) -> None:
    path = signer.media_root / "sub dir" / "é b.png"
    path.write_bytes(PNG)
    url = signer.url_for(path)
    assert url is not None
    sig, payload = split(url)
    assert payload == b64url("sub dir/é b.png".encode())
    assert sig == sign(payload)
    assert signer.verify(sig, payload) == path.resolve()


def test_signer_url_for_resolves_dot_dot_and_symlinks(
    signer: MediaSigner, tmp_path: Path
) -> None:
    root = signer.media_root
    inside = signer.url_for(root / "sub dir" / ".." / "a.png")
    assert inside is not None
    assert split(inside)[1] == b64url(b"a.png")
    (tmp_path / "secret.txt").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    assert signer.url_for(root / "link") is None
    assert signer.url_for(root / ".." / "secret.txt") is None
    assert signer.url_for(tmp_path / "secret.txt") is None
    assert signer.url_for(root) is None


def test_signer_url_for_relative_media_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    signer = MediaSigner(SECRET, Path("media"))
    url = signer.url_for(tmp_path / "media" / "x.png")
    assert url is not None
    assert signer.verify(*split(url)) == tmp_path.resolve() / "media" / "x.png"


INVALID_SIGNATURE = MediaUrlError(401, "invalid signature")
INVALID_PAYLOAD = MediaUrlError(400, "invalid payload")
NOT_FOUND = MediaUrlError(404, "not found")


def tampered(sig: str) -> str:
    return ("B" if sig[0] == "A" else "A") + sig[1:]


@pytest.mark.parametrize(
    ("make", "error"),
    [
        pytest.param(lambda p: (tampered(sign(p)), p), INVALID_SIGNATURE, id="sig"),
        pytest.param(lambda p: (sign(p), p + "A"), INVALID_SIGNATURE, id="payload"),
        pytest.param(lambda p: (sign(p, b"k" * 32), p), INVALID_SIGNATURE, id="key"),
        pytest.param(lambda p: ("", p), INVALID_SIGNATURE, id="empty sig"),
        pytest.param(lambda p: (sign(p)[:-1] + "é", p), INVALID_SIGNATURE, id="é sig"),
        pytest.param(lambda p: (sign(p), p + "é"), INVALID_SIGNATURE, id="é payload"),
    ],
)
def test_signer_rejects_bad_signatures(
    signer: MediaSigner,
    make: Callable[[str], tuple[str, str]],
    error: MediaUrlError,
) -> None:
    assert signer.verify(*make(b64url(b"a.png"))) == error


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        pytest.param("", INVALID_PAYLOAD, id="empty"),
        pytest.param("!!!!", INVALID_PAYLOAD, id="not base64url"),
        pytest.param("YS5wbmc=", INVALID_PAYLOAD, id="padded"),
        pytest.param("YS+w", INVALID_PAYLOAD, id="standard alphabet"),
        pytest.param("A", INVALID_PAYLOAD, id="one char"),
        pytest.param(b64url(b"\xff\xfe"), INVALID_PAYLOAD, id="not utf-8"),
        pytest.param(b64url(b"../x"), NOT_FOUND, id="dot dot"),
        pytest.param(b64url(b"sub dir/../../x"), NOT_FOUND, id="nested dot dot"),
        pytest.param(b64url(b"/etc/passwd"), NOT_FOUND, id="absolute"),
        pytest.param(b64url(b"a\x00b"), NOT_FOUND, id="nul"),
        pytest.param(b64url(b"."), NOT_FOUND, id="the root itself"),
        pytest.param(b64url(b"link/x"), NOT_FOUND, id="symlink out"),
    ],
)
def test_signer_rejects_bad_payloads_with_valid_signatures(
    signer: MediaSigner, tmp_path: Path, payload: str, error: MediaUrlError
) -> None:
    (signer.media_root / "link").symlink_to(tmp_path)
    assert signer.verify(sign(payload), payload) == error


def test_signer_verify_does_not_check_existence(signer: MediaSigner) -> None:
    payload = b64url(b"sub dir/not yet.png")
    result = signer.verify(sign(payload), payload)
    assert result == signer.media_root.resolve() / "sub dir" / "not yet.png"


def test_reprs_hide_secrets_and_payloads(tmp_path: Path) -> None:
    assert "hunter2" not in repr(MediaSigner(b"hunter2" * 5, tmp_path))
    assert "bytes>" in repr(DecodedMedia("image/png", bytes(10**6), ".png"))
