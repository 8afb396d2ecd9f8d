"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from trio_channel.store.base import SessionStore
from trio_channel.store.memory import MemoryStore
from trio_channel.store.redis import RedisStore
from trio_channel.store.sqlite import SqliteStore

from .redis_server import RedisServer

#: Small, so trimming is exercised without thousands of events.
CONTRACT_HISTORY_LIMIT = 50


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (tests flush it as they start)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
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
    else:
        redis = request.getfixturevalue("redis_server")
        redis.command("FLUSHALL")
        backend = RedisStore(redis.url, history_limit=CONTRACT_HISTORY_LIMIT)
    await nursery.start(backend.run)
    yield backend
