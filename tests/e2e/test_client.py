"""trio_channel.client against the real daemon: tokens, streams, and restarts.

The restart tests stop the daemon in the middle of a 2000-delta stream (SIGTERM,
and kill -9), start a new one on the same port and data directory, and check
that the client, which did nothing but keep reading, received every event the
store holds once, in order.
"""

from __future__ import annotations

import signal
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
import trio

from trio_channel.client import (
    AuthError,
    Backoff,
    Chat,
    Credentials,
    ServerAddress,
    ServerUnavailable,
    connect_info,
    open_client,
)
from trio_channel.client.auth import http_get
from trio_channel.core.events import (
    Delta,
    GoalStatus,
    Message,
    ServerEvent,
    StreamEnd,
    TurnEnd,
)

from .conftest import Daemon, DaemonFactory

SLOW_AGENT = ("--agent", "tests.e2e.slow_agent:slow_agent")
FAST_BACKOFF = Backoff(first=0.05, cap=0.5)


def http_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}/"


async def until_idle(chat: Chat, seen: list[ServerEvent]) -> None:
    async for event in chat:
        seen.append(event)
        if isinstance(event, GoalStatus) and event.status == "idle":
            return


def seqs(events: list[Any]) -> list[int]:
    return [e.seq for e in events if getattr(e, "persisted", False)]


async def test_new_chat_send_and_a_whole_stream(spawn_module_daemon: DaemonFactory):
    daemon = await trio.to_thread.run_sync(spawn_module_daemon)
    with trio.fail_after(20):
        async with open_client(http_url(daemon), client_id="e2e") as client:
            chat = await client.new_chat()
            await chat.send("stream:50")
            seen: list[ServerEvent] = []
            await until_idle(chat, seen)
            (end,) = [e for e in seen if isinstance(e, StreamEnd)]
            assert end.text == "".join(f"chunk {i} " for i in range(1, 51))
            assert seqs(seen) == list(range(1, 53))  # 50 deltas, end, turn_end
            # The ws:// URL works as well as the page's http:// one.
            await chat.send("hello")
            await until_idle(chat, seen)
            assert any(isinstance(e, Message) and e.text == "hello" for e in seen)
            listed = await client.list_chats()
            assert chat.chat_id in [s["chat_id"] for s in listed]


async def test_a_ws_url_and_a_second_client_following_the_chat(
    spawn_module_daemon: DaemonFactory,
):
    daemon = await trio.to_thread.run_sync(spawn_module_daemon)
    with trio.fail_after(20):
        async with (
            open_client(daemon.ws_url()) as a,
            open_client(http_url(daemon)) as b,
        ):
            chat_a = await a.new_chat()
            chat_b = await b.attach(chat_a.chat_id)
            await chat_a.send("stream:3")
            seen_a: list[ServerEvent] = []
            seen_b: list[ServerEvent] = []
            await until_idle(chat_a, seen_a)
            await until_idle(chat_b, seen_b)
            assert seqs(seen_b) == seqs(seen_a) == [1, 2, 3, 4, 5]


async def test_a_secret_comes_from_the_environment(spawn_daemon: DaemonFactory):
    daemon = await trio.to_thread.run_sync(
        spawn_daemon, "--token-issue-secret", "s3cret"
    )
    with trio.fail_after(20):
        with pytest.raises(AuthError, match="TRIO_CHANNEL_TOKEN_ISSUE_SECRET"):
            async with open_client(http_url(daemon), environ={}):
                pass  # pragma: no cover
        env = {"TRIO_CHANNEL_TOKEN_ISSUE_SECRET": "s3cret"}
        async with open_client(http_url(daemon), environ=env) as client:
            chat = await client.new_chat()
            await chat.send("hi")
            seen: list[ServerEvent] = []
            await until_idle(chat, seen)
            assert [e.text for e in seen if isinstance(e, Message)] == ["hi"]


async def test_no_daemon_is_a_clear_error():
    with trio.fail_after(10):
        with pytest.raises(ServerUnavailable, match="cannot reach"):
            async with open_client("http://127.0.0.1:9/", environ={}):
                pass  # pragma: no cover


async def stored_events(daemon: Daemon, chat_id: str) -> list[dict[str, Any]]:
    address = ServerAddress.parse(http_url(daemon))
    info = await connect_info(address, Credentials())
    key = quote(f"websocket:{chat_id}", safe="")
    answer = await http_get(
        address,
        f"/api/sessions/{key}/messages",
        [("Authorization", f"Bearer {info.api_token}")],
    )
    assert answer.status == 200, answer
    events = msgspec.json.decode(answer.body)["events"]
    return [e for e in events if "seq" in e]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
async def test_a_restart_mid_stream_loses_and_repeats_nothing(
    spawn_daemon: DaemonFactory, how: signal.Signals
):
    first = await trio.to_thread.run_sync(spawn_daemon, *SLOW_AGENT)
    port = first.port
    seen: list[ServerEvent] = []
    restarted = trio.Event()
    with trio.fail_after(20):
        async with open_client(http_url(first), backoff=FAST_BACKOFF) as client:
            chat = await client.new_chat()
            await chat.send("stream:2000")
            async for event in chat:
                seen.append(event)
                if isinstance(event, Delta) and len(seqs(seen)) == 300:
                    break
            # Stop the daemon in the middle of the stream, start another.
            if how == signal.SIGKILL:
                await trio.to_thread.run_sync(first.kill9)
            else:
                first.proc.send_signal(how)
                await trio.to_thread.run_sync(first.wait)
            second = await trio.to_thread.run_sync(
                lambda: spawn_daemon(
                    *SLOW_AGENT, "--port", str(port), data_dir=first.data_dir
                )
            )
            restarted.set()
            # The client resumes by itself; the next message is answered.
            await chat.send("after the restart")
            async for event in chat:
                seen.append(event)
                if isinstance(event, TurnEnd) and any(
                    isinstance(e, Message) and e.text == "after the restart"
                    for e in seen
                ):
                    break
    assert restarted.is_set()
    got = seqs(seen)
    assert got == sorted(set(got)), "a duplicate or an event out of order"
    stored = [e["seq"] for e in await stored_events(second, chat.chat_id)]
    # Every event the store holds reached the client once, in order, and the
    # client saw nothing the store forgot.
    assert got == stored
    assert got == list(range(1, len(got) + 1))
    assert len(got) > 300
