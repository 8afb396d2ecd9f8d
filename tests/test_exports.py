"""The public names of ``trio_channel`` and ``trio_channel.client``, pinned."""

from __future__ import annotations

import trio_channel
import trio_channel.client

PACKAGE = {
    "AgentBusEnds", "AgentEvent", "AgentFunction", "Channel", "ChannelConfig",
    "ChatTurns", "ConfigError", "ConfigErrors", "DefaultScopePolicy", "Delta",
    "FileEdit", "GoalState", "GoalStatus", "InboundMessage", "MediaUrl", "Message",
    "Peer", "ReasoningDelta", "ReasoningEnd", "RuntimeModelUpdated", "ScopeAccepted",
    "ScopePolicy", "ScopeRejected", "ServerBusEnds", "SessionUpdated", "StreamEnd",
    "TurnEnd", "TurnFunction", "build_config", "open_bus", "run_turns", "serve",
    "setup_logging",
}  # fmt: skip

CLIENT = {
    "Admit", "AuthError", "Backoff", "Chat", "ChatCursor", "Client", "ClientError",
    "ConnectInfo", "Connected", "Credentials", "Disconnected", "Notice",
    "ServerAddress", "ServerUnavailable", "StreamAssembler", "connect_info",
    "media_item", "open_client",
}  # fmt: skip


def public(module: object) -> set[str]:
    names = {n for n in vars(module) if not n.startswith("_")}
    # Submodules are reachable as attributes once imported; they are not API.
    return {n for n in names if type(getattr(module, n)).__name__ != "module"}


def test_package_exports() -> None:
    assert public(trio_channel) == PACKAGE


def test_client_exports() -> None:
    assert public(trio_channel.client) == CLIENT
