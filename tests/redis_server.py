"""A real ``redis-server`` for the tests: its own port, its own directory.

Started on a free loopback port, killed by PID at teardown (never ``SHUTDOWN``
through a client that might be gone). ``appendfsync`` is chosen per server:
the crash tests need ``always``; ``restart(persist=False)`` loses everything,
as a Redis without persistence does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .programs import need_program

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, *, appendfsync: str = "always") -> None:
        self.binary = need_program("redis-server", "redis-server", why="this test")
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, persist: bool = True) -> RedisServer:
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if persist else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5
                ) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log()}")
            time.sleep(0.02)

    def command(self, *words: str) -> bytes:
        """One command over a raw socket (RESP), for fixtures."""
        request = f"*{len(words)}\r\n" + "".join(
            f"${len(w.encode())}\r\n{w}\r\n" for w in words
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request.encode())
            return s.recv(65536)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, *, persist: bool = True) -> None:
        """kill -9, then start again on the same port (and, if ``persist``,
        from the same append-only file)."""
        self.kill9()
        if not persist:
            for path in self.directory.glob("appendonly*"):
                if path.is_dir():
                    for part in path.iterdir():
                        part.unlink()
                    path.rmdir()
                else:
                    path.unlink()
        self.start(persist=persist)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        self.kill9()
