"""The transport baseline: a bare trio-websocket server, written the naive way.

This is the yardstick the benchmark compares ``trio_channel`` against, so it is
kept small and plain on purpose: ``trio_websocket.serve_websocket`` on
loopback (trio-websocket negotiates no extension, so no permessage-deflate),
the standard library's ``json``, and one task per connection that answers
inline. It speaks just enough of PROTOCOL.md to run the same scenarios:

- on connect: ``{"event":"ready","chat_id":<uuid4>,"client_id":...}``, and the
  connection is subscribed to that chat;
- ``{"type":"attach","chat_id":X}``: subscribe, answer ``attached``;
- a text frame (legacy content on the default chat, or a typed ``message``
  with ``chat_id``/``content``): the same frames the built-in echo agent
  produces, in the same order — ``goal_status`` running, then either
  ``message`` (echo) or, for ``stream:N``, N ``delta`` + ``stream_end``;
  then ``turn_end`` and ``goal_status`` idle. The wire traffic per turn is
  therefore the same frames as trio_channel's; only trio_channel's persisted
  events also carry a ``seq`` field (about ten bytes more per frame).

Every event goes to every subscriber of its chat by awaiting
``send_message`` on each subscriber, one after the other — what the
reference server and a typical trio-websocket application do.

Run: ``python benchmarks/bare_server.py --port 0``; it logs
``listening on ws://127.0.0.1:PORT/`` on stderr (like ``trio-channel serve``)
and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import trio
from _limits import raise_nofile_limit  # sibling module: run as a script
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

_STREAM_RE = re.compile(r"stream:(\d{1,6})")
MAX_STREAM_DELTAS = 10_000

_dumps = json.JSONEncoder(separators=(",", ":")).encode

#: chat_id -> subscribers, in subscription order (dict as an ordered set).
chats: dict[str, dict[WebSocketConnection, None]] = {}


async def publish(chat_id: str, event: dict[str, object]) -> None:
    """Encode once, then ``send_message`` to each subscriber in turn."""
    text = _dumps(event)
    for ws in list(chats.get(chat_id, ())):
        with contextlib.suppress(ConnectionClosed):
            await ws.send_message(text)


async def answer(chat_id: str, content: str) -> None:
    """What the built-in echo agent sends for one message (same frames)."""
    started = time.monotonic()
    await publish(
        chat_id,
        {
            "event": "goal_status",
            "chat_id": chat_id,
            "status": "running",
            "started_at": time.time(),
        },
    )
    stripped = content.strip()
    stream = _STREAM_RE.fullmatch(stripped)
    if stream and 1 <= int(stream.group(1)) <= MAX_STREAM_DELTAS:
        stream_id = uuid.uuid4().hex
        for i in range(1, int(stream.group(1)) + 1):
            await publish(
                chat_id,
                {
                    "event": "delta",
                    "chat_id": chat_id,
                    "text": f"chunk {i} ",
                    "stream_id": stream_id,
                },
            )
        await publish(
            chat_id, {"event": "stream_end", "chat_id": chat_id, "stream_id": stream_id}
        )
    else:
        await publish(
            chat_id, {"event": "message", "chat_id": chat_id, "text": content}
        )
    latency_ms = int((time.monotonic() - started) * 1000)
    await publish(
        chat_id, {"event": "turn_end", "chat_id": chat_id, "latency_ms": latency_ms}
    )
    await publish(
        chat_id, {"event": "goal_status", "chat_id": chat_id, "status": "idle"}
    )


def parse(text: str, default_chat: str) -> tuple[str, str, str] | None:
    """Return (kind, chat_id, content) for a frame, or None to ignore it."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            return ("message", default_chat, stripped)
        if isinstance(obj, dict):
            kind = obj.get("type")
            if kind == "attach" and isinstance(obj.get("chat_id"), str):
                return ("attach", obj["chat_id"], "")
            if kind == "message" and isinstance(obj.get("content"), str):
                return (
                    "message",
                    str(obj.get("chat_id", default_chat)),
                    obj["content"],
                )
            content = obj.get("content")
            if kind is None and isinstance(content, str) and content.strip():
                return ("message", default_chat, content)
        return None
    return ("message", default_chat, stripped)


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    query = parse_qs(urlsplit(request.path).query)
    client_id = (query.get("client_id") or [""])[0].strip()[:128]
    client_id = client_id or f"anon-{uuid.uuid4().hex[:12]}"
    chat_id = str(uuid.uuid4())
    subscribed: set[str] = set()
    try:
        await ws.send_message(
            _dumps({"event": "ready", "chat_id": chat_id, "client_id": client_id})
        )
        chats.setdefault(chat_id, {})[ws] = None
        subscribed.add(chat_id)
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                try:
                    message = message.decode()
                except UnicodeDecodeError:
                    continue
            parsed = parse(message, chat_id)
            if parsed is None:
                continue
            kind, target, content = parsed
            chats.setdefault(target, {})[ws] = None
            subscribed.add(target)
            if kind == "attach":
                await ws.send_message(_dumps({"event": "attached", "chat_id": target}))
            else:
                await answer(target, content)
    except ConnectionClosed:
        pass
    finally:
        for chat in subscribed:
            subs = chats.get(chat)
            if subs is not None:
                subs.pop(ws, None)
                if not subs:
                    del chats[chat]


async def main(host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, host, port, None)
            shown = f"[{host}]" if ":" in host else host
            print(
                f"listening on ws://{shown}:{server.port}/", file=sys.stderr, flush=True
            )
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    raise_nofile_limit()
    trio.run(main, args.host, args.port)
