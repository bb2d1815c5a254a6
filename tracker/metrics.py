"""Prometheus metrics: what the server counts, and the text `GET /metrics` answers.

One `Metrics` per app, with its own `CollectorRegistry` (never the library's
global one: tests build many apps, and each must count alone). The code
paths that count hold it through the app's `Tracker` (tracker/context.py)
and call a method or a pre-bound labelled child: a counter's `inc` costs
about a microsecond (a lock), fine once per request or commit; nothing looks
a label up per position, and the fan-out path, which writes to every
subscriber, adds to plain integers instead (`WebSocketMeter`).

What is counted where:
- ingest requests by wire format (`native`, `osmand`, `owntracks`) and HTTP
  status: tracker/api/ingest.py;
- positions committed, positions per commit, commit latency, failed
  commits: tracker/writer.py;
- WebSocket connections open, messages sent and slow-consumer closes, by
  endpoint (`realtime`, `share`): tracker/app.py hands each connection its
  endpoint's `WebSocketMeter`, and tracker/websocket.py adds to it;
- OwnTracks messages taken from the MQTT broker, by what became of them,
  and whether tracker is subscribed there now: tracker/ingest/mqtt.py;
- requests refused by the share rate limit (tracker/api/share.py) or the
  per-address connection cap (tracker/connlimit.py);
- share sessions active and the age of the newest position: read from the
  store by the scrape handler (tracker/api/health.py) into `StoreFigures`
  just before the text is generated, so the event loop never runs SQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WEBSOCKET_ENDPOINTS = ("realtime", "share")
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
MQTT_RESULTS = (
    "stored",  # a location, committed
    "duplicate",  # a location already stored (same device and time): a resend
    "unknown_topic",  # no device has this topic: not stored
    "malformed",  # not JSON, or a location with a wrong value: not stored
    "encrypted",  # `_type: encrypted`: unreadable without the app's key
    "ignored",  # not a location (transition, card, lwt, ...) or one without coordinates
    "failed",  # the database could not store it: not acknowledged, tried again
)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class WebSocketMeter:
    """The figures of one WebSocket endpoint, plain integers its connections add to.

    The fan-out path writes to a thousand sockets per delivery: a prometheus
    counter's `inc` (a lock, about a microsecond or more) per write would be
    a visible share of it, an integer addition is not. Every change happens
    on the event loop's thread; `WebSocketFigures` reads them at scrape time.
    """

    __slots__ = ("open", "sent", "slow_closes")

    def __init__(self) -> None:
        self.open = 0
        self.sent = 0
        self.slow_closes = 0


class WebSocketFigures(Collector):
    """The WebSocket meters as metrics, by endpoint."""

    def __init__(self, meters: dict[str, WebSocketMeter]):
        self.meters = meters

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "tracker_websocket_connections",
            "WebSocket connections open, by endpoint.",
            labels=["endpoint"],
        )
        sent = CounterMetricFamily(
            "tracker_websocket_messages_sent",
            "WebSocket messages (deliveries) sent, by endpoint: positions, batches and"
            " control messages.",
            labels=["endpoint"],
        )
        slow = CounterMetricFamily(
            "tracker_websocket_slow_consumer_closes",
            "WebSocket clients closed for falling behind (4009) or cut for not reading.",
            labels=["endpoint"],
        )
        for endpoint, meter in self.meters.items():
            connections.add_metric([endpoint], meter.open)
            sent.add_metric([endpoint], meter.sent)
            slow.add_metric([endpoint], meter.slow_closes)
        yield from (connections, sent, slow)


class StoreFigures(Collector):
    """Figures read from the store at scrape time; left out of the text while unknown."""

    def __init__(self) -> None:
        self.active_share_sessions: int | None = None
        self.newest_position_at: float | None = None  # unix seconds of the newest fix

    def collect(self) -> Iterator[Metric]:
        if self.active_share_sessions is not None:
            yield GaugeMetricFamily(
                "tracker_share_sessions_active",
                "Share sessions active now (not ended, not past their expiry).",
                value=self.active_share_sessions,
            )
        if self.newest_position_at is not None:
            yield GaugeMetricFamily(
                "tracker_newest_position_age_seconds",
                "Seconds since the newest stored position was taken (fixes dated in the future"
                " are left out).",
                value=max(0.0, time.time() - self.newest_position_at),
            )


class Metrics:
    """The app's metrics, in a registry of their own."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self._ingest_requests = Counter(
            "tracker_ingest_requests",
            "Ingest requests answered, by wire format and HTTP status.",
            ["format", "status"],
            registry=registry,
        )
        self._ingest_children: dict[tuple[str, int], Counter] = {}
        self._positions_committed = Counter(
            "tracker_positions_committed",
            "Positions stored (duplicates not counted).",
            registry=registry,
        )
        self._commit_failures = Counter(
            "tracker_commit_failures",
            "Group commits of ingest requests that failed (disk full, I/O error, a bug).",
            registry=registry,
        )
        self._batch_positions = Histogram(
            "tracker_commit_batch_positions",
            "Positions per group commit.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self._commit_seconds = Histogram(
            "tracker_commit_seconds",
            "Time from starting a group commit to its end, waiting for the writer included.",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self.websockets = {endpoint: WebSocketMeter() for endpoint in WEBSOCKET_ENDPOINTS}
        registry.register(WebSocketFigures(self.websockets))
        refused = Counter(
            "tracker_requests_refused",
            "Requests and WebSocket handshakes refused, by reason: the share rate limit or the"
            " per-address connection cap.",
            ["reason"],
            registry=registry,
        )
        self.refused_by_rate_limit = refused.labels("rate_limit")
        self.refused_by_connection_cap = refused.labels("connection_cap")
        mqtt_messages = Counter(
            "tracker_mqtt_messages",
            "OwnTracks messages received from the MQTT broker, by what became of them.",
            ["result"],
            registry=registry,
        )
        self.mqtt_messages = {result: mqtt_messages.labels(result) for result in MQTT_RESULTS}
        self.mqtt_subscribed = Gauge(
            "tracker_mqtt_subscribed",
            "1 while tracker is connected to the MQTT broker and subscribed, else 0.",
            registry=registry,
        )
        self.store_figures = StoreFigures()
        registry.register(self.store_figures)

    def ingest_answered(self, wire_format: str, status: int) -> None:
        key = (wire_format, status)
        child = self._ingest_children.get(key)
        if child is None:
            child = self._ingest_children[key] = self._ingest_requests.labels(
                wire_format, str(status)
            )
        child.inc()

    def committed(self, positions: int, stored: int, seconds: float) -> None:
        self._positions_committed.inc(stored)
        self._batch_positions.observe(positions)
        self._commit_seconds.observe(seconds)

    def commit_failed(self) -> None:
        self._commit_failures.inc()

    def exposition(self) -> bytes:
        """The text a scrape answers (Prometheus' text format)."""
        return generate_latest(self.registry)
