"""20,000 fuzzed frames and an agent that sends garbage: the daemon keeps
serving, logs no traceback, and stays healthy (issue: "honest log").

The frames are drawn from a seeded generator, so a failure replays; they
cover what broke the daemon before: lone surrogates, numbers past any float
or int64, nesting deeper than any decoder recurses, every envelope field
with every kind of JSON value.
"""

from __future__ import annotations

import json
import random
from typing import Any

from ._client import connect, http_get, ready, recv, send, turn
from .conftest import Daemon, DaemonFactory

FRAMES = 20_000
TYPES = ["message", "new_chat", "attach", "set_workspace_scope", "webui_request"]
FIELDS = [
    "type",
    "chat_id",
    "content",
    "text",
    "message",
    "media",
    "webui",
    "cli_apps",
    "mcp_presets",
    "workspace_scope",
    "image_generation",
    "since_seq",
    "epoch",
    "turn_id",
    "request_id",
    "action",
    "payload",
]


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, 2**63, 10**40, -(10**40)])
    if kind == 3:
        return rng.choice([1.5, -0.0, 1e308])
    if kind == 4:
        return "".join(chr(rng.randrange(0xD800, 0xE000)) for _ in range(3))
    if kind == 5:
        return rng.choice(["", "c1", "x" * 70, "c/1", "stream:3", "\u202e"])
    if kind == 6:
        return rng.choice(TYPES)
    if kind == 7:
        return "txt " + str(rng.random())
    if kind in (8, 9):
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): value(rng, depth + 1) for _ in range(rng.randrange(4))}


def frame(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.05:
        depth = rng.randrange(100, 5_000)
        return "[" * depth + "]" * depth
    if roll < 0.1:
        return rng.choice(
            ["1e999", '{"content": 1e999}', "{" * 50, "\ud800"[:0] + "{}"]
        )
    envelope = {f: value(rng) for f in rng.sample(FIELDS, rng.randrange(1, 6))}
    if rng.random() < 0.5:
        envelope["type"] = rng.choice(TYPES)
    # json.dumps writes lone surrogates as \\udXXX escapes, as an attacker would.
    return json.dumps(envelope)


def assert_healthy(daemon: Daemon) -> None:
    assert daemon.port is not None
    status, _, body = http_get(daemon.host, daemon.port, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.stderr
    assert " ERROR " not in daemon.stderr, daemon.stderr


def test_twenty_thousand_fuzzed_frames_leave_the_daemon_serving(
    spawn_daemon: DaemonFactory,
):
    daemon = spawn_daemon("--no-require-token", "--rate-limit", "0")
    rng = random.Random(20_000)
    for connection in range(4):
        with connect(daemon.ws_url(f"client_id=fuzz{connection}"), max_size=None) as ws:
            chat = ready(ws)["chat_id"]
            for _ in range(FRAMES // 4):
                ws.send(frame(rng))
            # Still open and answering: the last word is ours.
            send(ws, {"type": "message", "chat_id": chat, "content": "still here?"})
            while True:
                got = recv(ws)
                if got.get("text") == "still here?":
                    break
    assert_healthy(daemon)


def test_an_agent_that_sends_garbage_is_contained(spawn_daemon: DaemonFactory):
    daemon = spawn_daemon(
        "--no-require-token", "--agent", "tests.e2e.garbage_agent:agent"
    )
    with connect(daemon.ws_url("client_id=g")) as ws:
        chat = ready(ws)["chat_id"]
        for text in ("one", "two", "three"):
            send(ws, {"type": "message", "chat_id": chat, "content": text})
            frames = turn(ws, chat)
            texts = [f.get("text") for f in frames if f["event"] == "message"]
            assert texts == ["surrogate \ufffd here", text]
            seqs = [f["seq"] for f in frames if "seq" in f]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert daemon.stderr.count("dropping a ") == 3 * 8
    assert "Traceback" not in daemon.stderr
    assert daemon.proc.poll() is None
