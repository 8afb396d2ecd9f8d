"""``serve(config, agent)``: the channel and an agent in one call.

What every embedding program (and the daemon) would otherwise wire by hand:
the bus opened with the config's ``bus_capacity``, the :class:`Channel` and
the agent in one nursery, the start-up line, SIGINT/SIGTERM turned into an
orderly shutdown (every client closed with 1001, the store flushed), and the
whole thing stopped when the agent returns.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import trio

from .bus import AgentBusEnds, open_bus
from .config import ChannelConfig, masked_url
from .core.events import AgentEvent, InboundMessage
from .core.scope import ScopePolicy
from .logs import log_listening
from .server import Channel

__all__ = ["AgentFunction", "auth_mode", "page_url", "serve"]

log = logging.getLogger("trio_channel")

#: ``async def agent(inbound, outbound) -> None``.
AgentFunction = Callable[
    [
        trio.MemoryReceiveChannel[InboundMessage],
        trio.MemorySendChannel[AgentEvent],
    ],
    Awaitable[None],
]

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


async def serve(
    config: ChannelConfig,
    agent: AgentFunction,
    *,
    scope_policy: ScopePolicy | None = None,
    signals: Sequence[signal.Signals] = DEFAULT_SIGNALS,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the channel and *agent* together until one of them stops.

    Binds the configured listener, starts *agent* with its ends of a bus of
    ``config.bus_capacity``, logs ``listening on URL ...`` (see
    :func:`trio_channel.logs.log_listening`) and reports the URLs through
    ``task_status``. Returns when the agent returns (logged as a warning), on
    one of *signals* (pass ``()`` to handle signals yourself, or when not in
    the main thread), or when cancelled; in every case every client is
    closed with 1001 and the store is flushed first. An exception from the
    agent or the channel propagates.
    """
    server_ends, agent_ends = open_bus(config.bus_capacity)
    channel = (
        Channel(config, server_ends)
        if scope_policy is None
        else Channel(config, server_ends, scope_policy=scope_policy)
    )
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(channel.serve)
        nursery.start_soon(_run_agent, agent, agent_ends, nursery.cancel_scope)
        for url in urls:
            log_listening(url, **startup_summary(config, url))
        if signals:
            nursery.start_soon(_stop_on_signal, tuple(signals), nursery.cancel_scope)
        task_status.started(urls)


async def _run_agent(
    agent: AgentFunction, ends: AgentBusEnds, scope: trio.CancelScope
) -> None:
    await agent(ends.inbound, ends.outbound)
    log.warning("the agent returned; shutting down")
    scope.cancel()


async def _stop_on_signal(
    signals: tuple[signal.Signals, ...], scope: trio.CancelScope
) -> None:
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            log.info("%s: closing every connection (1001)", signal.Signals(signum).name)
            scope.cancel()
            return


def auth_mode(config: ChannelConfig) -> str:
    """How clients get in, in one word for the start-up line.

    ``open`` (no token needed), ``loopback-bootstrap`` (issued tokens, handed
    out to loopback callers only), ``secret`` (issued tokens for callers that
    send ``token_issue_secret``), ``static-token`` (the configured ``token``,
    which is also the bootstrap secret), or ``secret+static-token``.
    """
    if config.token and config.token_issue_secret:
        return "secret+static-token"
    if config.token:
        return "static-token"
    if not config.websocket_requires_token:
        return "open"
    if config.token_issue_secret:
        return "secret"
    return "loopback-bootstrap"


def page_url(config: ChannelConfig, ws_url: str) -> str:
    """The bundled page's ``http(s)://`` address for a listener, or ``off``."""
    parts = urlsplit(ws_url)
    if not config.webui:
        return "off"
    if parts.scheme not in ("ws", "wss"):
        return "-"  # a unix socket: no browser reaches it
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/", "", ""))


def startup_summary(config: ChannelConfig, ws_url: str) -> dict[str, object]:
    """The ``key=value`` fields of the start-up line (never a secret)."""
    from . import __version__

    return {
        "page": page_url(config, ws_url),
        "auth": auth_mode(config),
        "data_dir": config.data_dir,
        "store": masked_url(config.session_store),
        "agent": config.agent,
        "version": __version__,
    }
