"""Where ``trio-channel chat`` writes and reads: a terminal, or plain pipes.

:class:`TerminalScreen` uses prompt_toolkit: line editing, history kept in
a file, a status bar (connection, running/idle) at the bottom, and the reply
being streamed shown just above the input line while the person types.
Finished lines are printed above everything and scroll as usual. The prompt
runs in a worker thread (prompt_toolkit has an event loop of its own), and
everything the trio side changes is handed over with thread-safe calls:
``print`` through prompt_toolkit's stdout proxy, ``invalidate`` for repaints.

:class:`PlainScreen` is for standard input that is not a terminal (a pipe, a
script): it reads lines, prints whole lines, and prints status changes as
lines of their own.

:class:`LineFlow` (pure) cuts streamed text into lines that fit the width,
so a long reply scrolls by as it arrives instead of growing a huge live area.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

__all__ = ["LineFlow", "PlainScreen", "Screen", "TerminalScreen", "default_history"]


class Screen(Protocol):
    def print(self, line: str) -> None: ...
    def set_live(self, text: str) -> None: ...
    def set_status(self, text: str) -> None: ...
    async def read_line(self) -> str | None: ...
    def close(self) -> None: ...


@attrs.define
class LineFlow:
    """Streamed text in, whole lines (at most ``width`` wide) out."""

    width: int = 80
    pending: str = ""

    def feed(self, text: str) -> list[str]:
        """Add *text*; return the lines it completed."""
        self.pending += text
        lines: list[str] = []
        width = max(self.width, 10)
        while True:
            newline = self.pending.find("\n")
            if 0 <= newline <= width:
                lines.append(self.pending[:newline])
                self.pending = self.pending[newline + 1 :]
                continue
            if len(self.pending) > width:
                cut = self.pending.rfind(" ", 0, width + 1)
                if cut <= 0:
                    cut = width
                lines.append(self.pending[:cut].rstrip(" "))
                self.pending = self.pending[cut:].lstrip(" ")
                continue
            return lines

    def finish(self) -> list[str]:
        """The last, incomplete line (if any); the flow is then empty."""
        rest, self.pending = self.pending, ""
        return [rest] if rest else []


def default_history() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "trio-channel" / "chat_history"


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


class PlainScreen:
    """Lines in, lines out: for pipes and scripts."""

    def __init__(self) -> None:
        self._status = ""

    def print(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def set_live(self, text: str) -> None:
        pass  # only whole lines reach a pipe

    def set_status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.print(f"[{text}]")

    async def read_line(self) -> str | None:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        return line.rstrip("\n") if line else None

    def close(self) -> None:
        pass


class TerminalScreen:
    """prompt_toolkit in a worker thread; see the module doc."""

    def __init__(self, history_file: Path | None, prompt: str = "> ") -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory, History, InMemoryHistory
        from prompt_toolkit.patch_stdout import patch_stdout

        history: History = InMemoryHistory()
        if history_file is not None:
            try:
                history_file.parent.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(history_file))
            except OSError:
                pass  # no history file, still a chat
        self._prompt = prompt
        self._live = ""
        self._status = ""
        self._lock = threading.Lock()
        self._session: Any = PromptSession(
            message=self._message,
            history=history,
            bottom_toolbar=self._toolbar,
            refresh_interval=1.0,
        )
        self._patch = patch_stdout(raw=True)
        self._patch.__enter__()

    # Called in the prompt's thread.
    def _message(self) -> str:
        with self._lock:
            live = self._live
        return f"{live}\n{self._prompt}" if live else self._prompt

    def _toolbar(self) -> str:
        with self._lock:
            return f" {self._status}"

    # Called from trio.
    def print(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def set_live(self, text: str) -> None:
        with self._lock:
            if text == self._live:
                return
            self._live = text
        self._invalidate()

    def set_status(self, text: str) -> None:
        with self._lock:
            if text == self._status:
                return
            self._status = text
        self._invalidate()

    def _invalidate(self) -> None:
        app = self._session.app
        if app.is_running:
            app.invalidate()  # thread-safe: schedules a repaint on its loop

    async def read_line(self) -> str | None:
        try:
            line: str = await trio.to_thread.run_sync(
                self._session.prompt, abandon_on_cancel=True
            )
        except (EOFError, KeyboardInterrupt):
            return None
        return line

    def close(self) -> None:
        app = self._session.app
        loop = getattr(app, "loop", None)
        if app.is_running and loop is not None:
            loop.call_soon_threadsafe(lambda: app.exit(exception=EOFError()))
        self._patch.__exit__(None, None, None)
