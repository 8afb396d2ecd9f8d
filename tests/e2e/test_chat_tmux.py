"""``trio-channel chat`` in a real terminal (tmux), read as a person would.

tmux runs the chat in a 120x40 pane on a tmux server of its own; the test
types with ``send-keys`` and reads the screen with ``capture-pane``. One
test walks through what a newcomer does: chat, stream, watch running/idle,
``/new``, ``/chats``, ``/attach``, the daemon restarting while they type, and
``/quit``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, DaemonFactory

SLOW_AGENT = ("--agent", "tests.e2e.slow_agent:slow_agent")
SCREEN_TIMEOUT_S = 10.0


def _tmux_or_skip() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        message = "the chat terminal tests need tmux (Debian package: tmux)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return tmux


class Terminal:
    def __init__(self, tmux: str, socket: str) -> None:
        self.tmux = tmux
        self.socket = socket

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [self.tmux, "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return result.stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-x", "120", "-y", "40", command)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "0", "-l", text)
        self.run("send-keys", "-t", "0", "Enter")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "0")

    def wait_for(self, pattern: str, timeout: float = SCREEN_TIMEOUT_S) -> str:
        """The screen once *pattern* (a regex) is on it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"{pattern!r} never showed up; the screen:\n{screen}")
            time.sleep(0.05)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    tmux = _tmux_or_skip()
    term = Terminal(tmux, f"trio-channel-test-{os.getpid()}")
    try:
        yield term
    finally:
        subprocess.run(
            [tmux, "-L", term.socket, "kill-server"], capture_output=True, timeout=10
        )


def chat_command(url: str, history: Path) -> str:
    python = shlex.quote(sys.executable)
    # No secret from the test run's environment; exit status shown at the end.
    return (
        f"cd {shlex.quote(str(REPO_ROOT))} && "
        "env -u TRIO_CHANNEL_TOKEN -u TRIO_CHANNEL_TOKEN_ISSUE_SECRET "
        f"{python} -m trio_channel chat {shlex.quote(url)} "
        f"--history {shlex.quote(str(history))}; echo EXITED $?; sleep 30"
    )


def test_a_person_chats_across_a_daemon_restart(
    terminal: Terminal, spawn_daemon: DaemonFactory, tmp_path: Path
):
    daemon = spawn_daemon(*SLOW_AGENT)
    url = f"http://127.0.0.1:{daemon.port}/"
    terminal.start(chat_command(url, tmp_path / "history"))
    first = terminal.wait_for(r"connected to .*\(chat [0-9a-f-]{36}\)")
    first_chat = re.search(r"\(chat ([0-9a-f-]{36})\)", first)
    assert first_chat is not None
    terminal.wait_for(r"chat [0-9a-f]{8} \| idle \| connected")

    terminal.type("hello from tmux")
    terminal.wait_for(r"agent: hello from tmux")

    # A streamed reply arrives piece by piece and ends whole on screen.
    terminal.type("stream:200")
    terminal.wait_for(r"chunk 200")
    assert "chunk 1 chunk 2 chunk 3" in terminal.screen()

    # The bar says running while the agent works, idle once it is done.
    terminal.type("sleep:1 slow reply")
    terminal.wait_for(r"\| running \d+s \|")
    terminal.wait_for(r"agent: sleep:1 slow reply")
    terminal.wait_for(r"\| idle \|")

    terminal.type("/new")
    second = terminal.wait_for(r"· new chat [0-9a-f-]{36}")
    second_chat = re.search(r"· new chat ([0-9a-f-]{36})", second)
    assert second_chat is not None
    terminal.type("/chats")
    screen = terminal.wait_for(rf"\* {second_chat.group(1)}")
    assert first_chat.group(1) in screen
    terminal.type(f"/attach {first_chat.group(1)[:8]}")
    terminal.wait_for(rf"switched to chat {first_chat.group(1)}")
    terminal.wait_for(rf"chat {first_chat.group(1)[:8]} \|")

    # The daemon restarts; the person keeps typing and does nothing else.
    port = daemon.port
    assert daemon.stop() == 0
    terminal.wait_for(r"reconnecting")
    terminal.type("typed while the daemon was down")
    spawn_daemon(*SLOW_AGENT, "--port", str(port), data_dir=daemon.data_dir)
    terminal.wait_for(r"· reconnected", timeout=15)
    terminal.wait_for(r"agent: typed while the daemon was down")
    terminal.wait_for(r"\| idle \| connected")

    terminal.type("/quit")
    terminal.wait_for(r"EXITED 0")
