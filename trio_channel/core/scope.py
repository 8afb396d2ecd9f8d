"""Workspace scope policy: which ``workspace_scope`` values a client may set.

The policy is pluggable because what a "workspace" is belongs to the agent
runtime, not to the channel. The default is deliberately strict: workspace
controls are for the person at the machine, so only loopback peers may set a
non-default scope, and never in the middle of a running turn.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import msgspec

LOCALHOST_ONLY = "workspace controls are localhost-only"
CHAT_RUNNING = "chat_running"
NOT_AN_OBJECT = "workspace_scope must be a JSON object"
TOO_LARGE = "workspace_scope is larger than 4 KiB"

MAX_SCOPE_BYTES = 4096

_encoder = msgspec.json.Encoder()


@attrs.frozen
class ScopeAccepted:
    #: The resolved scope handed to the agent and stored on the chat (None:
    #: the default scope).
    scope: Any


@attrs.frozen
class ScopeRejected:
    reason: str


class ScopePolicy(Protocol):
    """Decides on a requested scope. Must be pure and fast (no I/O)."""

    def resolve(
        self, requested: Any, *, peer_is_loopback: bool, chat_running: bool
    ) -> ScopeAccepted | ScopeRejected: ...


@attrs.frozen
class DefaultScopePolicy:
    """A JSON object of at most 4 KiB, from loopback peers, not mid-turn.

    ``None`` and ``{}`` are the default scope and are always accepted.
    """

    max_bytes: int = MAX_SCOPE_BYTES

    def resolve(
        self, requested: Any, *, peer_is_loopback: bool, chat_running: bool
    ) -> ScopeAccepted | ScopeRejected:
        if requested is None or requested == {}:
            return ScopeAccepted(None)
        if not isinstance(requested, dict):
            return ScopeRejected(NOT_AN_OBJECT)
        if len(_encoder.encode(requested)) > self.max_bytes:
            return ScopeRejected(TOO_LARGE)
        if not peer_is_loopback:
            return ScopeRejected(LOCALHOST_ONLY)
        if chat_running:
            return ScopeRejected(CHAT_RUNNING)
        return ScopeAccepted(requested)
