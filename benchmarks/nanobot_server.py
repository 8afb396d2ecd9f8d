"""nanobot-ai's own WebSocket channel, wired as its gateway wires it, echo agent.

The reference trio_channel is measured against: nanobot-ai 0.2.2's
``WebSocketChannel`` (``nanobot/channels/websocket.py``), started by its
``ChannelManager`` with a ``MessageBus`` and a ``SessionManager``, as
``nanobot gateway`` (``_run_gateway`` in ``nanobot/cli/commands.py``) does:

- one ``MessageBus``, one ``RuntimeEventBus``, ``SessionManager(workspace)``;
- a ``WebuiTurnCoordinator`` subscribed to the runtime events: it turns the
  agent's "run status changed" and "turn completed" events into the
  ``goal_status`` and ``turn_end`` messages on the bus, as in the gateway;
- ``ChannelManager(config, bus, session_manager=...)``, which builds the
  channel's gateway services (tokens, media, the WebUI transcript recorder,
  HTTP routes) and runs the outbound dispatcher, started with
  ``start_all()``.

The agent is an echo in place of nanobot's ``AgentLoop`` and its LLM,
producing the frames trio_channel's echo agent produces, through the calls
the real loop makes (``agent/loop.py``, ``_dispatch`` and ``_state_run``):

- a task per inbound message, turns of one session one after the other
  (an ``asyncio.Lock`` per session key), at most :data:`MAX_CONCURRENT_TURNS`
  at a time;
- ``RuntimeEventPublisher.run_status_changed(..., "running")`` ->
  ``goal_status`` running;
- ``stream:N`` on a streaming channel (the channel marks messages
  ``_wants_stream``): N outbound messages with ``_stream_delta`` and a
  ``_stream_id``, then one with ``_stream_end`` (the loop's ``on_stream`` and
  ``on_stream_end``), then the final response marked ``_streamed`` (which
  the manager does not send again); anything else: the response as an
  outbound message -> ``message``;
- ``record_turn_latency`` + ``turn_completed`` -> ``turn_end`` with
  ``latency_ms`` (and the channel's own ``session_updated`` to every
  connection, which nanobot sends after every ``turn_end``);
- ``run_status_changed(..., "idle")`` -> ``goal_status`` idle.

Every publish is awaited, and a delta is published only once the dispatcher
has taken the previous one off the bus, as ``benchmarks/agents.py`` does for
trio_channel (yielding with ``asyncio.sleep(0)`` until then); so the manager
never finds two deltas of one stream to merge into one frame, and both
servers send the same frames. See ``EchoAgent._taken`` for what "taken"
means here.

Configuration (``channels.websocket``): enabled, 127.0.0.1, the port,
``websocketRequiresToken: false`` (no token, so the load generator connects
with a bare URL), ``allowFrom: ["*"]``, ``streaming: true``. nanobot's data
directory (WebUI transcripts, media) is the folder of its config file: here
``--data-dir``, which is also ``HOME`` and holds the workspace, so nothing
is written outside it. Logging as the gateway's (loguru to stderr, INFO).

Run with the Python that has ``nanobot-ai`` installed (``nox -s bench`` makes
that venv)::

    python benchmarks/nanobot_server.py --port 0 --data-dir DIR

It prints ``listening on ws://127.0.0.1:PORT/`` on stderr once the socket
listens, and stops on SIGTERM or SIGINT. nanobot's channel binds the
configured port itself and does not report it, so port 0 is resolved here
first (bind, read, close) and ``/proc/net/tcp`` tells when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_STREAM_DELTAS = 10_000
MAX_CONCURRENT_TURNS = 64
LISTEN_TIMEOUT_S = 30.0
HOST = "127.0.0.1"

_STREAM_RE = re.compile(r"stream:(\d{1,6})")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether 127.0.0.1:port is in LISTEN state (``/proc/net/tcp``)."""
    needle = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == needle and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


class EchoAgent:
    """nanobot's agent loop with an echo for the LLM (see the module doc)."""

    def __init__(self, bus: Any, publisher: Any) -> None:
        self.bus = bus
        self.publisher = publisher
        self._gate = asyncio.Semaphore(MAX_CONCURRENT_TURNS)
        self._locks: dict[str, list[Any]] = {}  # session key -> [lock, turns]
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            msg = await self.bus.consume_inbound()
            await self._gate.acquire()
            entry = self._locks.get(msg.session_key)
            if entry is None:
                entry = self._locks[msg.session_key] = [asyncio.Lock(), 0]
            entry[1] += 1
            task = asyncio.create_task(self._dispatch(msg, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, msg: Any, entry: list[Any]) -> None:
        try:
            async with entry[0]:
                await self.answer(msg)
        finally:
            self._gate.release()
            entry[1] -= 1
            if not entry[1]:
                del self._locks[msg.session_key]

    async def _taken(self) -> None:
        """Return once the dispatcher has taken everything off the bus.

        The manager's dispatcher takes messages in two places: the queue, and
        the ``pending`` list it fills while looking for more deltas to merge
        (``_coalesce_stream_deltas``); a delta published while its
        predecessor sits there would be merged into it. So "taken" is: the
        queue is empty and the dispatcher waits on it again (an
        ``asyncio.Queue`` keeps its blocked getters in ``_getters``).
        """
        queue = self.bus.outbound
        # No event tells when a queue empties: poll once per loop iteration.
        while queue.qsize() or not queue._getters:  # noqa: ASYNC110
            await asyncio.sleep(0)

    async def answer(self, msg: Any) -> None:
        from nanobot.bus.events import OutboundMessage

        key = msg.session_key
        started = time.time()
        await self.publisher.run_status_changed(msg, key, "running", started_at=started)
        content = msg.content.strip()
        stream = _STREAM_RE.fullmatch(content)
        if stream and 1 <= int(stream.group(1)) <= MAX_STREAM_DELTAS:
            chunks = [f"chunk {i} " for i in range(1, int(stream.group(1)) + 1)]
            if msg.metadata.get("_wants_stream"):
                stream_id = f"{key}:{time.time_ns()}:0"
                for chunk in chunks:
                    meta = dict(msg.metadata)
                    meta["_stream_delta"] = True
                    meta["_stream_id"] = stream_id
                    await self.bus.publish_outbound(
                        OutboundMessage(
                            channel=msg.channel,
                            chat_id=msg.chat_id,
                            content=chunk,
                            metadata=meta,
                        )
                    )
                    await self._taken()
                meta = dict(msg.metadata)
                meta["_stream_end"] = True
                meta["_resuming"] = False
                meta["_stream_id"] = stream_id
                await self.bus.publish_outbound(
                    OutboundMessage(
                        channel=msg.channel,
                        chat_id=msg.chat_id,
                        content="",
                        metadata=meta,
                    )
                )
                final_meta = {**msg.metadata, "_streamed": True}
            else:
                final_meta = dict(msg.metadata)
            await self.bus.publish_outbound(
                OutboundMessage(
                    channel=msg.channel,
                    chat_id=msg.chat_id,
                    content="".join(chunks),
                    metadata=final_meta,
                )
            )
        else:
            await self.bus.publish_outbound(
                OutboundMessage(
                    channel=msg.channel,
                    chat_id=msg.chat_id,
                    content=msg.content,
                    media=list(msg.media),
                    metadata=dict(msg.metadata),
                )
            )
        self.publisher.record_turn_latency(key, int((time.time() - started) * 1000))
        await self.publisher.turn_completed(
            channel=msg.channel,
            chat_id=msg.chat_id,
            session_key=key,
            metadata=msg.metadata,
        )
        await self.publisher.run_status_changed(msg, key, "idle")
        self.publisher.clear_turn(key)


def configure_logging() -> None:
    """loguru to stderr at INFO, as ``nanobot gateway`` sets it up."""
    from loguru import logger

    logger.remove()
    logger.add(
        sys.stderr,
        format=(
            "{time:YYYY-MM-DD HH:mm:ss} | {level: <5} | {extra[channel]} | {message}"
        ),
        level="INFO",
        colorize=False,
        filter=lambda record: record["extra"].setdefault("channel", "-") or True,
    )


async def serve(data_dir: Path, port: int) -> None:
    from nanobot.bus.queue import MessageBus
    from nanobot.bus.runtime_events import RuntimeEventBus, RuntimeEventPublisher
    from nanobot.channels.manager import ChannelManager
    from nanobot.config.loader import set_config_path
    from nanobot.config.schema import Config
    from nanobot.session.manager import SessionManager
    from nanobot.session.webui_turns import WebuiTurnCoordinator

    set_config_path(data_dir / "config.json")
    config = Config.model_validate(
        {
            "agents": {"defaults": {"workspace": str(data_dir / "workspace")}},
            "channels": {
                "websocket": {
                    "enabled": True,
                    "host": HOST,
                    "port": port,
                    "path": "/",
                    "websocketRequiresToken": False,
                    "allowFrom": ["*"],
                    "streaming": True,
                }
            },
        }
    )
    bus = MessageBus()
    runtime_events = RuntimeEventBus()
    session_manager = SessionManager(config.workspace_path)
    background: set[asyncio.Task[Any]] = set()

    def schedule_background(coro: Any) -> None:
        task = asyncio.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    WebuiTurnCoordinator(
        bus=bus,
        sessions=session_manager,
        schedule_background=schedule_background,
    ).subscribe(runtime_events)
    channels = ChannelManager(config, bus, session_manager=session_manager)
    if "websocket" not in channels.channels:
        raise SystemExit("nanobot_server: the websocket channel did not load")
    agent = EchoAgent(bus, RuntimeEventPublisher(runtime_events))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent_task = asyncio.create_task(agent.run(), name="echo-agent")
    channels_task = asyncio.create_task(channels.start_all(), name="channels")
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while not listening(port):
        if channels_task.done() or time.monotonic() > deadline:
            raise SystemExit(f"nanobot_server: nothing listens on port {port}")
        await asyncio.sleep(0.05)
    print(f"listening on ws://{HOST}:{port}/", file=sys.stderr, flush=True)
    await stop.wait()
    agent_task.cancel()
    await channels.stop_all()
    channels_task.cancel()
    for task in (agent_task, channels_task, *background):
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default: a temporary directory"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="nanobot-"))
            args.data_dir = Path(tmp)
        data_dir = args.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        # nanobot falls back to ~/.nanobot for a few paths: keep them in here.
        os.environ["HOME"] = str(data_dir)
        configure_logging()
        asyncio.run(serve(data_dir, args.port or free_port()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
