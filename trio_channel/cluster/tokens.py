"""Tokens every node honours: issued on one, spent or used on any other.

A browser fetches a token from node A (bootstrap or the issue route) and may
open its WebSocket on node B behind a load balancer. So issued tokens live
in Redis too, one key each with the token's TTL: opening a WebSocket takes
the key (``DEL``: single use across every node at once), and an API token is
valid on any node until its key expires. Each node keeps using its own
:class:`~trio_channel.core.auth.IssuedTokenStore` for the decision itself;
this module only moves tokens between the nodes' stores.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..core.auth import TOKEN_PREFIX, IssuedTokenStore
from ..store import redis_scripts as lua
from ..store._coredis import Call, RedisLink, Script
from ..store.redis_layout import Layout

__all__ = ["SharedTokens"]

_PUT = Script("put_token", lua.PUT_TOKEN)
_TAKE = Script("take_token", lua.TAKE_TOKEN)
_HAS = Script("has_token", lua.HAS_TOKEN)


@attrs.define(eq=False)
class SharedTokens:
    link: Callable[[], RedisLink]
    ttl_s: float

    async def issued(self, token: str) -> None:
        """A token this node issued: valid on every node (one WebSocket,
        and the API until it expires)."""
        ttl_ms = int(self.ttl_s * 1000)
        await self.link().run_all(
            [
                Call(_PUT, [Layout.issued_token(token)], [ttl_ms]),
                Call(_PUT, [Layout.api_token(token)], [ttl_ms]),
            ]
        )

    async def take_for_handshake(
        self, token: str | None, local: IssuedTokenStore, now: float
    ) -> None:
        """Before the handshake decision: the token is valid here exactly
        when this take won it (so it opens one WebSocket, on one node)."""
        if not token or not token.startswith(TOKEN_PREFIX):
            return
        taken = await self.link().run(Call(_TAKE, [Layout.issued_token(token)], []))
        if int(taken):
            local.adopt(token, now)
        else:
            local.consume(token, now)  # spent elsewhere: not here either

    async def api_token_known(
        self, token: str | None, api_tokens: IssuedTokenStore, now: float
    ) -> None:
        """Before an API decision: adopt a token another node issued."""
        if not token or not token.startswith(TOKEN_PREFIX):
            return
        if api_tokens.is_valid(token, now):
            return
        if int(await self.link().run(Call(_HAS, [Layout.api_token(token)], []))):
            api_tokens.adopt(token, now)
