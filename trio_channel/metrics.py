"""Prometheus metrics of one :class:`~trio_channel.server.Channel`.

:class:`ChannelMetrics` owns its own ``CollectorRegistry``, never
``prometheus_client``'s global one: two channels in one process (and every
test) count separately, and nothing else that imports ``prometheus_client``
shows up on our ``/metrics`` page. The text format is ``prometheus_client``'s
own (:meth:`ChannelMetrics.render`); nothing here writes it by hand.

The server calls the plain methods (``frame_in``, ``event``, ...) on its hot
path. They are cheap and never raise: children of labelled metrics are bound
once (``handshake`` statuses up front, event types on first use) so a call is
a dict lookup and an increment. Gauges that mirror state owned elsewhere (the
issued-token store, the session store's queue) are read by callbacks when the
page is scraped, not kept up to date on every change.

Every method is synchronous and takes no clock: call them from trio code (or
anywhere); :meth:`~ChannelMetrics.render` calls the gauge callbacks, so those
run wherever the page is rendered (the server renders inside trio, where
``trio.current_time()`` works).
"""

from __future__ import annotations

import typing
from collections.abc import Callable

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .core.events import AgentEvent

__all__ = ["ChannelMetrics", "metrics_allowed", "payload_bytes"]

#: HTTP statuses a handshake can end with, bound up front (PROTOCOL 1: 101,
#: 401, 403, 503; a bad or oversized head: 400, 431; 429 is reserved for
#: rate-limited handshakes). Others still count, through ``labels()``.
KNOWN_HANDSHAKE_STATUSES = (101, 400, 401, 403, 429, 431, 503)

#: Agent event types (PROTOCOL 4) bound up front, from the event Structs.
KNOWN_EVENT_TYPES: tuple[str, ...] = tuple(
    str(event_type.__struct_config__.tag) for event_type in typing.get_args(AgentEvent)
)

#: Bounds the ``type`` label: past this many distinct types, new ones are
#: counted as ``other`` so a misbehaving agent cannot grow the page forever.
MAX_EVENT_TYPES = 64

#: Session store flushes are usually sub-millisecond (a write and a fsync
#: batch); the tail is what matters.
FLUSH_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_PREFIX = "trio_channel_"


def metrics_allowed(peer_is_loopback: bool, bearer_ok: bool) -> bool:
    """Who may read ``GET /metrics`` (PROTOCOL 6): loopback or an API token."""
    return peer_is_loopback or bearer_ok


def payload_bytes(message: str | bytes) -> int:
    """UTF-8 size of a received WebSocket message, for :meth:`frame_in`.

    ASCII text (the usual case) costs nothing: ``str.isascii()`` is a flag
    check in CPython, so only non-ASCII text is encoded to be measured.
    """
    if isinstance(message, bytes):
        return len(message)
    if message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))


def _zero() -> float:
    return 0.0


@attrs.define(eq=False)
class ChannelMetrics:
    """Counters, gauges and a histogram for one channel, in their own registry.

    Build one per :class:`~trio_channel.server.Channel`; answer ``/metrics``
    with :meth:`render`.
    """

    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry, init=False)

    connections_open: Gauge = attrs.field(init=False)
    connections_total: Counter = attrs.field(init=False)
    handshakes_total: Counter = attrs.field(init=False)
    frames_in_total: Counter = attrs.field(init=False)
    frames_out_total: Counter = attrs.field(init=False)
    bytes_in_total: Counter = attrs.field(init=False)
    bytes_out_total: Counter = attrs.field(init=False)
    events_total: Counter = attrs.field(init=False)
    slow_consumers_closed_total: Counter = attrs.field(init=False)
    rate_limited_frames_total: Counter = attrs.field(init=False)
    issued_tokens_outstanding: Gauge = attrs.field(init=False)
    tokens_issued_total: Counter = attrs.field(init=False)
    store_queue_depth: Gauge = attrs.field(init=False)
    store_flush_seconds: Histogram = attrs.field(init=False)
    store_degraded: Gauge = attrs.field(init=False)
    store_batch_ops_total: Counter = attrs.field(init=False)
    bad_agent_events_total: Counter = attrs.field(init=False)
    catch_ups_total: Counter = attrs.field(init=False)

    _handshakes: dict[int, Counter] = attrs.field(factory=dict, init=False)
    _events: dict[str, Counter] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        reg = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(_PREFIX + name, doc, labels, registry=reg)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(_PREFIX + name, doc, registry=reg)

        self.connections_open = gauge(
            "connections_open", "WebSocket connections open now."
        )
        self.connections_total = counter(
            "connections_total", "WebSocket connections accepted."
        )
        self.handshakes_total = counter(
            "handshakes_total",
            "WebSocket handshakes by outcome and HTTP status.",
            ("outcome", "status"),
        )
        self.frames_in_total = counter(
            "frames_in_total", "WebSocket messages received from clients."
        )
        self.frames_out_total = counter(
            "frames_out_total", "WebSocket frames sent to clients."
        )
        self.bytes_in_total = counter(
            "bytes_in_total", "Payload bytes of messages received from clients."
        )
        self.bytes_out_total = counter(
            "bytes_out_total", "Bytes written to clients (frame headers included)."
        )
        self.events_total = counter(
            "events_total", "Events published by the agent, by type.", ("type",)
        )
        self.slow_consumers_closed_total = counter(
            "slow_consumers_closed_total",
            "Connections closed (1013) because their send queue stalled.",
        )
        self.rate_limited_frames_total = counter(
            "rate_limited_frames_total",
            "Client frames dropped by the per-connection rate limit.",
        )
        self.issued_tokens_outstanding = gauge(
            "issued_tokens_outstanding",
            "Issued tokens neither spent nor expired (read at scrape time).",
        )
        self.tokens_issued_total = counter("tokens_issued_total", "Tokens issued.")
        self.store_queue_depth = gauge(
            "store_queue_depth",
            "Events waiting to be written by the session store (read at scrape time).",
        )
        self.store_flush_seconds = Histogram(
            _PREFIX + "store_flush_seconds",
            "Time taken by one session store flush.",
            registry=reg,
            buckets=FLUSH_BUCKETS,
        )
        self.store_degraded = gauge(
            "store_degraded", "1 while the session store cannot take writes."
        )
        self.store_batch_ops_total = counter(
            "store_batch_ops_total", "Operations written by the session store."
        )
        self.bad_agent_events_total = counter(
            "bad_agent_events_total",
            "Agent events dropped because they failed validation, by type.",
            ("type",),
        )
        self.catch_ups_total = counter(
            "catch_ups_total",
            "Times a connection fell behind a chat and caught up from the store.",
        )
        self.issued_tokens_outstanding.set_function(_zero)
        self.store_queue_depth.set_function(_zero)
        for status in KNOWN_HANDSHAKE_STATUSES:
            self._handshake_child(status)
        for type_name in KNOWN_EVENT_TYPES:
            self._events[type_name] = self.events_total.labels(type=type_name)

    # --- hot path ----------------------------------------------------------

    def connection_opened(self) -> None:
        """A WebSocket connection was accepted (after the 101 went out)."""
        self.connections_open.inc()
        self.connections_total.inc()

    def connection_closed(self) -> None:
        """A connection counted by :meth:`connection_opened` ended."""
        self.connections_open.dec()

    def handshake(self, status: int) -> None:
        """A handshake ended: 101 is ``accepted``, anything else ``rejected``."""
        child = self._handshakes.get(status)
        if child is None:
            child = self._handshake_child(status)
        child.inc()

    def frame_in(self, nbytes: int) -> None:
        """One message received (see :func:`payload_bytes` for ``nbytes``)."""
        self.frames_in_total.inc()
        self.bytes_in_total.inc(nbytes)

    def frames_out(self, count: int, nbytes: int) -> None:
        """``count`` frames, ``nbytes`` bytes in all, were written to a client."""
        self.frames_out_total.inc(count)
        self.bytes_out_total.inc(nbytes)

    def event(self, type_name: str) -> None:
        """The agent published one event of ``type_name`` (its ``event`` tag)."""
        child = self._events.get(type_name)
        if child is None:
            if len(self._events) >= MAX_EVENT_TYPES:
                type_name = "other"
            child = self._events.get(type_name)
            if child is None:
                child = self.events_total.labels(type=type_name)
                self._events[type_name] = child
        child.inc()

    def slow_consumer_closed(self) -> None:
        self.slow_consumers_closed_total.inc()

    def rate_limited(self) -> None:
        self.rate_limited_frames_total.inc()

    def token_issued(self) -> None:
        self.tokens_issued_total.inc()

    def store_flushed(self, seconds: float, ops: int) -> None:
        """One batch of ``ops`` writes was committed in ``seconds``."""
        self.store_flush_seconds.observe(seconds)
        self.store_batch_ops_total.inc(ops)

    def store_health(self, degraded_reason: str | None) -> None:
        self.store_degraded.set(0 if degraded_reason is None else 1)

    def bad_agent_event(self, type_name: str) -> None:
        """An agent event failed validation and was dropped."""
        if type_name not in KNOWN_EVENT_TYPES:
            type_name = "other"
        self.bad_agent_events_total.labels(type=type_name).inc()

    def caught_up(self) -> None:
        self.catch_ups_total.inc()

    # --- scrape time -------------------------------------------------------

    def set_gauge_sources(
        self,
        tokens_outstanding: Callable[[], int],
        store_queue_depth: Callable[[], int] | None,
    ) -> None:
        """Install the callbacks read by :meth:`render`.

        ``store_queue_depth`` None (no session store) reports 0. The callbacks
        run on every scrape, where :meth:`render` is called: keep them cheap,
        and make them safe to call there (e.g. ``trio.current_time()`` needs
        the trio thread).
        """
        self.issued_tokens_outstanding.set_function(tokens_outstanding)
        self.store_queue_depth.set_function(store_queue_depth or _zero)

    def render(self) -> tuple[bytes, str]:
        """The exposition page and its ``Content-Type``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # --- helpers -----------------------------------------------------------

    def _handshake_child(self, status: int) -> Counter:
        outcome = "accepted" if status == 101 else "rejected"
        child = self.handshakes_total.labels(outcome=outcome, status=str(status))
        self._handshakes[status] = child
        return child
