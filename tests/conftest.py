"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trio_channel.store.base import SessionStore
from trio_channel.store.memory import MemoryStore
from trio_channel.store.sqlite import SqliteStore

#: Small, so trimming is exercised without thousands of events.
CONTRACT_HISTORY_LIMIT = 50


@pytest.fixture(params=["memory", "sqlite"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[SessionStore]:
    """Every store implementation, running, with ``history_limit`` 50."""
    backend: SessionStore
    if request.param == "memory":
        backend = MemoryStore(history_limit=CONTRACT_HISTORY_LIMIT)
    else:
        backend = SqliteStore(
            tmp_path / "sessions.sqlite3", history_limit=CONTRACT_HISTORY_LIMIT
        )
    await nursery.start(backend.run)
    yield backend
