"""The real ``trio-channel serve`` daemon as a subprocess, for the browser tests.

A :class:`Daemon` can be stopped and started again on the same port and data
directory, which is how the tests restart the server under an open page.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ..e2e.conftest import daemon_env

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0

#: The daemon runs from the repository root, so ``--agent tests.browser.…``
#: can name a test agent.
REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENING_RE = re.compile(r"listening on ws://([^/\s]+):(\d+)/")


class Daemon:
    """``python -m trio_channel serve --port PORT --data-dir DIR FLAGS``.

    The first start uses port 0; :meth:`start` after :meth:`stop` reuses the
    port the first one got, so an open page can find the server again.
    """

    def __init__(self, data_dir: Path, *flags: str) -> None:
        self.data_dir = data_dir
        self.flags = flags
        self.port = 0
        self.host = ""
        self.proc: subprocess.Popen[str] | None = None
        self.exit_statuses: list[int] = []
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def start(self) -> Daemon:
        assert self.proc is None, "already running"
        env = daemon_env()
        command = [
            sys.executable,
            "-m",
            "trio_channel",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.flags,
        ]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        self.proc = proc
        lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(
            target=self._drain, args=(proc, lines), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None:
                proc.wait(timeout=STOP_TIMEOUT_S)
                self._forget(proc)
                pytest.fail(
                    f"the daemon exited ({proc.returncode}) before listening:\n"
                    f"{self.stderr}"
                )
            found = _LISTENING_RE.search(line)
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                return self
            if time.monotonic() >= deadline:
                self._kill()
                pytest.fail(
                    f"no 'listening on' line within {START_TIMEOUT_S}s:\n{self.stderr}"
                )

    def _drain(
        self, proc: subprocess.Popen[str], lines: queue.Queue[str | None]
    ) -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                with self._lock:
                    self._lines.append(line)
                lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            lines.put(None)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status (kills and fails on a hang)."""
        proc = self.proc
        if proc is None:
            return self.exit_statuses[-1] if self.exit_statuses else 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail(
                f"the daemon did not exit within {STOP_TIMEOUT_S}s:\n{self.stderr}"
            )
        self._forget(proc)
        self.exit_statuses.append(status)
        return status

    def restart(self) -> Daemon:
        """Stop (it must exit 0), then start again on the same port and data."""
        status = self.stop()
        assert status == 0, f"exit status {status}:\n{self.stderr}"
        return self.start()

    def _kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
        self._forget(proc)

    def _forget(self, proc: subprocess.Popen[str]) -> None:
        self.proc = None
        # The process is gone, so its stderr reaches EOF and the drain ends.
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
        if proc.stderr is not None and not (self._thread and self._thread.is_alive()):
            proc.stderr.close()
