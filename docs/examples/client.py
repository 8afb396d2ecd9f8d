"""A small client without the library: tokens, chats, a second connection,
a stream, resume. (``trio_channel.client`` does all of this for you; see
docs/client.md. This script shows the frames.)

Start a daemon with the token-issue route on and a secret, the secret in the
environment rather than on the command line (where ``ps`` shows it):

    export TRIO_CHANNEL_TOKEN_ISSUE_SECRET=s3cret
    python -m trio_channel serve --port 0 --token-issue-path /auth/token \
        --data-dir "$(mktemp -d)"

then, in a shell with the same variable set, point this script at the URL it
logs (``listening on ws://...``):

    python docs/examples/client.py --url ws://127.0.0.1:PORT/

Needs the ``websockets`` library (``python -m pip install websockets``). It uses
the synchronous client; nothing here depends on trio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
import urllib.request
from typing import Any

from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

Event = dict[str, Any]


def issue_token(ws_url: str, token_path: str, secret: str) -> str:
    """GET the token-issue route (same host and port as the WebSocket)."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    url = urllib.parse.urlunsplit((scheme, parts.netloc, token_path, "", ""))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
    return str(body["token"])  # "nbwt_...", single use, valid body["expires_in"] s


def ws_connect(ws_url: str, client_id: str, token: str) -> ClientConnection:
    query = urllib.parse.urlencode({"client_id": client_id, "token": token})
    return connect(f"{ws_url}?{query}")


def send(ws: ClientConnection, **envelope: Any) -> None:
    """Send a typed envelope: a JSON object with a string ``type``."""
    ws.send(json.dumps(envelope))


def recv(ws: ClientConnection, timeout: float = 10.0) -> Event:
    event: Event = json.loads(ws.recv(timeout=timeout))
    return event


def until(ws: ClientConnection, event: str, **fields: Any) -> list[Event]:
    """Read events up to and including the first ``event`` with ``fields``."""
    seen = []
    while True:
        frame = recv(ws)
        seen.append(frame)
        if frame["event"] == "error":
            print(f"  soft error: {frame}")
        wanted = all(frame.get(k) == v for k, v in fields.items())
        if frame["event"] == event and wanted:
            return seen


def turn(ws: ClientConnection, chat_id: str) -> list[Event]:
    """One echo-agent turn ends with goal_status idle on its chat."""
    return until(ws, "goal_status", chat_id=chat_id, status="idle")


def assemble(events: list[Event]) -> dict[tuple[str, str], str]:
    """Join delta text per (chat_id, stream_id), as a chat UI would."""
    streams: dict[tuple[str, str], list[str]] = {}
    finished: dict[tuple[str, str], str] = {}
    for e in events:
        key = (e.get("chat_id", ""), json.dumps(e.get("stream_id")))
        if e["event"] == "delta":
            streams.setdefault(key, []).append(e["text"])
        elif e["event"] == "stream_end":
            parts = streams.pop(key, [])
            # stream_end carries "text" only when the server rewrote the stream.
            finished[key] = e.get("text", "".join(parts))
    return finished


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/", help="WebSocket URL")
    parser.add_argument("--token-path", default="/auth/token", help="issue route")
    args = parser.parse_args()
    url = args.url
    secret = os.environ.get("TRIO_CHANNEL_TOKEN_ISSUE_SECRET", "")
    if not secret:
        parser.error("set TRIO_CHANNEL_TOKEN_ISSUE_SECRET to the daemon's secret")

    # 1. A token, then connection A. The first frame is always "ready".
    token_a = issue_token(url, args.token_path, secret)
    with ws_connect(url, "docs-a", token_a) as a:
        ready = recv(a)
        default_chat = ready["chat_id"]
        print(f"A ready: client_id={ready['client_id']} default chat={default_chat}")

        # 2. Plain text is a legacy frame: it goes to the default chat.
        a.send("hello")
        for e in turn(a, default_chat):
            print(f"  A <- {e['event']}: {e.get('text', e.get('status', ''))}")

        # 3. A new chat: "attached" with its id, then "session_updated".
        send(a, type="new_chat")
        chat_id = until(a, "attached")[-1]["chat_id"]
        until(a, "session_updated", chat_id=chat_id)
        print(f"A opened chat {chat_id}")

        # 4. Connection B (its own token) attaches to the same chat.
        token_b = issue_token(url, args.token_path, secret)
        with ws_connect(url, "docs-b", token_b) as b:
            recv(b)  # ready (B's own default chat)
            send(b, type="attach", chat_id=chat_id)
            until(b, "attached", chat_id=chat_id)
            print("B attached")

            # 5. A asks for a 10-delta stream; both connections receive it.
            send(a, type="message", chat_id=chat_id, content="stream:10")
            seen_a, seen_b = turn(a, chat_id), turn(b, chat_id)
            for name, seen in (("A", seen_a), ("B", seen_b)):
                deltas = sum(e["event"] == "delta" for e in seen)
                for (_, stream_id), text in assemble(seen).items():
                    print(f"  {name}: {deltas} deltas of stream {stream_id}: {text!r}")
            last_seq = max(e["seq"] for e in seen_b if "seq" in e)

        # 6. B is gone; the chat goes on without it.
        send(a, type="message", chat_id=chat_id, content="later")
        turn(a, chat_id)

    # 7. B comes back and resumes after the last seq it saw: no gap, no repeat.
    token_b = issue_token(url, args.token_path, secret)
    with ws_connect(url, "docs-b", token_b) as b:
        recv(b)
        send(b, type="attach", chat_id=chat_id, since_seq=last_seq)
        until(b, "attached", chat_id=chat_id)
        missed = until(b, "turn_end", chat_id=chat_id)
        print(f"B resumed after seq {last_seq}:")
        for e in missed:
            print(f"  B <- seq {e['seq']} {e['event']}: {e.get('text', '')}")

    # 8. Refused tokens: an unknown one, and one that was already used.
    for label, bad in (("unknown", "nbwt_not-a-real-token"), ("reused", token_a)):
        try:
            ws_connect(url, "docs-c", bad).close()
        except InvalidStatus as exc:
            status = exc.response.status_code
            print(f"{label} token refused: HTTP {status} {bytes(exc.response.body)!r}")
        else:
            print(f"{label} token was accepted?!")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
