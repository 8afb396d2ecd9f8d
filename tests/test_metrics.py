"""ChannelMetrics: what each call moves, read back through the rendered page."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from trio_channel.metrics import (
    MAX_EVENT_TYPES,
    ChannelMetrics,
    metrics_allowed,
    payload_bytes,
)

Labels = frozenset[tuple[str, str]]


def scrape(metrics: ChannelMetrics) -> dict[tuple[str, Labels], float]:
    """Parse :meth:`render` back: (sample name, labels) -> value."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: ChannelMetrics, name: str, **labels: str) -> float:
    return scrape(metrics)[(name, frozenset(labels.items()))]


def test_every_family_is_on_the_page_with_its_type():
    body, _ = ChannelMetrics().render()
    types = {
        family.name: family.type
        for family in text_string_to_metric_families(body.decode())
    }
    expected = {
        "trio_channel_connections_open": "gauge",
        "trio_channel_connections": "counter",
        "trio_channel_handshakes": "counter",
        "trio_channel_frames_in": "counter",
        "trio_channel_frames_out": "counter",
        "trio_channel_bytes_in": "counter",
        "trio_channel_bytes_out": "counter",
        "trio_channel_events": "counter",
        "trio_channel_slow_consumers_closed": "counter",
        "trio_channel_rate_limited_frames": "counter",
        "trio_channel_issued_tokens_outstanding": "gauge",
        "trio_channel_tokens_issued": "counter",
        "trio_channel_store_queue_depth": "gauge",
        "trio_channel_store_flush_seconds": "histogram",
    }
    assert {name: types.get(name) for name in expected} == expected


def test_a_fresh_page_reads_zero_everywhere():
    page = scrape(ChannelMetrics())
    assert page[("trio_channel_connections_open", frozenset())] == 0
    assert page[("trio_channel_frames_in_total", frozenset())] == 0
    assert page[("trio_channel_issued_tokens_outstanding", frozenset())] == 0
    assert page[("trio_channel_store_queue_depth", frozenset())] == 0


def test_connections_open_and_total():
    m = ChannelMetrics()
    m.connection_opened()
    m.connection_opened()
    m.connection_closed()
    assert value(m, "trio_channel_connections_open") == 1
    assert value(m, "trio_channel_connections_total") == 2


def test_frames_and_bytes_move_as_called():
    m = ChannelMetrics()
    m.frame_in(10)
    m.frame_in(5)
    m.frames_out(3, 120)
    m.frames_out(1, 7)
    page = scrape(m)
    assert page[("trio_channel_frames_in_total", frozenset())] == 2
    assert page[("trio_channel_bytes_in_total", frozenset())] == 15
    assert page[("trio_channel_frames_out_total", frozenset())] == 4
    assert page[("trio_channel_bytes_out_total", frozenset())] == 127


def test_the_single_counters():
    m = ChannelMetrics()
    m.slow_consumer_closed()
    m.rate_limited()
    m.rate_limited()
    m.token_issued()
    page = scrape(m)
    assert page[("trio_channel_slow_consumers_closed_total", frozenset())] == 1
    assert page[("trio_channel_rate_limited_frames_total", frozenset())] == 2
    assert page[("trio_channel_tokens_issued_total", frozenset())] == 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (101, "accepted"),
        (401, "rejected"),
        (403, "rejected"),
        (429, "rejected"),
        (431, "rejected"),
        (503, "rejected"),
        (418, "rejected"),  # not bound up front: still counted
    ],
)
def test_handshakes_by_outcome_and_status(status, outcome):
    m = ChannelMetrics()
    m.handshake(status)
    m.handshake(status)
    m.handshake(101 if status != 101 else 403)
    name = "trio_channel_handshakes_total"
    assert value(m, name, outcome=outcome, status=str(status)) == 2
    page = scrape(m)
    assert sum(v for (n, _), v in page.items() if n == name) == 3


def test_known_statuses_are_on_the_page_before_any_handshake():
    page = scrape(ChannelMetrics())
    for status in ("401", "403", "503"):
        labels = frozenset({("outcome", "rejected"), ("status", status)})
        assert page[("trio_channel_handshakes_total", labels)] == 0


def test_events_by_type():
    m = ChannelMetrics()
    for name in ("delta", "delta", "message", "custom_thing"):
        m.event(name)
    assert value(m, "trio_channel_events_total", type="delta") == 2
    assert value(m, "trio_channel_events_total", type="message") == 1
    assert value(m, "trio_channel_events_total", type="custom_thing") == 1
    assert value(m, "trio_channel_events_total", type="turn_end") == 0


def test_event_types_are_bounded():
    m = ChannelMetrics()
    for i in range(MAX_EVENT_TYPES * 2):
        m.event(f"kind_{i}")
    page = scrape(m)
    types = {
        dict(labels)["type"]
        for (name, labels), _ in page.items()
        if name == "trio_channel_events_total"
    }
    assert len(types) == MAX_EVENT_TYPES + 1  # the bound, plus "other"
    assert value(m, "trio_channel_events_total", type="other") > 0


def test_store_flush_histogram():
    m = ChannelMetrics()
    m.store_flushed(0.002, 3)
    m.store_flushed(0.3, 1)
    name = "trio_channel_store_flush_seconds"
    assert value(m, f"{name}_count") == 2
    assert value(m, f"{name}_sum") == pytest.approx(0.302)
    assert value(m, f"{name}_bucket", le="0.0025") == 1
    assert value(m, f"{name}_bucket", le="+Inf") == 2


def test_gauge_callbacks_are_read_at_scrape_time():
    m = ChannelMetrics()
    state = {"tokens": 3, "queue": 7}
    calls = []

    def tokens() -> int:
        calls.append("tokens")
        return state["tokens"]

    m.set_gauge_sources(tokens, lambda: state["queue"])
    assert calls == []  # installing a source reads nothing
    assert value(m, "trio_channel_issued_tokens_outstanding") == 3
    assert value(m, "trio_channel_store_queue_depth") == 7
    state.update(tokens=0, queue=42)
    assert value(m, "trio_channel_issued_tokens_outstanding") == 0
    assert value(m, "trio_channel_store_queue_depth") == 42


def test_no_store_reports_a_zero_queue():
    m = ChannelMetrics()
    m.set_gauge_sources(lambda: 5, lambda: 9)
    m.set_gauge_sources(lambda: 5, None)
    assert value(m, "trio_channel_store_queue_depth") == 0


def test_each_instance_has_its_own_registry():
    first, second = ChannelMetrics(), ChannelMetrics()
    assert first.registry is not second.registry
    first.frame_in(100)
    first.handshake(401)
    first.event("delta")
    assert value(first, "trio_channel_frames_in_total") == 1
    assert value(second, "trio_channel_frames_in_total") == 0
    assert value(second, "trio_channel_bytes_in_total") == 0
    labels = {"outcome": "rejected", "status": "401"}
    assert value(second, "trio_channel_handshakes_total", **labels) == 0
    assert value(second, "trio_channel_events_total", type="delta") == 0


def test_the_global_registry_is_left_alone():
    ChannelMetrics().frame_in(1)
    assert REGISTRY.get_sample_value("trio_channel_frames_in_total") is None


@pytest.mark.parametrize(
    ("loopback", "bearer", "allowed"),
    [
        (True, False, True),
        (False, True, True),
        (True, True, True),
        (False, False, False),
    ],
)
def test_metrics_allowed(loopback, bearer, allowed):
    assert metrics_allowed(loopback, bearer) is allowed


@pytest.mark.parametrize(
    ("message", "size"),
    [(b"\xff\x00", 2), ("plain", 5), ("é", 2), ("€x", 4), ("", 0), ("\ud800", 3)],
)
def test_payload_bytes_is_the_utf8_size(message, size):
    assert payload_bytes(message) == size
