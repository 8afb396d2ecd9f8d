"""Where everything lives in Redis (pure): partitions and key names.

A chat belongs to partition ``crc32(chat_id) % P``. Every key of a chat, and
the partition's own streams, carry the partition's hash tag ``{p}``, so one
Lua script can touch all of them and standalone Redis, Sentinel and Cluster
behave alike (SCALEOUT "data layout"). Keys shared by every node (tokens,
the media secret, the partition count) hold one value each, so they need no
common slot either.
"""

from __future__ import annotations

import zlib
from typing import Final

import attrs

__all__ = ["ChatKeys", "Layout", "partition_of"]

PREFIX: Final = "tc"
DEFAULT_PARTITIONS: Final = 16
#: HASH: ``partitions``, set by the first node; the others must agree.
CONF_KEY: Final = f"{PREFIX}:conf"
#: ZSET node id -> expiry (Redis time, ms): the live nodes.
NODES_KEY: Final = f"{PREFIX}:nodes"
#: The media URL signing secret, created once by whichever node is first.
MEDIA_SECRET_KEY: Final = f"{PREFIX}:media-secret"
PROBE_KEY: Final = f"{PREFIX}:probe"


def partition_of(chat_id: str, partitions: int) -> int:
    """The partition a chat belongs to: stable across nodes and restarts."""
    return zlib.crc32(chat_id.encode("utf-8", "surrogatepass")) % partitions


@attrs.frozen
class ChatKeys:
    """Every key of one chat, all in its partition's slot."""

    partition: int
    meta: str
    log: str
    eids: str
    users: str
    recent: str
    fan: str
    inbox: str
    sessions: str
    fence: str


@attrs.frozen
class Layout:
    partitions: int = DEFAULT_PARTITIONS

    def tag(self, partition: int) -> str:
        return f"{PREFIX}:{{{partition}}}"

    def chat(self, chat_id: str) -> ChatKeys:
        partition = partition_of(chat_id, self.partitions)
        tag = self.tag(partition)
        base = f"{tag}:c:{chat_id}"
        return ChatKeys(
            partition=partition,
            meta=f"{base}:meta",
            log=f"{base}:log",
            eids=f"{base}:eids",
            users=f"{base}:users",
            recent=f"{base}:recent",
            fan=self.fan(partition),
            inbox=self.inbox(partition),
            sessions=self.sessions(partition),
            fence=self.fence(partition),
        )

    def fan(self, partition: int) -> str:
        """The partition's fan-out stream: every event, for every node."""
        return f"{self.tag(partition)}:fan"

    def inbox(self, partition: int) -> str:
        """Accepted user messages of the partition, for its owner's agent."""
        return f"{self.tag(partition)}:in"

    def started(self, partition: int) -> str:
        """HASH inbound entry -> attempt, for turns an agent has started."""
        return f"{self.tag(partition)}:started"

    def sessions(self, partition: int) -> str:
        """ZSET chat id -> updated_at, for the sessions API."""
        return f"{self.tag(partition)}:sessions"

    def lease(self, partition: int) -> str:
        return f"{self.tag(partition)}:lease"

    def fence(self, partition: int) -> str:
        """The partition's current fencing token (its owner's)."""
        return f"{self.tag(partition)}:fence"

    # --- shared by every node ----------------------------------------------

    @staticmethod
    def issued_token(token: str) -> str:
        return f"{PREFIX}:tok:{token}"

    @staticmethod
    def api_token(token: str) -> str:
        return f"{PREFIX}:api:{token}"
