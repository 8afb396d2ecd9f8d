"""Session stores: the interface (:mod:`.base`) and its implementations.

:func:`open_store` picks one from the configuration: ``sqlite`` (the
default, a file in ``data_dir``), ``memory`` (nothing is kept) or a Redis
URL (several daemons share it; :mod:`.redis_url` says which kinds).
"""

from __future__ import annotations

from pathlib import Path

from ..config import ChannelConfig
from .base import SessionStore
from .memory import MemoryStore
from .redis_url import is_redis_url
from .sqlite import SqliteStore

__all__ = ["STORE_FILE", "open_store"]

#: The SQLite file of the session store, inside ``data_dir``.
STORE_FILE = "sessions.sqlite3"


def open_store(cfg: ChannelConfig) -> SessionStore:
    """The store ``cfg.session_store`` names (run it with ``nursery.start``)."""
    if cfg.session_store == "memory":
        return MemoryStore(history_limit=cfg.history_limit)
    if is_redis_url(cfg.session_store):
        # Imported only here: coredis is a third of the daemon's import time.
        from .redis import RedisStore

        return RedisStore(
            cfg.session_store,
            history_limit=cfg.history_limit,
            partitions=cfg.redis_partitions,
            chat_ttl_s=cfg.redis_chat_ttl_s,
        )
    return SqliteStore(
        Path(cfg.data_dir) / STORE_FILE,
        history_limit=cfg.history_limit,
        synchronous=cfg.sqlite_synchronous,
    )
