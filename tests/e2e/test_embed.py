"""``trio_channel.serve`` in-process, and the embedding docs' example as written.

Real loopback sockets (the client is trio-websocket over TCP).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType

import trio

from trio_channel import InboundMessage, build_config, serve
from trio_channel.client import open_client
from trio_channel.core.events import AgentEvent, GoalStatus, StreamEnd

EXAMPLE = Path(__file__).resolve().parents[2] / "docs/examples/streaming_agent.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("streaming_agent", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_is_under_40_lines() -> None:
    assert len(EXAMPLE.read_text().splitlines()) < 40


async def test_the_docs_streaming_agent_streams_through_serve(nursery: trio.Nursery):
    example = load_example()
    with tempfile.TemporaryDirectory() as data_dir:
        config = build_config(
            overrides={"port": 0, "data_dir": data_dir, "session_store": "memory"},
            environ={},
        )
        urls = await nursery.start(
            lambda **kw: serve(config, example.agent, signals=(), **kw)
        )
        assert urls[0].startswith("ws://127.0.0.1:")
        with trio.fail_after(10):
            async with open_client(urls[0], environ={}) as client:
                chat = await client.new_chat()
                await chat.send("hi there")
                async for event in chat:
                    if isinstance(event, StreamEnd):
                        assert event.text == "You said: hi there "
                    if isinstance(event, GoalStatus) and event.status == "idle":
                        break
        nursery.cancel_scope.cancel()


async def test_serve_returns_when_the_agent_returns() -> None:
    async def quitter(
        inbound: trio.MemoryReceiveChannel[InboundMessage],
        outbound: trio.MemorySendChannel[AgentEvent],
    ) -> None:
        await trio.sleep(0.01)

    with tempfile.TemporaryDirectory() as data_dir, trio.fail_after(10):
        config = build_config(
            overrides={"port": 0, "data_dir": data_dir, "session_store": "memory"},
            environ={},
        )
        await serve(config, quitter, signals=())


def test_the_quickstart_hello_works_after_a_plain_serve(
    spawn_module_daemon, tmp_path: Path
) -> None:
    """docs/quickstart.md's hello.py, as written, against ``trio-channel serve``."""
    import subprocess
    import sys

    daemon = spawn_module_daemon()
    text = (EXAMPLE.parents[1] / "quickstart.md").read_text()
    start = text.index("```python\nimport trio\n") + len("```python\n")
    code = text[start : text.index("```", start)]
    script = tmp_path / "hello.py"
    script.write_text(code.replace("127.0.0.1:8765", f"127.0.0.1:{daemon.port}"))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "Message(" in result.stdout and "text='hello'" in result.stdout
    assert result.stdout.rstrip().endswith("status='idle', started_at=None)")
