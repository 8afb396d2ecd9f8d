"""The client's resume rules against a scripted server on a loopback socket.

The daemon does not yet say ``epoch`` or send ``history_reset``, so a small
trio-websocket server plays PROTOCOL 5 here, frame by frame: a client that
reconnects sends ``since_seq`` and ``epoch``, takes a reset (dropping what it
assembled), drops a repeated ``seq``, and closes with 1000 when done.
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio_websocket

from trio_channel.client import Backoff, open_client
from trio_channel.core.events import Attached, Delta, Error, Message, StreamEnd


class Script:
    def __init__(self) -> None:
        self.connections = 0
        self.attach_frames: list[dict[str, Any]] = []
        self.close_codes: list[int | None] = []
        self.done = trio.Event()

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        self.connections += 1
        n = self.connections
        send = ws.send_message

        async def frame(**fields: Any) -> None:
            await send(json.dumps(fields))

        await frame(event="ready", chat_id=f"default-{n}", client_id="t")
        request_frame = json.loads(await ws.get_message())
        if n == 1:
            assert request_frame["type"] == "new_chat"
            await frame(event="attached", chat_id="c", epoch="e1", last_seq=0)
            await frame(event="delta", chat_id="c", seq=1, text="a", stream_id="s")
            await frame(event="delta", chat_id="c", seq=2, text="b", stream_id="s")
            await frame(event="some_future_event", chat_id="c")  # skipped
            await ws.aclose(1012)  # "service restart"
            return
        self.attach_frames.append(request_frame)
        await frame(event="attached", chat_id="c", epoch="e2", last_seq=1)
        await frame(
            event="error", detail="history_reset", chat_id="c", epoch="e2", first_seq=1
        )
        await frame(event="message", chat_id="c", seq=1, text="kept")
        await frame(event="message", chat_id="c", seq=1, text="kept")  # repeated
        await frame(event="delta", chat_id="c", seq=2, text="x", stream_id="s")
        await frame(event="stream_end", chat_id="c", seq=3, stream_id="s")
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            self.close_codes.append(exc.reason.code if exc.reason else None)
        self.done.set()


async def test_reconnect_resume_reset_and_a_clean_close(nursery: trio.Nursery):
    script = Script()
    server = await nursery.start(
        trio_websocket.serve_websocket, script.handler, "127.0.0.1", 0, None
    )
    url = f"ws://127.0.0.1:{server.port}/"
    seen: list[Any] = []
    with trio.fail_after(10):
        async with open_client(
            url, token="static", backoff=Backoff(first=0.01, cap=0.05)
        ) as client:
            chat = await client.new_chat()
            async for event in chat:
                seen.append(event)
                if isinstance(event, StreamEnd):
                    break
        await script.done.wait()

    # The resume named what the client had: the epoch and the last seq.
    assert script.attach_frames == [
        {"type": "attach", "chat_id": "c", "since_seq": 2, "epoch": "e1"}
    ]
    kinds = [
        (type(e).__name__, getattr(e, "seq", None) or getattr(e, "detail", None))
        for e in seen
    ]
    assert kinds == [
        ("Attached", None),
        ("Delta", 1),
        ("Delta", 2),
        ("Attached", None),
        ("Error", "history_reset"),
        ("Message", 1),  # once, though the server sent it twice
        ("Delta", 2),
        ("StreamEnd", 3),
    ]
    assert isinstance(seen[3], Attached) and seen[3].epoch == "e2"
    assert isinstance(seen[4], Error) and seen[4].epoch == "e2"
    assert isinstance(seen[5], Message) and seen[5].text == "kept"
    # The reset dropped the half stream "ab": only the replay's text is left.
    end = seen[-1]
    assert isinstance(end, StreamEnd) and end.text == "x"
    assert all(not isinstance(e, Delta) or e.text in "abx" for e in seen)
    assert (chat.cursor.epoch, chat.cursor.last_seq) == ("e2", 3)
    assert script.close_codes == [1000]
