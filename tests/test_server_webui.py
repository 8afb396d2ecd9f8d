"""What nanobot's web UI needs of the socket, and who may open one.

``webui_request`` (``session.delete``, ``sessions.list``, anything else 404
at once), ``message_accepted`` for a ``turn_id``, ``user_message`` to the
chat's other tabs; the Host and Origin checks that keep DNS-rebinding and
cross-site pages out (PROTOCOL 1, 3.2, 4, 6). In memory, on MockClock.
"""

from __future__ import annotations

import pytest
import trio

from trio_channel import Message
from trio_channel.core.session import Peer

from .memory_server import Client, memory_server, read_head


async def _ready(client: Client) -> str:
    frame = await client.recv()
    assert frame["event"] == "ready"
    return str(frame["chat_id"])


async def test_webui_requests_are_answered_at_once(autojump_clock):
    async with memory_server() as server:
        client = await server.ws()
        chat_id = await _ready(client)
        await client.send({"type": "message", "chat_id": chat_id, "content": "hi"})
        await server.agent.inbound.receive()
        await client.send(
            {"type": "webui_request", "request_id": "r1", "action": "sessions.list"}
        )
        listed = await client.recv()
        assert (listed["event"], listed["request_id"], listed["ok"]) == (
            "webui_response",
            "r1",
            True,
        )
        (row,) = listed["result"]["sessions"]
        assert (row["key"], row["title"]) == (f"websocket:{chat_id}", "hi")
        start = trio.current_time()
        await client.send(
            {
                "type": "webui_request",
                "request_id": "r2",
                "action": "settings.get",
                "payload": {},
            }
        )
        assert await client.recv() == {
            "event": "webui_response",
            "request_id": "r2",
            "ok": False,
            "error": {"status": 404, "message": "unknown action: 'settings.get'"},
        }
        assert trio.current_time() == start  # no 20-second wait
        for payload, deleted in [
            ({"key": f"websocket:{chat_id}"}, True),
            ({"key": f"websocket:{chat_id}"}, False),
        ]:
            await client.send(
                {
                    "type": "webui_request",
                    "request_id": "r3",
                    "action": "session.delete",
                    "payload": payload,
                }
            )
            assert await client.recv() == {
                "event": "webui_response",
                "request_id": "r3",
                "ok": True,
                "result": {"deleted": deleted},
            }
        assert await server.channel.store.chat(chat_id) is None
        await client.send(
            {
                "type": "webui_request",
                "request_id": "r4",
                "action": "session.delete",
                "payload": {"key": "../etc"},
            }
        )
        reply = await client.recv()
        assert (reply["ok"], reply["error"]["status"]) == (False, 400)
        await client.send({"type": "webui_request", "request_id": "bad id!"})
        assert await client.recv() == {
            "event": "error",
            "detail": "invalid webui request_id",
        }


async def test_message_accepted_and_user_message_to_the_other_tabs(autojump_clock):
    async with memory_server() as server:
        sender, other, later = [await server.ws() for _ in range(3)]
        chat_id = await _ready(sender)
        await _ready(other)
        await _ready(later)
        await other.send({"type": "attach", "chat_id": chat_id})
        assert (await other.recv())["event"] == "attached"
        turn = {"type": "message", "chat_id": chat_id, "webui": True, "turn_id": "t-1"}
        await sender.send({**turn, "content": "first"})
        assert await sender.recv() == {
            "event": "message_accepted",
            "chat_id": chat_id,
            "turn_id": "t-1",
            "starts_turn": True,
        }
        assert await other.recv() == {
            "event": "user_message",
            "chat_id": chat_id,
            "text": "first",
            "starts_turn": True,
            "turn_id": "t-1",
        }
        assert (await server.agent.inbound.receive()).turn_id == "t-1"
        # A second message while the first waits: it queues behind it.
        await sender.send({**turn, "content": "second", "turn_id": "t-2"})
        accepted = await sender.recv()
        assert (accepted["turn_id"], accepted["starts_turn"]) == ("t-2", False)
        # Without webui: true (or a string turn_id) nothing is acknowledged.
        await sender.send({"type": "message", "chat_id": chat_id, "content": "plain"})
        await server.agent.outbound.send(Message(chat_id=chat_id, text="answer"))
        assert (await sender.recv())["text"] == "answer"  # no message_accepted first
        # The user's messages are in the history, with their turn ids.
        stored = await server.channel.store.user_messages(chat_id)
        assert [(m.content, m.turn_id) for m in stored] == [
            ("first", "t-1"),
            ("second", "t-2"),
            ("plain", None),
        ]
        # A connection that is not subscribed to the chat saw none of it.
        with trio.move_on_after(5) as quiet:
            await later.recv()
        assert quiet.cancelled_caught


def _upgrade(host: str, origin: str | None) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("config", "host", "origin", "status"),
    [
        # No Origin: a CLI or script; a loopback Host.
        ({}, "127.0.0.1:8765", None, 101),
        ({}, "localhost:8765", "http://localhost:8765", 101),
        ({}, "localhost", "http://127.0.0.1:5173", 101),  # a dev server's page
        ({}, "[::1]:8765", "http://[::1]:9", 101),
        # A cross-site page, or a DNS-rebinding one.
        ({}, "127.0.0.1:8765", "https://evil.example", 403),
        ({}, "evil.example:8765", "http://evil.example:8765", 403),
        ({}, "evil.example:8765", None, 403),  # rebinding, Host alone
        ({"allowed_hosts": ("chat.lan",)}, "chat.lan:8765", None, 101),
        (
            {"allowed_origins": ("https://app.example",)},
            "127.0.0.1:8765",
            "https://app.example",
            101,
        ),
        # With a secret: the page the daemon served itself (its own Host).
        (
            {"token": "s"},
            "chat.example.com",
            "https://chat.example.com",
            101,
        ),
        (
            {"token": "s"},
            "chat.example.com:8443",
            "https://chat.example.com:8443",
            101,
        ),
        ({"token": "s"}, "chat.example.com", "https://other.example.com", 403),
        ({"token": "s"}, "anything.example", None, 101),
    ],
)
async def test_host_and_origin(autojump_clock, config, host, origin, status):
    async with memory_server(**config) as server:
        target = "/?token=s" if "token" in config else "/"
        stream = await server.raw()
        await stream.send_all(
            _upgrade(host, origin).replace(b"GET / ", f"GET {target} ".encode())
        )
        head = await read_head(stream)
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), head


async def test_a_unix_socket_peer_has_no_host_check(autojump_clock):
    async with memory_server(peer=Peer("")) as server:
        stream = await server.raw()
        await stream.send_all(_upgrade("evil.example", None))
        assert (await read_head(stream)).startswith(b"HTTP/1.1 101 ")


async def test_an_upgrade_on_another_path_is_404_never_the_page(autojump_clock):
    async with memory_server(path="/ws") as server:
        stream = await server.raw()
        await stream.send_all(_upgrade("localhost", None))
        head = await read_head(stream)
        assert head.startswith(b"HTTP/1.1 404 ")
