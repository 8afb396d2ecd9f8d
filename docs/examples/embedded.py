"""Run trio_channel inside your own trio program, next to your own agent.

    python docs/examples/embedded.py --port 0

prints the URL it listens on and serves until Ctrl-C (or SIGTERM). Tokens are
off so that any local client can try it (``websockets`` installed):

    python -m websockets ws://127.0.0.1:PORT/

The agent, ``word_agent``, streams the words of each message back as deltas.
It has the signature the daemon expects, so the daemon can run it too:

    PYTHONPATH=docs/examples trio-channel serve --agent embedded:word_agent
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
import uuid

import trio

from trio_channel import (
    AgentEvent,
    Channel,
    Delta,
    GoalStatus,
    InboundMessage,
    Message,
    StreamEnd,
    TurnEnd,
    build_config,
    open_bus,
)


async def word_agent(
    inbound: trio.MemoryReceiveChannel[InboundMessage],
    outbound: trio.MemorySendChannel[AgentEvent],
) -> None:
    """Answer each message, one at a time, in the order they arrive."""
    async with inbound, outbound:
        async for message in inbound:
            await answer(message, outbound)


async def answer(
    message: InboundMessage, outbound: trio.MemorySendChannel[AgentEvent]
) -> None:
    chat_id = message.chat_id
    started = trio.current_time()
    # Clients show a "working" indicator from this; a client that attaches
    # mid-turn gets it again (with started_at) from the server.
    await outbound.send(
        GoalStatus(chat_id=chat_id, status="running", started_at=time.time())
    )
    words = message.content.split() or ["(no", "text)"]
    if message.metadata.get("streaming", True):
        stream_id = uuid.uuid4().hex
        for word in words:
            await outbound.send(
                Delta(chat_id=chat_id, text=word + " ", stream_id=stream_id)
            )
            await trio.sleep(0.05)  # pretend to think
        await outbound.send(StreamEnd(chat_id=chat_id, stream_id=stream_id))
    else:
        await outbound.send(Message(chat_id=chat_id, text=" ".join(words)))
    latency_ms = round((trio.current_time() - started) * 1000)
    await outbound.send(TurnEnd(chat_id=chat_id, latency_ms=latency_ms))
    await outbound.send(GoalStatus(chat_id=chat_id, status="idle"))


async def main(port: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        # build_config applies the same checks as the daemon (and reads the
        # TRIO_CHANNEL_TOKEN* environment variables); it raises ConfigError.
        config = build_config(
            overrides={
                "port": port,
                "websocket_requires_token": False,
                "data_dir": data_dir,
                "session_store": "memory",
            }
        )
        server_ends, agent_ends = open_bus(config.bus_capacity)
        channel = Channel(config, server_ends)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(word_agent, agent_ends.inbound, agent_ends.outbound)
                urls = await nursery.start(channel.serve)
                print("listening on", *urls, flush=True)
                async for _ in signals:
                    break
                # Closes every client with 1001, then everything returns.
                nursery.cancel_scope.cancel()
    print("stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="trio_channel embedded in trio")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    trio.run(main, parser.parse_args().port)
