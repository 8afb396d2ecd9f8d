"""Fixtures shared across the suite."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from trio_channel.cli import main
from trio_channel.store.base import SessionStore
from trio_channel.store.memory import MemoryStore
from trio_channel.store.redis import RedisStore
from trio_channel.store.sqlite import SqliteStore

from .redis_server import RedisClusterServers, RedisSentinelSetup, RedisServer

#: Small, so trimming is exercised without thousands of events.
CONTRACT_HISTORY_LIMIT = 50


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (tests flush it as they start)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterServers]:
    """A three-primary Redis Cluster for the session (flushed per test)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisSentinelSetup]:
    """A primary, its replica and a Sentinel for the session."""
    setup = RedisSentinelSetup(tmp_path_factory.mktemp("redis-sentinel")).start()
    yield setup
    setup.stop()


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster", "redis-sentinel"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[SessionStore]:
    """Every store implementation, running, with ``history_limit`` 50."""
    backend: SessionStore
    if request.param == "memory":
        backend = MemoryStore(history_limit=CONTRACT_HISTORY_LIMIT)
    elif request.param == "sqlite":
        backend = SqliteStore(
            tmp_path / "sessions.sqlite3", history_limit=CONTRACT_HISTORY_LIMIT
        )
    elif request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        redis.command("FLUSHALL")
        backend = RedisStore(redis.url, history_limit=CONTRACT_HISTORY_LIMIT)
    elif request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        backend = RedisStore(cluster.url, history_limit=CONTRACT_HISTORY_LIMIT)
    else:
        sentinel = request.getfixturevalue("redis_sentinel")
        sentinel.primary.command("FLUSHALL")
        backend = RedisStore(sentinel.url, history_limit=CONTRACT_HISTORY_LIMIT)
    await nursery.start(backend.run)
    yield backend


@attrs.frozen
class CliResult:
    """What ``trio-channel ARGS`` printed and its exit status."""

    returncode: int
    stdout: str
    stderr: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """Run ``trio-channel`` in this process: ``cli(*argv, env={...})``.

    The command's own ``main`` with its output captured, and an environment
    with no ``TRIO_CHANNEL_*`` variable but the ones ``env`` gives; a fresh
    interpreter per case costs about a second and is not what these tests
    are about (tests/e2e start the real daemon where that is the point).
    """

    def run(*argv: str, env: dict[str, str] | None = None) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.startswith("TRIO_CHANNEL_"):
                    patch.delenv(name)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    status = main(list(argv))
                except SystemExit as exc:  # argparse: --version, --help
                    status = exc.code if isinstance(exc.code, int) else 2
        return CliResult(status, out.getvalue(), err.getvalue())

    return run
