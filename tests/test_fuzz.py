"""Property tests: no client input crashes the server or breaks its contract.

Each Hypothesis example runs a whole server over memory streams (the
``memory_server`` harness) in its own ``trio.run`` under a ``MockClock``, so
keepalives and head timeouts pass in mock seconds. The test plays both the
client and the agent.

A crash is anything logged at ERROR by ``trio_channel`` (the server logs and
survives a failed connection task) or a close code the protocol does not
allow for the input.

The mock clock must not race ahead while the server waits on a worker
thread (media checks, the store's commits, file reads): trio counts that
wait as idle, so ``autojump_threshold=0`` can leap thousands of mock seconds
during one thread call and fire a guard deadline on a healthy server. So the
clock jumps only after a few real milliseconds of idleness, and never more
than ``PACE_S`` mock seconds at a time (:func:`run_mock`); a real hang still
reaches ``GUARD_S`` in a few hundred jumps.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import (
    HealthCheck,
    currently_in_test_context,
    event,
    example,
    given,
    settings,
)
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto import events as wsevents
from wsproto.events import Request

from trio_channel.core.session import Peer

from .memory_server import LOOPBACK_PEER, MemoryServer, memory_server

# A failing oversized request head is still too long to print usefully.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

#: Workspace scopes are localhost-only: fuzz both kinds of peer.
REMOTE_PEER = Peer("203.0.113.7", 50000)
#: Small enough to make an oversized message cheap, large enough to carry
#: nesting far deeper than any JSON decoder recurses.
MAX_MESSAGE_BYTES = 200_000
#: Real seconds of idleness before the mock clock jumps (see the module doc).
AUTOJUMP_S = 0.005
#: The longest single jump of the mock clock, in mock seconds.
PACE_S = 10
#: Keepalive in mock seconds: the longest allowed, so pings stay rare.
PING_S = 300
#: Mock seconds. A healthy example needs at most a few hundred (a raw
#: upgrade that never answers pings: 600); a hung one fails here.
GUARD_S = 3600
MARKER = "fuzz-end"

#: Examples per fuzzer: 50 in the suite's budget; set
#: ``TRIO_CHANNEL_FUZZ_EXAMPLES`` (e.g. 5000) for a deeper run.
FUZZ_EXAMPLES = int(os.environ.get("TRIO_CHANNEL_FUZZ_EXAMPLES", "50"))

SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

#: PROTOCOL 3.3 (and 5 for ``history_truncated`` and ``history_reset``).
ERROR_DETAILS = {
    "invalid chat_id",
    "missing content",
    "image_rejected",
    "workspace_scope_rejected",
    "rate_limited",
    "history_truncated",
    "history_reset",
    "invalid since_seq",
    "invalid webui request_id",
    "store_unavailable",
}
IMAGE_REASONS = {
    "malformed",
    "too_many_images",
    "too_many_videos",
    "decode",
    "mime",
    "size",
}
#: What the server may send on its own while no agent event is published.
SERVER_EVENTS = {
    "ready",
    "attached",
    "session_updated",
    "error",
    "goal_state",
    "goal_status",
    "webui_response",
    "message_accepted",
}
#: PROTOCOL 1 and 6, plus 426: the answer to an upgrade with an unsupported
#: ``Sec-WebSocket-Version``, as RFC 6455 4.4 asks (``http.py``, wsproto).
HTTP_STATUSES = {101, 200, 400, 401, 403, 404, 405, 426, 429, 431, 503}
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")


def note(label: str) -> None:
    """Count an outcome in ``--hypothesis-show-statistics`` (no-op outside)."""
    if currently_in_test_context():
        event(label[:40])


def run_mock(fn: Callable[[], Awaitable[None]]) -> None:
    """``trio.run(fn)`` under a MockClock that jumps at most ``PACE_S`` at once."""

    async def paced() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pace)
            await fn()
            nursery.cancel_scope.cancel()

    async def pace() -> None:
        for _ in range(2 * GUARD_S // PACE_S):
            await trio.sleep(PACE_S)

    trio.run(paced, clock=trio.testing.MockClock(autojump_threshold=AUTOJUMP_S))


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            leaves = ", ".join(
                f"{type(e).__name__}: {e}" for e in _leaves(record.exc_info[1])
            )
            text += f" ({leaves})"[:400]
        self.records.append(text)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@contextmanager
def no_errors_logged() -> Iterator[None]:
    """Fail if ``trio_channel`` logs an ERROR (a connection task crashed)."""
    handler = _ErrorLog()
    logger = logging.getLogger("trio_channel")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert handler.records == [], handler.records


# --- strategies: client frames ----------------------------------------------

#: Text with lone surrogates (json.dumps writes them as ``\\ud800`` escapes,
#: which PROTOCOL 3 turns into U+FFFD before anything stores or logs them).
surrogate_text = st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    | st.characters(codec="utf-8"),
    max_size=20,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=10**40)  # past int64
    | st.integers(min_value=-(10**40), max_value=-1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | surrogate_text
)
json_values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=12,
)
good_chat_ids = st.from_regex(r"[A-Za-z0-9_:-]{1,64}", fullmatch=True)
chat_ids = (
    good_chat_ids
    | st.text(max_size=70)
    | st.sampled_from(["", " c1", "c1\n", "x" * 65, "c/1", "c\x00"])
    | json_values
)
types = (
    st.sampled_from(
        ["message", "new_chat", "attach", "set_workspace_scope", "webui_request"]
    )
    | st.sampled_from(["Message", " message", "ping", "", "__proto__"])
    | st.text(max_size=12)
    | json_values
)
MIMES = [
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "image/svg+xml",
    "text/plain",
    " IMAGE/PNG ",
    "",
]
data_urls = st.builds(
    lambda mime, payload, junk, sep: f"data:{mime}{sep}{payload}{junk}",
    mime=st.sampled_from(MIMES) | st.text(max_size=15),
    payload=st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    junk=st.sampled_from(["", "=", "\n", " ", "!!", "====", "a"]),
    sep=st.sampled_from([";base64,", ",", ";base64", ";charset=x;base64,"]),
) | st.text(max_size=30)
media_items = (
    st.fixed_dictionaries({"data_url": data_urls}, optional={"name": json_values})
    | json_values
)
media = st.none() | st.lists(media_items, max_size=7) | json_values
scopes = (
    st.none()
    | st.just({})
    | st.dictionaries(st.text(max_size=5), json_values, max_size=3)
    | json_values
)
apps = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(max_size=70) | json_values,
            "display_name": json_values,
            "logo_url": st.text(max_size=520),
            "transport": json_values,
            "configured": json_values,
        },
    )
    | json_values,
    max_size=10,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "type": types,
        "chat_id": chat_ids,
        "content": st.text(max_size=40) | st.sampled_from(["", "  \n"]) | json_values,
        "text": st.text(max_size=20) | json_values,
        "message": st.text(max_size=20) | json_values,
        "media": media,
        "webui": json_values,
        "cli_apps": apps | json_values,
        "mcp_presets": apps | json_values,
        "workspace_scope": scopes,
        "image_generation": st.fixed_dictionaries(
            {"enabled": json_values}, optional={"aspect_ratio": json_values}
        )
        | json_values,
        "since_seq": json_values,
        "epoch": json_values,
        "turn_id": json_values,
        "request_id": json_values
        | st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
        "action": st.sampled_from(["session.delete", "sessions.list", "x"])
        | json_values,
        "payload": json_values,
    },
)


def _envelope_text(env: dict[str, Any], extra: dict[str, Any], pad: str) -> str:
    return pad + json.dumps({**extra, **env}) + pad


#: Mostly well-formed ``message`` envelopes, so the later checks of PROTOCOL
#: 3.2 (media, metadata, scope) are reached, not only the first two.
message_envelopes = st.fixed_dictionaries(
    {
        "type": st.just("message"),
        "chat_id": good_chat_ids,
        "content": st.text(max_size=40),
    },
    optional={
        "media": st.lists(
            st.fixed_dictionaries({"data_url": data_urls}), min_size=1, max_size=6
        ),
        "webui": st.booleans(),
        "cli_apps": apps,
        "mcp_presets": apps,
        "workspace_scope": scopes,
        "image_generation": st.fixed_dictionaries(
            {"enabled": st.booleans()}, optional={"aspect_ratio": json_values}
        ),
    },
)
envelope_frames = st.builds(
    _envelope_text,
    envelopes | message_envelopes,
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    st.sampled_from(["", " ", "\n\t"]),
)


DEEP_KINDS = ("lists", "objects", "unbalanced", "content")
DEEP_KINDS += ("message", "scope", "new_chat", "junk")


@attrs.frozen
class Deep:
    """A deeply nested frame, built when sent (so failures print short)."""

    kind: str
    depth: int
    binary: bool = False

    def build(self) -> str | bytes:
        depth = self.depth
        lists = "[" * depth + "]" * depth
        objects = '{"a":' * depth + "1" + "}" * depth
        text = {
            "lists": lists,
            "objects": objects,
            "unbalanced": "{" * depth,
            "content": '{"content":' + lists + ',"text":"t"}',
            "message": '{"type":"message","chat_id":"c1","content":"x","media":'
            + lists
            + "}",
            "scope": '{"type":"set_workspace_scope","chat_id":"c1",'
            '"workspace_scope":' + objects + "}",
            "new_chat": '{"type":"new_chat","workspace_scope":{"a":' + lists + "}}",
            "junk": '{"type":"attach","chat_id":"c1","x":' + objects + "}",
        }[self.kind]
        return text.encode() if self.binary else text


@attrs.frozen
class Oversized:
    """A message just past ``MAX_MESSAGE_BYTES``, built when sent."""

    kind: str
    extra: int

    def build(self) -> str | bytes:
        if self.kind == "ascii":
            return "x" * (MAX_MESSAGE_BYTES + self.extra)
        if self.kind == "binary":
            return b"\x00" * (MAX_MESSAGE_BYTES + self.extra)
        # Fewer characters than the limit, more UTF-8 bytes: our own check.
        return "é" * (MAX_MESSAGE_BYTES // 2 + self.extra)


Frame = str | bytes | Deep | Oversized


def build(frame: Frame) -> str | bytes:
    return frame if isinstance(frame, str | bytes) else frame.build()


def as_binary(frame: Frame) -> Frame:
    if isinstance(frame, str):
        return frame.encode()
    if isinstance(frame, Deep):
        return attrs.evolve(frame, binary=True)
    return frame


deep_frames = st.builds(Deep, st.sampled_from(DEEP_KINDS), st.integers(1, 30_000))
text_frames: st.SearchStrategy[Frame] = (
    st.text(max_size=200)
    | envelope_frames
    | deep_frames
    | st.sampled_from(["{", "{}", "[]", '{"type":null}', "null", "1e999", "{" * 3])
)
frames = text_frames | st.binary(max_size=200) | text_frames.map(as_binary)
oversized = st.builds(
    Oversized, st.sampled_from(["ascii", "binary", "two-byte"]), st.integers(1, 64)
)


def wire_size(frame: str | bytes) -> int:
    return len(frame) if isinstance(frame, bytes) else len(frame.encode())


# --- the frame property --------------------------------------------------------


def check_server_frame(message: str | bytes) -> dict[str, Any]:
    assert isinstance(message, str), f"binary frame from the server: {message!r}"
    data = json.loads(message)
    assert isinstance(data, dict), data
    event = data.get("event")
    assert event in SERVER_EVENTS, data
    if event == "error":
        detail = data.get("detail")
        assert isinstance(detail, str), data
        assert detail in ERROR_DETAILS or detail.startswith("unknown type: "), data
        if detail == "image_rejected":
            assert data.get("reason") in IMAGE_REASONS, data
        if detail == "workspace_scope_rejected":
            assert isinstance(data.get("reason"), str), data
    return data


async def read_into(
    conn: trio_websocket.WebSocketConnection,
    out: trio.MemorySendChannel[str | bytes | int],
) -> None:
    """Forward every message, then the close code, so pings are always answered."""
    try:
        while True:
            await out.send(await conn.get_message())
    except trio_websocket.ConnectionClosed as closed:
        await out.send(closed.reason.code if closed.reason else -1)


async def agent_receives(server: MemoryServer, content: str) -> bool:
    """Drain what the agent got until ``content`` arrives (False if it never does)."""
    with trio.move_on_after(GUARD_S):
        while True:
            message = await server.agent.inbound.receive()
            if message.content == content:
                return True
            note("agent got a message" + (" with media" if message.media else ""))
    return False


async def recv_json(conn: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(GUARD_S):
        return check_server_frame(await conn.get_message())


async def fuzz_one_connection(specs: list[Frame], *, remote: bool = False) -> None:
    fuzz = [build(spec) for spec in specs]
    # rate_limit=0: unlimited (TokenBucket), so the volume never trips it.
    # The real store: what a client sends must be storable (surrogates,
    # huge numbers, deep nesting), never a crash of the store writer.
    async with memory_server(
        peer=REMOTE_PEER if remote else LOOPBACK_PEER,
        session_store="sqlite",
        rate_limit=0,
        max_message_bytes=MAX_MESSAGE_BYTES,
        ping_interval_s=PING_S,
        ping_timeout_s=PING_S,
    ) as server:
        client = await server.ws()
        send, received = trio.open_memory_channel[str | bytes | int](math.inf)
        server.nursery.start_soon(read_into, client.conn, send)

        async def next_frame() -> str | bytes | int:
            with trio.fail_after(GUARD_S):
                return await received.receive()

        first = await next_frame()
        assert not isinstance(first, int), f"closed before ready: {first}"
        assert check_server_frame(first)["event"] == "ready"

        too_big = next((f for f in fuzz if wire_size(f) > MAX_MESSAGE_BYTES), None)
        delivered = False
        try:
            for frame in fuzz:
                await client.conn.send_message(frame)
                if frame is too_big:
                    break
            if too_big is None:
                await client.conn.send_message("ping-after-fuzz")
                delivered = await agent_receives(server, "ping-after-fuzz")
                await client.send({"type": MARKER})
        except trio_websocket.ConnectionClosed:
            pass  # the loop below reports the close code
        seen: list[dict[str, Any]] = []
        while True:
            message = await next_frame()
            if isinstance(message, int):
                # Only an oversized message may close the connection.
                assert too_big is not None, f"closed with {message} after {seen}"
                assert message == 1009, seen
                note("closed 1009")
                break
            data = check_server_frame(message)
            note(f"reply: {data['event']} {data.get('detail', '')}")
            seen.append(data)
            if too_big is None and data.get("detail") == f"unknown type: {MARKER!r}":
                assert delivered, "the agent never got ping-after-fuzz"
                break
        if too_big is not None:
            # The server itself is unharmed.
            again = await server.ws()
            assert (await recv_json(again.conn))["event"] == "ready"
            await again.send("ping-after-fuzz")
            assert await agent_receives(server, "ping-after-fuzz")


@SETTINGS
@given(
    fuzz=st.lists(frames, max_size=8),
    last=st.none() | st.none() | oversized,
    remote=st.booleans(),
)
def test_fuzzed_frames_never_break_the_connection(
    fuzz: list[Frame], last: Oversized | None, remote: bool
) -> None:
    if last is not None:
        fuzz = [*fuzz, last]
    with no_errors_logged():
        run_mock(lambda: fuzz_one_connection(fuzz, remote=remote))


def test_an_oversized_message_during_a_write_still_closes_with_1009() -> None:
    """The shrunk, deterministic form of a flaky failure of the property above.

    A message past ``max_message_bytes`` in UTF-8 bytes (but not in
    characters, so our own check in ``connection._reader`` catches it, not
    trio-websocket's) arrives while the writer is inside ``send_framed``
    with a reply. PROTOCOL 2 asks for close code 1009; the connection must
    not be dropped without a close frame (1006).
    """
    limit = 1024

    async def main() -> None:
        async with memory_server(max_message_bytes=limit) as server:
            # Unbuffered: the reply's write is still in flight when the big
            # message is read (with buffered streams the same race is hit
            # now and then, after a media check in a worker thread).
            stream = await server.raw(trio.testing.lockstep_stream_pair)
            client = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(client.send(Request(host="localhost", target="/")))
            seen: list[wsevents.Event] = []
            while not any(isinstance(e, wsevents.TextMessage) for e in seen):
                client.receive_data(await stream.receive_some())
                seen += client.events()
            await stream.send_all(client.send(wsevents.TextMessage('{"type":"x"}')))
            big = "é" * (limit // 2 + 1)
            await stream.send_all(client.send(wsevents.TextMessage(big)))
            seen = []
            with trio.fail_after(GUARD_S):
                while data := await stream.receive_some():
                    client.receive_data(data)
                    seen += client.events()
            client.receive_data(None)  # EOF: wsproto reports 1006 if no close came
            seen += client.events()
            closes = [e for e in seen if isinstance(e, wsevents.CloseConnection)]
            assert closes[0].code == 1009, seen

    run_mock(main)


# --- strategies: HTTP request heads --------------------------------------------

methods = st.sampled_from(
    ["GET", "POST", "HEAD", "DELETE", "PUT", "OPTIONS", "CONNECT", "get", "G T"]
) | st.text(max_size=8)
targets = (
    st.sampled_from(
        [
            "/",
            "/healthz",
            "/metrics",
            "/api",
            "/api/sessions",
            "/auth/token",
            "/?client_id=a&token=b",
            "/?client_id=%ff%00&token=%e9",
            "*",
            "http://x/",
            "//",
            "/%00",
            "",
            "/\x7f",
        ]
    )
    | st.text(max_size=40)
    | st.builds(
        lambda path, query: f"{path}?{query}",
        st.sampled_from(["/", "/auth/token", "/api/x"]),
        st.text(max_size=30),
    )
)
versions = st.sampled_from(
    ["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/2.0", "HTTP/0.9", "http/1.1", ""]
)
header_names = st.sampled_from(
    [
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Authorization",
        "X-Nanobot-Auth",
        "Content-Length",
        "Transfer-Encoding",
        "X-Forwarded-Proto",
        "Expect",
    ]
) | st.text(max_size=12)
header_values = st.sampled_from(
    [
        "websocket",
        "Upgrade",
        "keep-alive, Upgrade",
        "13",
        "dGhlIHNhbXBsZSBub25jZQ==",
        "Bearer sec",
        "Bearer nope",
        "sec",
        "chunked",
        "0",
        "5",
        "-1",
        "100-continue",
    ]
) | st.text(max_size=30)


def _head(
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, str]],
    eol: str,
    end: str,
    body: bytes,
) -> bytes:
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in headers]
    return (eol.join(lines) + eol + end).encode("utf-8") + body


structured_heads = st.builds(
    _head,
    methods,
    targets,
    versions,
    st.lists(st.tuples(header_names, header_values), max_size=8),
    st.sampled_from(["\r\n", "\n"]),
    st.sampled_from(["\r\n", "\n", ""]),
    st.binary(max_size=32),
)
UPGRADE_HEADERS = [
    ("Host", "localhost"),
    ("Upgrade", "websocket"),
    ("Connection", "keep-alive, Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
]


def _upgrade_headers(
    order: list[int], drop: int | None, values: list[str | None]
) -> list[tuple[str, str]]:
    """The upgrade headers shuffled, one maybe dropped, some values replaced."""
    headers = []
    for i in order:
        name, value = UPGRADE_HEADERS[i]
        if i != drop:
            headers.append((name, value if values[i] is None else values[i]))
    return headers


#: Nearly valid upgrades: headers shuffled, at most one missing, some values
#: fuzzed, maybe cut short, maybe followed by garbage where frames go.
upgrade_heads = st.builds(
    _head,
    st.just("GET"),
    st.sampled_from(["/", "/?client_id=x", "/?token=nbwt_x", "/x", "/?client_id="]),
    st.just("HTTP/1.1"),
    st.builds(
        _upgrade_headers,
        st.permutations(range(len(UPGRADE_HEADERS))),
        st.none() | st.integers(0, len(UPGRADE_HEADERS) - 1),
        st.lists(
            st.none() | st.none() | header_values,
            min_size=len(UPGRADE_HEADERS),
            max_size=len(UPGRADE_HEADERS),
        ),
    ),
    st.just("\r\n"),
    st.sampled_from(["\r\n", "\r\n", ""]),
    st.just(b"") | st.binary(max_size=32),
)
oversized_heads = st.builds(
    lambda size, terminated: (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * size
        + (b"\r\n\r\n" if terminated else b"")
    ),
    st.integers(16_000, 40_000),
    st.booleans(),
)
#: Well-formed requests to the routes, so answers past 400 are reached.
plausible_heads = st.builds(
    _head,
    st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
    targets,
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    st.builds(
        lambda extra: [("Host", "localhost"), *extra],
        st.lists(st.tuples(header_names, header_values), max_size=4),
    ),
    st.just("\r\n"),
    st.just("\r\n"),
    st.just(b""),
)
heads = (
    st.binary(max_size=300)
    | structured_heads
    | plausible_heads
    | upgrade_heads
    | oversized_heads
)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


async def fuzz_one_head(chunks: list[bytes]) -> None:
    # One connection slot: a request that keeps it after its answer and close
    # turns the next client away with 503.
    async with memory_server(
        token_issue_path="/auth/token",
        token_issue_secret="sec",
        max_connections=1,
        ping_interval_s=PING_S,
        ping_timeout_s=PING_S,
    ) as server:
        stream = await server.raw()
        try:
            for chunk in chunks:
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            pass  # the server already answered and closed
        answer = b""
        with trio.fail_after(GUARD_S):
            while data := await stream.receive_some():
                answer += data
        await stream.aclose()
        if answer:
            match = STATUS_LINE.match(answer)
            assert match is not None, answer[:200]
            assert int(match.group(1)) in HTTP_STATUSES, answer[:200]
            note(f"status {int(match.group(1))}")
        else:
            note("closed without an answer")
        await trio.testing.wait_all_tasks_blocked()
        assert server.channel.open_connections == 0, (
            "the request was answered and its stream closed, but it still holds"
            " a connection slot"
        )
        client = await server.ws("/?client_id=after-fuzz")
        ready = await recv_json(client.conn)
        assert (ready["event"], ready["client_id"]) == ("ready", "after-fuzz")


#: An upgrade that wsproto refuses (no Sec-WebSocket-Key). Found by this
#: property: answered 400 and closed at once, it kept its connection slot
#: until ``handshake_timeout_s`` (fixed since by ``upgrade_request_bytes``).
REFUSED_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)

#: A transfer coding h11 does not know: its hint is 501, which the front sends
#: as is (``HTTP/1.1 501`` with the body ``Bad Request``), outside PROTOCOL's
#: statuses and ``http.BadRequest``'s "400 or 431" (found by this property).
UNKNOWN_CODING = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"

#: An upgrade whose ``Host`` is not valid IDNA (``xn--``, or any non-ASCII
#: byte): wsproto decodes it with ``.decode("idna")`` and the UnicodeError
#: escapes trio-websocket's reader, so the task crashes (logged) and the
#: client gets no answer at all (found by this property).
IDNA_HOST_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: xn--\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


@SETTINGS
@given(head=heads, chunk_size=st.sampled_from([1, 7, 512, 1 << 20]))
@example(head=REFUSED_UPGRADE, chunk_size=1 << 20)
@example(head=UNKNOWN_CODING, chunk_size=1 << 20)
@example(head=IDNA_HOST_UPGRADE, chunk_size=1 << 20)
def test_fuzzed_request_heads_never_break_the_front(
    head: bytes, chunk_size: int
) -> None:
    if chunk_size < 100 and len(head) > 1000:
        chunk_size = 4096  # byte-at-a-time only on small heads: keep it fast
    with no_errors_logged():
        run_mock(lambda: fuzz_one_head(chunked(head, chunk_size)))
