"""A real ``redis-server`` for the tests: its own port, its own directory.

Started on a free loopback port, killed by PID at teardown (never ``SHUTDOWN``
through a client that might be gone). ``appendfsync`` is chosen per server:
the crash tests need ``always``; ``restart(persist=False)`` loses everything,
as a Redis without persistence does.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .programs import need_program

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 50_000)
        try:
            with socket.socket() as one, socket.socket() as bus:
                one.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port


def command(port: int, *words: str) -> bytes:
    """One command to the server on ``port`` over a raw socket (RESP)."""
    request = f"*{len(words)}\r\n" + "".join(
        f"${len(w.encode())}\r\n{w}\r\n" for w in words
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request.encode())
        return s.recv(65536)


def _wait_for(what: str, check: Callable[[], bool], logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {START_TIMEOUT_S} s:\n{logs()}")
        time.sleep(0.05)


class RedisServer:
    def __init__(
        self,
        directory: Path,
        *,
        appendfsync: str = "always",
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.binary = need_program("redis-server", "redis-server", why="this test")
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = port or free_port()
        #: More ``redis-server`` flags (cluster mode, ``--replicaof``).
        self.extra = tuple(extra)
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
            *self.extra,
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
        return command(self.port, *words)

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


class RedisClusterServers:
    """A Redis Cluster of ``size`` primaries (no replicas) on loopback,
    made with ``redis-cli --cluster create``; ``url`` names every node."""

    def __init__(self, directory: Path, *, size: int = 3) -> None:
        self.cli = need_program("redis-cli", "redis-tools", why="this test")
        self.servers = []
        for i in range(size):
            node = directory / f"node{i}"
            cluster_mode = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            )
            self.servers.append(
                RedisServer(node, port=free_cluster_port(), extra=cluster_mode)
            )

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.servers)
        return f"redis+cluster://{nodes}"

    def start(self) -> RedisClusterServers:
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                str(self.cli),
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        _wait_for(
            "the cluster is not ok",
            lambda: all(
                b"cluster_state:ok" in s.command("CLUSTER", "INFO")
                for s in self.servers
            ),
            lambda: "\n".join(s.log() for s in self.servers),
        )
        return self

    def flushall(self) -> None:
        for server in self.servers:
            server.command("FLUSHALL")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class RedisSentinelSetup:
    """A primary, a replica, and one Sentinel watching them as ``service``
    (quorum 1, a primary is down after 1 s): ``url`` is the Sentinel URL."""

    def __init__(self, directory: Path, *, service: str = "tc") -> None:
        self.service = service
        self.primary = RedisServer(directory / "primary")
        self.replica = RedisServer(
            directory / "replica",
            extra=("--replicaof", "127.0.0.1", str(self.primary.port)),
        )
        self.directory = directory / "sentinel"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self) -> RedisSentinelSetup:
        self.primary.start()
        self.replica.start()
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
        )
        self.proc = subprocess.Popen(
            [str(self.primary.binary), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(
            "the sentinel does not see the replica",
            lambda: self._sees_replica(),
            self.log,
        )
        return self

    def _sees_replica(self) -> bool:
        try:
            answer = command(self.port, "SENTINEL", "REPLICAS", self.service)
        except OSError:
            return False
        return str(self.replica.port).encode() in answer

    def primary_port(self) -> int:
        answer = command(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(answer.split(b"\r\n")[-2])

    def wait_replicated(self) -> None:
        """Until the replica has every write the primary took."""

        def offsets() -> tuple[int, int]:
            found = []
            for server in (self.primary, self.replica):
                info = server.command("INFO", "replication").decode()
                match = re.search(r"(?:master|slave)_repl_offset:(\d+)", info)
                found.append(int(match.group(1)) if match else -1)
            return found[0], found[1]

        _wait_for("the replica is behind", lambda: len(set(offsets())) == 1, self.log)

    def failover(self) -> None:
        """Make the replica the primary (``SENTINEL FAILOVER``) and wait
        until the Sentinel names it."""
        old = self.primary_port()
        answer = command(self.port, "SENTINEL", "FAILOVER", self.service)
        if not answer.startswith(b"+OK"):
            raise RuntimeError(f"SENTINEL FAILOVER: {answer!r}")
        _wait_for("no new primary", lambda: self.primary_port() != old, self.log)

    def log(self) -> str:
        path = self.directory / "sentinel.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.replica.stop()
        self.primary.stop()
