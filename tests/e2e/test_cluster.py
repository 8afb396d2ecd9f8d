"""Two daemons and one Redis behave as one server (issue: several daemons).

Real processes: two ``trio-channel serve --session-store redis://...`` on
two ports, a ``redis-server`` of the test's own (or a Redis Cluster of
three, or a primary and replica under a Sentinel), and ``websockets``
clients that hop between the nodes. Every scenario checks what a user would
see: every event once and in order, every message answered once, through a
daemon kill -9, a Redis kill -9, a Redis that forgot everything and a
Sentinel failover.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from websockets.exceptions import ConnectionClosed

from ..redis_server import RedisClusterServers, RedisSentinelSetup, RedisServer
from ._client import Frame, connect, http_get, ready, recv, recv_until, send, turn
from .conftest import Daemon, DaemonFactory

pytestmark = pytest.mark.cluster

#: Short leases: a dead node's chats move within a few seconds.
LEASE = ("--redis-lease-ttl", "2")


class Deployment(Protocol):
    """What the daemons are pointed at: its ``--session-store`` URL."""

    @property
    def url(self) -> str: ...


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "redis-cluster"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """One Redis server, or a three-primary Redis Cluster (one feed loop per
    partition): the scenarios that do not kill Redis run on both."""
    target: RedisServer | RedisClusterServers
    if request.param == "redis":
        target = RedisServer(tmp_path / "redis", appendfsync="always").start()
    else:
        target = RedisClusterServers(tmp_path / "redis-cluster").start()
    yield target
    target.stop()


def nodes(
    spawn: DaemonFactory, redis: Deployment, tmp_path: Path, *flags: str
) -> tuple[Daemon, Daemon]:
    media = tmp_path / "shared-media"
    common = ("--session-store", redis.url, *LEASE, "--media-dir", str(media), *flags)
    a = spawn(*common, data_dir=tmp_path / "a")
    b = spawn(*common, data_dir=tmp_path / "b")
    time.sleep(1.5)  # the leases settle: each node owns its share
    return a, b


def open_flags() -> tuple[str, ...]:
    return ("--no-require-token", "--rate-limit", "0")


def persisted(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if "seq" in f]


def test_a_reply_reaches_a_subscriber_on_the_other_node(
    spawn_daemon: DaemonFactory, deployment: Deployment, tmp_path: Path
):
    a, b = nodes(spawn_daemon, deployment, tmp_path, *open_flags())
    with (
        connect(a.ws_url("client_id=one")) as one,
        connect(b.ws_url("client_id=two")) as two,
    ):
        chat = ready(one)["chat_id"]
        ready(two)
        send(two, {"type": "attach", "chat_id": chat})
        assert recv(two)["event"] == "attached"
        send(one, {"type": "message", "chat_id": chat, "content": "across"})
        mine = turn(one, chat)
        assert recv(two)["event"] == "user_message"
        theirs = turn(two, chat)
        assert persisted(theirs) == persisted(mine)
        assert [f["text"] for f in mine if f["event"] == "message"] == ["across"]


def test_the_users_message_comes_before_the_answer_on_every_node(
    spawn_daemon: DaemonFactory, deployment: Deployment, tmp_path: Path
):
    """Whichever node's agent answers, a subscriber on the other node sees
    the user's message first: the owner waits for its feed to bring the
    ``user_message`` before its agent answers. Eight chats: both nodes own
    some of them (all on one node: 1 in 128)."""
    a, b = nodes(spawn_daemon, deployment, tmp_path, *open_flags())
    with (
        connect(a.ws_url("client_id=sender")) as sender,
        connect(b.ws_url("client_id=watcher")) as watcher,
    ):
        ready(sender)
        ready(watcher)
        chats = []
        for _ in range(8):
            send(sender, {"type": "new_chat"})
            chats.append(recv(sender)["chat_id"])
            recv(sender)  # session_updated
        for chat in chats:
            send(watcher, {"type": "attach", "chat_id": chat})
            recv_until(watcher, lambda f: f.get("event") == "attached")
        for chat in chats:
            send(sender, {"type": "message", "chat_id": chat, "content": "first?"})
            seen = turn(watcher, chat)
            events = [f["event"] for f in seen if f.get("chat_id") == chat]
            assert events[0] == "user_message", events
            assert "message" in events


def test_clients_hopping_between_nodes_see_every_event_once(
    spawn_daemon: DaemonFactory, deployment: Deployment, tmp_path: Path
):
    a, b = nodes(spawn_daemon, deployment, tmp_path, *open_flags())
    chats, stop = [], threading.Event()
    with connect(a.ws_url("client_id=driver")) as driver:
        ready(driver)
        for _ in range(3):
            send(driver, {"type": "new_chat"})
            chats.append(recv(driver)["chat_id"])
            recv(driver)  # session_updated
        failures: list[str] = []
        seen: dict[int, list[int]] = {}

        def hopper(n: int) -> None:
            rng = random.Random(n)
            chat = chats[n % len(chats)]
            last, epoch, got = 0, None, seen.setdefault(n, [])
            while not stop.is_set():
                node = a if rng.random() < 0.5 else b
                try:
                    with connect(node.ws_url(f"client_id=hop{n}")) as ws:
                        ready(ws)
                        attach: dict[str, Any] = {"type": "attach", "chat_id": chat}
                        attach["since_seq"] = last
                        if epoch:
                            attach["epoch"] = epoch
                        send(ws, attach)
                        epoch = recv(ws).get("epoch") or epoch
                        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
                        while time.monotonic() < deadline:
                            try:
                                frame = json.loads(ws.recv(timeout=0.05))
                            except TimeoutError:
                                continue
                            if frame.get("detail") in (
                                "history_reset",
                                "history_truncated",
                            ):
                                failures.append(f"hopper {n}: {frame}")
                            if "seq" in frame:
                                if frame["seq"] != last + 1:
                                    failures.append(
                                        f"hopper {n}: {last} then {frame['seq']}"
                                    )
                                last = frame["seq"]
                                got.append(last)
                except (ConnectionClosed, OSError) as exc:
                    failures.append(f"hopper {n}: {exc!r}")

        threads = [threading.Thread(target=hopper, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        for _ in range(3):
            for chat in chats:
                send(
                    driver,
                    {"type": "message", "chat_id": chat, "content": "stream:150"},
                )
                turn(driver, chat, limit=400)
        final = {}
        for chat in chats:
            send(driver, {"type": "attach", "chat_id": chat})
            final[chat] = recv(driver)["last_seq"]
        # Let every hopper read to the end, then stop them.
        deadline = time.monotonic() + 30
        while any(
            not seen.get(n) or seen[n][-1] < final[chats[n % 3]] for n in range(12)
        ):
            assert time.monotonic() < deadline, {n: s[-1:] for n, s in seen.items()}
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(10)
    assert failures == []
    for n, got in seen.items():
        assert got == list(range(1, final[chats[n % 3]] + 1)), n


def answers(daemon: Daemon, chat: str) -> list[str]:
    """The agent's message texts in the chat's history, in order."""
    with connect(daemon.ws_url("client_id=reader")) as ws:
        ready(ws)
        send(ws, {"type": "attach", "chat_id": chat, "since_seq": 0})
        last = recv(ws)["last_seq"]
        texts, seq = [], 0
        while seq < last:
            frame = recv(ws)
            if "seq" in frame:
                seq = frame["seq"]
                if frame["event"] == "message":
                    texts.append(frame["text"])
        return texts


def test_messages_to_both_nodes_are_answered_once_each_in_order(
    spawn_daemon: DaemonFactory, deployment: Deployment, tmp_path: Path
):
    a, b = nodes(spawn_daemon, deployment, tmp_path, *open_flags())
    with connect(a.ws_url("client_id=x")) as x, connect(b.ws_url("client_id=y")) as y:
        chat = ready(x)["chat_id"]
        ready(y)
        sent = []
        for i in range(20):
            ws = x if i % 2 == 0 else y
            text = f"m{i:02}"
            send(ws, {"type": "message", "chat_id": chat, "content": text})
            sent.append(text)
        deadline = time.monotonic() + 20
        while len(answers(a, chat)) < 20:
            assert time.monotonic() < deadline, answers(a, chat)
            time.sleep(0.2)
    got = answers(b, chat)
    assert sorted(got) == sorted(sent) and len(set(got)) == 20
    # In the order the store took them (each node's own are in send order).
    for node_sent in (sent[0::2], sent[1::2]):
        assert [t for t in got if t in node_sent] == node_sent


def test_a_daemon_killed_mid_turn_loses_no_message(
    spawn_daemon: DaemonFactory, deployment: Deployment, tmp_path: Path
):
    a, b = nodes(spawn_daemon, deployment, tmp_path, *open_flags())
    chats = []
    with connect(b.ws_url("client_id=survivor")) as ws:
        ready(ws)
        for _ in range(8):
            send(ws, {"type": "new_chat"})
            chats.append(recv(ws)["chat_id"])
            recv(ws)  # session_updated
        for i, chat in enumerate(chats):
            job = f"sleep:1.5 job {i}"
            send(ws, {"type": "message", "chat_id": chat, "content": job})
        time.sleep(0.7)  # every turn has started, on both nodes' agents
        a.kill9()
        deadline = time.monotonic() + 30
        done: dict[str, list[str]] = {}
        while len(done) < len(chats):
            assert time.monotonic() < deadline, done
            for i, chat in enumerate(chats):
                texts = answers(b, chat)
                if f"sleep:1.5 job {i}" in texts:
                    done[chat] = texts
            time.sleep(0.3)
    for i, chat in enumerate(chats):
        assert done[chat] == [f"sleep:1.5 job {i}"], chat  # one complete answer
    # A turn cut by the kill was closed as interrupted before it ran again.
    with connect(b.ws_url("client_id=check")) as ws:
        ready(ws)
        interrupted = 0
        for chat in chats:
            send(ws, {"type": "attach", "chat_id": chat, "since_seq": 0})
            last = recv(ws)["last_seq"]
            frames = []
            while not frames or frames[-1].get("seq", 0) < last:
                frames.append(recv(ws))
            ends = [f for f in frames if f["event"] == "turn_end"]
            interrupted += sum(1 for f in ends if f.get("interrupted"))
            assert ends[-1].get("interrupted") is None  # the answer completed
        assert interrupted >= 1


def test_a_token_and_media_from_one_node_work_on_the_other(
    spawn_daemon: DaemonFactory, deployment: Deployment, tmp_path: Path
):
    a, b = nodes(spawn_daemon, deployment, tmp_path)
    assert a.port is not None and b.port is not None
    status, _, body = http_get(a.host, a.port, "/api/bootstrap")
    assert status == 200
    token = json.loads(body)["token"]
    with connect(b.ws_url(f"client_id=t&token={token}")) as ws:
        chat = ready(ws)["chat_id"]
        png = (
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAC"
            "hwGA60e6kgAAAABJRU5ErkJggg=="
        )
        send(
            ws,
            {
                "type": "message",
                "chat_id": chat,
                "content": "a picture",
                "media": [{"data_url": f"data:image/png;base64,{png}"}],
            },
        )
        reply = next(f for f in turn(ws, chat) if f["event"] == "message")
    # The token was single use across both nodes.
    for node in (a, b):
        with pytest.raises(Exception, match="401"):
            connect(node.ws_url(f"client_id=t&token={token}")).close()
    (url,) = [m["url"] for m in reply["media_urls"]]
    for node in (a, b):
        assert node.port is not None
        status, headers, body = http_get(node.host, node.port, url)
        assert (status, headers["content-type"]) == (200, "image/png")
        assert body.startswith(b"\x89PNG")
    # The API token works on the other node too.
    status, _, body = http_get(
        b.host, b.port, "/api/sessions", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200 and json.loads(body)["sessions"]


def test_a_redis_kill9_with_aof_always_loses_nothing_acknowledged(
    spawn_daemon: DaemonFactory, redis: RedisServer, tmp_path: Path
):
    a, b = nodes(spawn_daemon, redis, tmp_path, *open_flags())
    seen: dict[int, Frame] = {}
    with connect(a.ws_url("client_id=w")) as ws:
        chat = ready(ws)["chat_id"]
        send(ws, {"type": "message", "chat_id": chat, "content": "stream:400"})
        # Deltas queued behind a Redis write join, so count chunks, not frames.
        while sum(f.get("text", "").count("chunk ") for f in seen.values()) < 150:
            frame = recv(ws)
            if "seq" in frame:
                seen[frame["seq"]] = frame
        redis.restart(persist=True)  # kill -9, then up again from its AOF
        deadline = time.monotonic() + 30
        while True:
            try:
                frame = json.loads(ws.recv(timeout=0.5))
                if "seq" in frame:
                    seen[frame["seq"]] = frame
                if frame.get("event") == "turn_end":
                    break
            except TimeoutError:
                assert time.monotonic() < deadline
    with connect(b.ws_url("client_id=r")) as ws:
        ready(ws)
        send(
            ws,
            {"type": "attach", "chat_id": chat, "since_seq": 0},
        )
        attached = recv(ws)
        stored: dict[int, Frame] = {}
        while len(stored) < attached["last_seq"]:
            frame = recv(ws)
            assert frame.get("detail") != "history_reset", frame
            if "seq" in frame:
                stored[frame["seq"]] = frame
    for seq, frame in seen.items():
        assert stored[seq] == frame
    # Joined or not, the deltas spell the whole stream once.
    text = "".join(
        stored[seq]["text"] for seq in sorted(stored) if stored[seq]["event"] == "delta"
    )
    assert text == "".join(f"chunk {i} " for i in range(1, 401))


def test_a_redis_that_forgot_everything_is_told_to_every_resuming_client(
    spawn_daemon: DaemonFactory, redis: RedisServer, tmp_path: Path
):
    a, b = nodes(spawn_daemon, redis, tmp_path, *open_flags())
    resumes = []
    with connect(a.ws_url("client_id=w")) as ws:
        chat = ready(ws)["chat_id"]
        send(ws, {"type": "message", "chat_id": chat, "content": "stream:20"})
        frames = turn(ws, chat)
        send(ws, {"type": "attach", "chat_id": chat})
        epoch = recv(ws)["epoch"]
        resumes.append(max(f["seq"] for f in frames if "seq" in f))
    redis.restart(persist=False)
    time.sleep(1.0)
    for node in (a, b):
        with connect(node.ws_url("client_id=back")) as ws:
            ready(ws)
            send(
                ws,
                {
                    "type": "attach",
                    "chat_id": chat,
                    "since_seq": resumes[0],
                    "epoch": epoch,
                },
            )
            assert recv(ws)["event"] == "attached"
            notice = recv(ws)
            assert (notice["event"], notice["detail"]) == ("error", "history_reset")


def test_redis_down_keeps_sockets_open_and_says_so(
    spawn_daemon: DaemonFactory, redis: RedisServer, tmp_path: Path
):
    a, _b = nodes(spawn_daemon, redis, tmp_path, *open_flags())
    assert a.port is not None
    with connect(a.ws_url("client_id=w")) as ws:
        chat = ready(ws)["chat_id"]
        redis.kill9()
        send(ws, {"type": "message", "chat_id": chat, "content": "while down"})
        # The feed broke too: the chat's state (idle, scope) may come first.
        frames = recv_until(ws, lambda f: f["event"] == "error", limit=5)
        assert frames[-1]["detail"] == "store_unavailable"
        assert {f["event"] for f in frames[:-1]} <= {"session_updated", "goal_status"}
        status, _, body = http_get(a.host, a.port, "/healthz")
        assert status == 503 and json.loads(body)["status"] == "degraded"
        redis.start()
        deadline = time.monotonic() + 20
        while http_get(a.host, a.port, "/healthz")[0] != 200:
            assert time.monotonic() < deadline, a.stderr
            time.sleep(0.2)
        send(ws, {"type": "message", "chat_id": chat, "content": "back"})
        # (The feed broke meanwhile: the client first catches up, and is
        # sent the chat's state, idle; then the answer.)
        recv_until(ws, lambda f: f.get("text") == "back")


def test_a_sentinel_failover_loses_nothing_the_replica_had(
    spawn_daemon: DaemonFactory, tmp_path: Path
):
    """The daemons follow the Sentinel to the new primary by themselves: the
    chat goes on, and a resuming client sees every event once, in order."""
    setup = RedisSentinelSetup(tmp_path / "sentinel").start()
    try:
        a, b = nodes(spawn_daemon, setup, tmp_path, *open_flags())
        with connect(a.ws_url("client_id=before")) as ws:
            chat = ready(ws)["chat_id"]
            send(ws, {"type": "message", "chat_id": chat, "content": "before"})
            before = persisted(turn(ws, chat))
        setup.wait_replicated()  # asynchronous replication: nothing in flight
        old_primary = setup.primary_port()
        setup.failover()
        assert setup.primary_port() == setup.replica.port != old_primary
        answered = False
        deadline = time.monotonic() + 30
        while not answered:
            assert time.monotonic() < deadline, "no answer after the failover"
            with connect(b.ws_url("client_id=after")) as ws:
                ready(ws)
                # Resumed where "before" ended: what follows is the new turn.
                since = before[-1]["seq"]
                send(ws, {"type": "attach", "chat_id": chat, "since_seq": since})
                assert recv(ws)["event"] == "attached"
                send(ws, {"type": "message", "chat_id": chat, "content": "after"})
                frames = recv_until(
                    ws, lambda f: f.get("event") in ("error", "turn_end")
                )
                answered = frames[-1]["event"] == "turn_end"
                if not answered:
                    # Sent while the nodes were finding the new primary.
                    assert frames[-1]["detail"] == "store_unavailable", frames[-1]
                    time.sleep(0.5)
        assert answers(a, chat) == ["before", "after"]
        with connect(a.ws_url("client_id=resume")) as ws:
            ready(ws)
            send(ws, {"type": "attach", "chat_id": chat, "since_seq": 0})
            attached = recv(ws)
            frames = [recv(ws) for _ in range(attached["last_seq"])]
        assert [f["seq"] for f in frames] == list(range(1, attached["last_seq"] + 1))
        assert frames[: len(before)] == before
    finally:
        setup.stop()
