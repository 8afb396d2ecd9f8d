"""Prometheus metrics of one :class:`~trio_channel.server.Channel`.

:class:`ChannelMetrics` owns its own ``CollectorRegistry``, never
``prometheus_client``'s global one: two channels in one process (and every
test) count separately, and nothing else that imports ``prometheus_client``
shows up on our ``/metrics`` page. The text format is ``prometheus_client``'s
own (:meth:`ChannelMetrics.render`); nothing here writes it by hand.

The server calls the plain methods (``frame_in``, ``event``, ...) on its hot
path. They are cheap and never raise. Those called per frame, per event, per
commit or per connection add to plain integers (:class:`_Tally`), which a
collector turns into metric families when the page is scraped:
``prometheus_client``'s own counters take a lock per increment, which was 3%
of a round trip's CPU (docs/benchmarks.md). The rare ones (slow consumers,
rate limits, tokens) stay ``prometheus_client`` counters. Gauges that mirror
state owned elsewhere (the issued-token store, the session store's queue)
are read by callbacks when the page is scraped, not kept up to date on every
change.

Every method is synchronous and takes no clock: call them from trio code (or
anywhere); :meth:`~ChannelMetrics.render` calls the gauge callbacks, so those
run wherever the page is rendered (the server renders inside trio, where
``trio.current_time()`` works).
"""

from __future__ import annotations

import bisect
import typing
from collections.abc import Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

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
class _Tally(Collector):
    """The hot counters as plain numbers, turned into families at scrape time."""

    connections_open: int = 0
    connections_total: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    batch_ops: int = 0
    #: (outcome, status) -> count.
    handshakes: dict[tuple[str, str], int] = attrs.field(factory=dict)
    #: event type -> count.
    events: dict[str, int] = attrs.field(factory=dict)
    #: Per bucket of FLUSH_BUCKETS, then +Inf (not cumulative until scraped).
    flush_buckets: list[int] = attrs.field(
        factory=lambda: [0] * (len(FLUSH_BUCKETS) + 1)
    )
    flush_sum: float = 0.0

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "connections_open", "WebSocket connections open now.", self.connections_open
        )
        yield _counter(
            "connections", "WebSocket connections accepted.", self.connections_total
        )
        handshakes = CounterMetricFamily(
            _PREFIX + "handshakes",
            "WebSocket handshakes by outcome and HTTP status.",
            labels=("outcome", "status"),
        )
        for (outcome, status), count in self.handshakes.items():
            handshakes.add_metric((outcome, status), count)
        yield handshakes
        yield _counter(
            "frames_in", "WebSocket messages received from clients.", self.frames_in
        )
        yield _counter(
            "frames_out", "WebSocket frames sent to clients.", self.frames_out
        )
        yield _counter(
            "bytes_in",
            "Payload bytes of messages received from clients.",
            self.bytes_in,
        )
        yield _counter(
            "bytes_out",
            "Bytes written to clients (frame headers included).",
            self.bytes_out,
        )
        events = CounterMetricFamily(
            _PREFIX + "events",
            "Events published by the agent, by type.",
            labels=("type",),
        )
        for type_name, count in self.events.items():
            events.add_metric((type_name,), count)
        yield events
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*FLUSH_BUCKETS, float("inf")), self.flush_buckets, strict=True
        ):
            cumulative += count
            buckets.append((_bound_text(bound), cumulative))
        yield HistogramMetricFamily(
            _PREFIX + "store_flush_seconds",
            "Time taken by one session store flush.",
            buckets=buckets,
            sum_value=self.flush_sum,
        )
        yield _counter(
            "store_batch_ops",
            "Operations written by the session store.",
            self.batch_ops,
        )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, doc, value=value)


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


@attrs.define(eq=False)
class ChannelMetrics:
    """Counters, gauges and a histogram for one channel, in their own registry.

    Build one per :class:`~trio_channel.server.Channel`; answer ``/metrics``
    with :meth:`render`.
    """

    registry: CollectorRegistry = attrs.field(factory=CollectorRegistry, init=False)

    _tally: _Tally = attrs.field(factory=_Tally, init=False)
    slow_consumers_closed_total: Counter = attrs.field(init=False)
    rate_limited_frames_total: Counter = attrs.field(init=False)
    issued_tokens_outstanding: Gauge = attrs.field(init=False)
    tokens_issued_total: Counter = attrs.field(init=False)
    store_queue_depth: Gauge = attrs.field(init=False)
    store_degraded: Gauge = attrs.field(init=False)
    bad_agent_events_total: Counter = attrs.field(init=False)
    catch_ups_total: Counter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        reg = self.registry
        reg.register(self._tally)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(_PREFIX + name, doc, labels, registry=reg)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(_PREFIX + name, doc, registry=reg)

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
        self.store_degraded = gauge(
            "store_degraded", "1 while the session store cannot take writes."
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
        tally = self._tally
        for status in KNOWN_HANDSHAKE_STATUSES:
            tally.handshakes[_handshake_labels(status)] = 0
        for type_name in KNOWN_EVENT_TYPES:
            tally.events[type_name] = 0

    # --- hot path ----------------------------------------------------------

    def connection_opened(self) -> None:
        """A WebSocket connection was accepted (after the 101 went out)."""
        self._tally.connections_open += 1
        self._tally.connections_total += 1

    def connection_closed(self) -> None:
        """A connection counted by :meth:`connection_opened` ended."""
        self._tally.connections_open -= 1

    def handshake(self, status: int) -> None:
        """A handshake ended: 101 is ``accepted``, anything else ``rejected``."""
        key = _handshake_labels(status)
        handshakes = self._tally.handshakes
        handshakes[key] = handshakes.get(key, 0) + 1

    def frame_in(self, nbytes: int) -> None:
        """One message received (see :func:`payload_bytes` for ``nbytes``)."""
        tally = self._tally
        tally.frames_in += 1
        tally.bytes_in += nbytes

    def frames_out(self, count: int, nbytes: int) -> None:
        """``count`` frames, ``nbytes`` bytes in all, were written to a client."""
        tally = self._tally
        tally.frames_out += count
        tally.bytes_out += nbytes

    def event(self, type_name: str) -> None:
        """The agent published one event of ``type_name`` (its ``event`` tag)."""
        events = self._tally.events
        count = events.get(type_name)
        if count is None and len(events) >= MAX_EVENT_TYPES:
            type_name = "other"
            count = events.get(type_name)
        events[type_name] = (count or 0) + 1

    def slow_consumer_closed(self) -> None:
        self.slow_consumers_closed_total.inc()

    def rate_limited(self) -> None:
        self.rate_limited_frames_total.inc()

    def token_issued(self) -> None:
        self.tokens_issued_total.inc()

    def store_flushed(self, seconds: float, ops: int) -> None:
        """One batch of ``ops`` writes was committed in ``seconds``."""
        tally = self._tally
        tally.flush_buckets[bisect.bisect_left(FLUSH_BUCKETS, seconds)] += 1
        tally.flush_sum += seconds
        tally.batch_ops += ops

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


def _handshake_labels(status: int) -> tuple[str, str]:
    return ("accepted" if status == 101 else "rejected", str(status))
