"""The client's pure parts: resume cursors, backoff, stream assembly, line flow,
addresses. No sockets, no trio."""

from __future__ import annotations

import random

import pytest

from trio_channel.client import (
    Admit,
    Backoff,
    ChatCursor,
    ClientError,
    ConnectInfo,
    ServerAddress,
    StreamAssembler,
)
from trio_channel.client.screen import LineFlow
from trio_channel.core.events import Attached, Error

# --- resume ------------------------------------------------------------------


def test_a_new_cursor_attaches_without_since_seq() -> None:
    assert ChatCursor("c").attach_frame() == {"type": "attach", "chat_id": "c"}


def test_attached_last_seq_starts_a_plain_attach_there() -> None:
    cursor = ChatCursor("c")
    cursor.on_attached(Attached(chat_id="c", epoch="e1", last_seq=7))
    assert cursor.admit(7) is Admit.DUPLICATE
    assert cursor.admit(8) is Admit.DELIVER
    assert cursor.attach_frame() == {
        "type": "attach",
        "chat_id": "c",
        "since_seq": 8,
        "epoch": "e1",
    }


def test_duplicates_are_dropped_and_gaps_delivered() -> None:
    cursor = ChatCursor("c", last_seq=0)
    assert [cursor.admit(s) for s in (1, 2, 2, 1, 5, 6)] == [
        Admit.DELIVER,
        Admit.DELIVER,
        Admit.DUPLICATE,
        Admit.DUPLICATE,
        Admit.GAP,
        Admit.DELIVER,
    ]
    assert (cursor.last_seq, cursor.missed) == (6, 2)


def test_a_server_without_epoch_still_resumes_by_seq() -> None:
    cursor = ChatCursor("c", last_seq=0)
    cursor.on_attached(Attached(chat_id="c"))
    cursor.admit(1)
    assert cursor.attach_frame() == {"type": "attach", "chat_id": "c", "since_seq": 1}


def test_history_truncated_notes_the_gap_and_accepts_first_seq() -> None:
    cursor = ChatCursor("c", last_seq=3)
    error = Error(detail="history_truncated", chat_id="c", first_seq=10)
    assert cursor.on_error(error) is False
    assert cursor.missed == 6
    assert cursor.admit(10) is Admit.DELIVER


def test_history_reset_takes_the_new_epoch_and_replays_from_first_seq() -> None:
    cursor = ChatCursor("c", epoch="old", last_seq=40)
    reset = Error(detail="history_reset", chat_id="c", epoch="new", first_seq=1)
    assert cursor.on_error(reset) is True
    assert (cursor.epoch, cursor.last_seq) == ("new", 0)
    assert cursor.admit(1) is Admit.DELIVER


def test_a_resume_is_known_after_a_disconnect() -> None:
    cursor = ChatCursor("c", last_seq=0)
    assert cursor.on_attached(Attached(chat_id="c")) is False
    cursor.disconnected()
    assert cursor.on_attached(Attached(chat_id="c")) is True


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(first=0.25, cap=5.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    for n, delay in enumerate(delays):
        ceiling = min(5.0, 0.25 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.25


# --- streams -----------------------------------------------------------------


def test_streams_are_kept_apart_per_chat_and_stream_id() -> None:
    streams = StreamAssembler()
    streams.add("c", "s1", "a")
    streams.add("c", {"n": 2}, "x")
    streams.add("d", "s1", "other chat")
    streams.add("c", "s1", "b")
    streams.add("c", "s1", "r", reasoning=True)
    assert streams.text("c", "s1") == "ab"
    assert streams.finish("c", {"n": 2}) == "x"
    assert streams.finish("c", "s1") == "ab"
    assert streams.finish("c", "s1") == ""  # closed
    assert streams.text("d", "s1") == "other chat"
    assert streams.text("c", "s1", reasoning=True) == "r"


def test_the_server_text_wins_at_stream_end() -> None:
    streams = StreamAssembler()
    streams.add("c", None, "![x](a.png)")
    assert streams.finish("c", None, "![x](/api/media/s/p)") == "![x](/api/media/s/p)"


def test_stream_buffers_are_bounded() -> None:
    streams = StreamAssembler(max_streams=2, max_chars=5)
    streams.add("c", 1, "123")
    streams.add("c", 1, "456789")
    assert streams.text("c", 1) == "12345"
    streams.add("c", 2, "b")
    streams.add("c", 3, "c")  # drops the oldest open stream
    assert streams.text("c", 1) == ""
    assert streams.open_streams("c") == 2


def test_drop_chat_forgets_its_streams_only() -> None:
    streams = StreamAssembler()
    streams.add("c", 1, "x")
    streams.add("d", 1, "y")
    streams.drop_chat("c")
    assert (streams.text("c", 1), streams.text("d", 1)) == ("", "y")


# --- line flow (chat screen) ------------------------------------------------


def test_line_flow_cuts_at_spaces_and_newlines() -> None:
    flow = LineFlow(width=12)
    assert flow.feed("chunk 1 chunk 2 ") == ["chunk 1"]
    assert flow.pending == "chunk 2 "
    assert flow.feed("x\nnext") == ["chunk 2 x"]
    assert flow.finish() == ["next"]
    assert flow.finish() == []


def test_line_flow_cuts_a_word_longer_than_the_width() -> None:
    flow = LineFlow(width=10)
    assert flow.feed("a" * 25) == ["a" * 10, "a" * 10]
    assert flow.pending == "a" * 5


# --- addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "http", "ws_path"),
    [
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765/", None),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/", None),
        ("ws://localhost:8765/ws", "http://localhost:8765/", "/ws"),
        ("wss://example.org/", "https://example.org/", "/"),
        ("http://[::1]:8765", "http://[::1]:8765/", None),
    ],
)
def test_server_address(url: str, http: str, ws_path: str | None) -> None:
    address = ServerAddress.parse(url)
    assert address.http_url == http
    assert address.ws_path == ws_path


@pytest.mark.parametrize("url", ["ftp://x/", "http://", "http://h:99999/"])
def test_bad_server_address(url: str) -> None:
    with pytest.raises(ClientError):
        ServerAddress.parse(url)


def test_connect_url_carries_client_id_and_token_only() -> None:
    info = ConnectInfo("ws://h:1/", token="nbwt_x")
    assert info.url_with("me") == "ws://h:1/?client_id=me&token=nbwt_x"
    assert "token" not in ConnectInfo("ws://h:1/").url_with("me")
    assert "nbwt_x" not in repr(info)
