"""The real ``trio-channel serve`` daemon as a subprocess, for end-to-end tests.

``spawn_daemon`` (one test) and ``spawn_module_daemon`` (one module) are
factories: call them with extra ``serve`` flags and get a running
:class:`Daemon`. Start-up waits for the ``listening on URL`` log line (at most
15 s); teardown sends SIGTERM and fails the test unless the daemon exits with
status 0 within 10 s. stderr is drained by a thread so the pipe never fills.
"""

from __future__ import annotations

import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

#: The daemon runs from the repository root, so ``--agent tests.e2e.…`` works.
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0

_LISTENING_RE = re.compile(r"listening on (\S+)")
#: The daemon must not pick up a secret from the environment of the test run.
_SECRET_ENV = ("TRIO_CHANNEL_TOKEN", "TRIO_CHANNEL_TOKEN_ISSUE_SECRET")


#: Dropped from a daemon's environment: secrets the tests set themselves,
#: and PYTHONDONTWRITEBYTECODE, which made every daemon compile the package
#: again (a tenth of its start-up).
_DROPPED_ENV = (*_SECRET_ENV, "PYTHONDONTWRITEBYTECODE")


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def serve_command(data_dir: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trio_channel",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        *flags,
    ]


class Daemon:
    """A running daemon: ``url`` as logged, ``port`` (None on a unix socket)."""

    def __init__(
        self, data_dir: Path, *flags: str, file_size_limit: int | None = None
    ) -> None:
        self.data_dir = data_dir
        self.flags = flags
        self.proc = subprocess.Popen(
            serve_command(data_dir, *flags),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=daemon_env(),
            # From the repository root, so --agent tests.e2e.... can name a
            # test agent.
            cwd=REPO_ROOT,
            preexec_fn=None
            if file_size_limit is None
            else _limit_files(file_size_limit),
        )
        #: Killed on purpose (kill -9): its exit status is not checked.
        self.killed = False
        self._terminated = False
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._new_lines: queue.Queue[str | None] = queue.Queue()
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        try:
            self.url = self._wait_listening()
        except BaseException:
            self._kill()
            raise
        parts = urlsplit(self.url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = parts.path

    # --- stderr ---------------------------------------------------------------

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                with self._lines_lock:
                    self._lines.append(line)
                self._new_lines.put(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us at teardown
        finally:
            self._new_lines.put(None)

    @property
    def stderr(self) -> str:
        with self._lines_lock:
            return "".join(self._lines)

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"no 'listening on' line within {START_TIMEOUT_S}s:\n{self.stderr}"
                )
            try:
                line = self._new_lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                pytest.fail(
                    f"the daemon exited ({self.proc.returncode}) before listening:\n"
                    f"{self.stderr}"
                )
            found = _LISTENING_RE.search(line)
            if found:
                return found.group(1)

    # --- URLs -----------------------------------------------------------------

    def ws_url(self, query: str = "", path: str | None = None) -> str:
        """``ws[s]://host:port/path?query`` for this daemon (TCP only)."""
        assert self.port is not None, "a unix-socket daemon has no TCP URL"
        scheme = "wss" if self.scheme == "wss" else "ws"
        target = self.path if path is None else path
        return f"{scheme}://{self.host}:{self.port}{target}" + (
            f"?{query}" if query else ""
        )

    # --- stopping -------------------------------------------------------------

    def terminate(self) -> None:
        """Send SIGTERM once (a second one may be taken as "force quit")."""
        if not self._terminated and self.proc.poll() is None:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the exit status; kill and fail the test after ``timeout``."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail(f"the daemon did not exit within {timeout}s:\n{self.stderr}")
        self._close_pipe()
        return status

    def stop(self) -> int:
        """SIGTERM, then :meth:`wait`; safe to call again once it exited."""
        self.terminate()
        return self.wait()

    def kill9(self) -> None:
        """SIGKILL: the crash a durable store must survive."""
        self.killed = True
        self._kill()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._close_pipe()

    def _close_pipe(self) -> None:
        self._drain.join(timeout=STOP_TIMEOUT_S)
        if self.proc.stderr is not None and not self._drain.is_alive():
            self.proc.stderr.close()


DaemonFactory = Callable[..., Daemon]


def _limit_files(size: int) -> Callable[[], None]:
    """A preexec_fn: files the daemon writes cannot grow past ``size`` bytes
    (a full disk, without root or a tmpfs; Python ignores SIGXFSZ, so a
    write past it fails with EFBIG)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    return limit


def _factory(make_dir: Callable[[], Path]) -> Iterator[DaemonFactory]:
    started: list[Daemon] = []

    def spawn(
        *flags: str, data_dir: Path | None = None, file_size_limit: int | None = None
    ) -> Daemon:
        daemon = Daemon(
            make_dir() if data_dir is None else data_dir,
            *flags,
            file_size_limit=file_size_limit,
        )
        started.append(daemon)
        return daemon

    yield spawn
    failures = []
    started = [daemon for daemon in started if not daemon.killed]
    for daemon in started:
        daemon.terminate()
    for daemon in started:
        try:
            status = daemon.wait()
        except pytest.fail.Exception as exc:  # killed after the timeout
            failures.append(f"{daemon.flags}: {exc}")
            continue
        if status != 0:
            failures.append(f"{daemon.flags}: exit status {status}\n{daemon.stderr}")
    if failures:
        pytest.fail("daemon(s) did not exit cleanly:\n" + "\n".join(failures))


@pytest.fixture
def spawn_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Start daemons for one test; each gets its own data directory."""
    counter = iter(range(1_000))
    yield from _factory(lambda: tmp_path / f"data{next(counter)}")


@pytest.fixture(scope="module")
def spawn_module_daemon(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DaemonFactory]:
    """Start daemons shared by the tests of one module."""
    yield from _factory(lambda: tmp_path_factory.mktemp("data"))
