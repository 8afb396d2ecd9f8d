"""A second transport baseline: a bare ``websockets`` (asyncio) server.

The stretch goal trio_channel is measured against: what a plain application
on the ``websockets`` library's asyncio server (the library nanobot's own
channel is built on) gets from the same machine. It is kept small and plain
on purpose, the twin of ``bare_server.py`` (the trio-websocket baseline):
``websockets.asyncio.server.serve`` on loopback with ``compression=None``
(no permessage-deflate, whatever the client offers), the standard library's
``json``, and one handler per connection that answers inline. The same
frames and attach/fan-out behaviour as ``bare_server.py``:

- on connect: ``{"event":"ready","chat_id":<uuid4>,"client_id":...}``, and the
  connection is subscribed to that chat;
- ``{"type":"attach","chat_id":X}``: subscribe, answer ``attached``;
- a text frame (legacy content on the default chat, or a typed ``message``
  with ``chat_id``/``content``): ``goal_status`` running, then either
  ``message`` (echo) or, for ``stream:N``, N ``delta`` + ``stream_end``;
  then ``turn_end`` and ``goal_status`` idle.

Every event goes to every subscriber of its chat by awaiting ``send`` on each
subscriber, one after the other. Keepalive pings are the library's default
(every 20 s), as in nanobot's channel.

Run: ``python benchmarks/bare_websockets_server.py --port 0``; it prints
``listening on ws://127.0.0.1:PORT/`` on stderr and stops on SIGTERM or
SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from _limits import raise_nofile_limit  # sibling module: run as a script
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_STREAM_RE = re.compile(r"stream:(\d{1,6})")
MAX_STREAM_DELTAS = 10_000

_dumps = json.JSONEncoder(separators=(",", ":")).encode

#: chat_id -> subscribers, in subscription order (dict as an ordered set).
chats: dict[str, dict[ServerConnection, None]] = {}


async def publish(chat_id: str, event: dict[str, object]) -> None:
    """Encode once, then ``send`` to each subscriber in turn."""
    text = _dumps(event)
    for ws in list(chats.get(chat_id, ())):
        with contextlib.suppress(ConnectionClosed):
            await ws.send(text)


async def answer(chat_id: str, content: str) -> None:
    """What the echo agent sends for one message (the same frames)."""
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
    stream = _STREAM_RE.fullmatch(content.strip())
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


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else "/"
    query = parse_qs(urlsplit(path).query)
    client_id = (query.get("client_id") or [""])[0].strip()[:128]
    client_id = client_id or f"anon-{uuid.uuid4().hex[:12]}"
    chat_id = str(uuid.uuid4())
    subscribed: set[str] = set()
    try:
        await ws.send(
            _dumps({"event": "ready", "chat_id": chat_id, "client_id": client_id})
        )
        chats.setdefault(chat_id, {})[ws] = None
        subscribed.add(chat_id)
        async for message in ws:
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
                await ws.send(_dumps({"event": "attached", "chat_id": target}))
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handler, host, port, compression=None) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"listening on ws://{shown}:{bound}/", file=sys.stderr, flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(main(args.host, args.port))
