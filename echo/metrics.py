"""``GET /metrics``: the server's counters in the Prometheus text format.

The echo path must stay cheap, so nothing here is a prometheus_client Counter bumped
per message. Each connection keeps plain integers on its own record (see
``echo.engine.Traffic``: messages and bytes each way, all types and binary only); the
engines add to them as they already do for the close log. When a connection ends its
integers are added to the totals of closed connections, and its close codes (sent and
received, the numbers its close log line shows) counted
(:meth:`Metrics.connection_closed`). A scrape asks :class:`Metrics` (a custom
``Collector``) for its families, and it adds the live integers of the open connections
to those totals. The message-size histogram is one shared list of bucket counts
indexed with :func:`bisect.bisect_left`; its sum and count are the bytes and messages
received, which are counted anyway.

Every app has its own :class:`prometheus_client.CollectorRegistry` (never the global
one), with prometheus_client's process collector (memory, CPU, descriptors) beside it.

Handshake timeouts happen below the application, at the listeners (echo.listeners),
which report them to the server, which counts them here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from echo.engine import Connection, Traffic
from echo.httpecho import expect_continue
from echo.limits import Refusal

HANDSHAKE_TIMEOUT = "handshake_timeout"
REFUSAL_REASONS = (*(r.value for r in Refusal), HANDSHAKE_TIMEOUT)
NO_STATUS_CODE = 1005  # RFC 6455 7.1.5: how a close frame without a code is reported
REGISTERED_CODES = (1000, 1015)  # the close codes RFC 6455 and its IANA registry define
OTHER_CODE = "other"
_FIRST_BOUND = 16


def size_buckets(max_message_size: int) -> tuple[int, ...]:
    """Upper bounds of the message-size histogram: 16 B, 64 B, ... by fours.

    They stop at the first bound that holds MAX_MESSAGE_SIZE (nothing larger is
    echoed); the +Inf bucket comes on top.
    """
    bounds = [_FIRST_BOUND]
    while bounds[-1] < max_message_size:
        bounds.append(bounds[-1] * 4)
    return tuple(bounds)


def code_label(code: int) -> str:
    """The ``code`` label of a close code: one of a fixed set of 19 values.

    The codes RFC 6455 registers (1000-1015) are reported as themselves; a peer may
    send any code from 3000 to 4999 (application-defined), reported as ``3xxx`` and
    ``4xxx``; everything else a peer can put in a close frame (5000-65535, which
    aiohttp's reader lets through) is ``other``. So no peer can create more series.
    """
    if code == 0:
        return str(NO_STATUS_CODE)
    if REGISTERED_CODES[0] <= code <= REGISTERED_CODES[1]:
        return str(code)
    if 3000 <= code <= 4999:
        return f"{code // 1000}xxx"
    return OTHER_CODE


# The labels of the codes close frames usually carry, looked up rather than computed
# (code_label gives the rest).
_LABELS = {
    code: code_label(code) for code in (0, *range(REGISTERED_CODES[0], REGISTERED_CODES[1] + 1))
}


def _count_code(counts: dict[str, int], code: int) -> None:
    """Count a close code under its label (:func:`code_label`)."""
    label = _LABELS.get(code) or code_label(code)
    counts[label] = counts.get(label, 0) + 1


_FIELDS = (
    "messages_in",
    "bytes_in",
    "messages_out",
    "bytes_out",
    "binary_in",
    "binary_bytes_in",
    "binary_out",
    "binary_bytes_out",
)


class Metrics(Collector):
    """The counters of one app and the registry that reports them.

    ``live`` is the collection of the open connections' records (the server's dict
    values): read at scrape time, never copied.
    """

    def __init__(self, live: Callable[[], Collection[Traffic]], max_message_size: int) -> None:
        self._live = live
        self.connections_total = 0
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.close_sent: dict[str, int] = {}
        self.close_received: dict[str, int] = {}
        self.closed = dict.fromkeys(_FIELDS, 0)  # totals of the connections that ended
        self.bounds = size_buckets(max_message_size)
        self.sizes = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last +Inf
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    # -- updates (cheap, called by the server) -----------------------------------------

    def observe(self, size: int) -> None:
        """One received data message of ``size`` bytes (the echo loop's slow path)."""
        self.sizes[bisect_left(self.bounds, size)] += 1

    def connection_closed(self, conn: Connection) -> None:
        """Fold a finished connection's counters into the totals and count its close
        codes (once per connection, so spelled out: a loop of getattr costs twice as
        much)."""
        if conn.close_sent is not None:
            _count_code(self.close_sent, conn.close_sent)
        if conn.close_received is not None:
            _count_code(self.close_received, conn.close_received)
        traffic = conn
        if not traffic.messages_in and not traffic.messages_out:
            return  # no message, so no byte either: nothing to add
        closed = self.closed
        closed["messages_in"] += traffic.messages_in
        closed["bytes_in"] += traffic.bytes_in
        closed["messages_out"] += traffic.messages_out
        closed["bytes_out"] += traffic.bytes_out
        closed["binary_in"] += traffic.binary_in
        closed["binary_bytes_in"] += traffic.binary_bytes_in
        closed["binary_out"] += traffic.binary_out
        closed["binary_bytes_out"] += traffic.binary_bytes_out

    def refusal(self, reason: str) -> None:
        self.refused[reason] += 1

    # -- scrape -------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Closed connections' totals plus the open ones' counters, as of now."""
        totals = dict(self.closed)
        for traffic in self._live():
            for name in _FIELDS:
                totals[name] += getattr(traffic, name)
        return totals

    def collect(self) -> Iterator[Metric]:
        live = self._live()
        yield GaugeMetricFamily(
            "echo_connections_open", "WebSocket connections open now", value=len(live)
        )
        yield CounterMetricFamily(
            "echo_connections",
            "WebSocket connections accepted (upgraded) since start",
            value=self.connections_total,
        )
        refused = CounterMetricFamily(
            "echo_handshakes_refused",
            "Handshakes refused (origin 403, limit 503, per_ip_limit 429, duplicate_origin 400, "
            "draining 503, controls 400, status_control as asked, client_certificate in the "
            "TLS handshake) or cut off before a complete request (handshake_timeout)",
            labels=["reason"],
        )
        for reason, count in self.refused.items():
            refused.add_metric([reason], count)
        yield refused
        t = self.totals()
        messages = CounterMetricFamily(
            "echo_messages", "WebSocket data messages", labels=["direction", "type"]
        )
        octets = CounterMetricFamily(
            "echo_message_bytes",
            "Payload bytes of WebSocket data messages",
            labels=["direction", "type"],
        )
        for way in ("in", "out"):
            binary, binary_bytes = t[f"binary_{way}"], t[f"binary_bytes_{way}"]
            messages.add_metric([way, "text"], t[f"messages_{way}"] - binary)
            messages.add_metric([way, "binary"], binary)
            octets.add_metric([way, "text"], t[f"bytes_{way}"] - binary_bytes)
            octets.add_metric([way, "binary"], binary_bytes)
        yield messages
        yield octets
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        labels = (*map(floatToGoString, self.bounds), "+Inf")
        for bound, count in zip(labels, self.sizes, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "echo_message_size_bytes",
            "Sizes of the data messages received (and echoed)",
            buckets=buckets,
            sum_value=t["bytes_in"],
        )
        for name, counts, what in (
            ("echo_close_codes_sent", self.close_sent, "sent by the server"),
            ("echo_close_codes_received", self.close_received, "received from peers"),
        ):
            family = CounterMetricFamily(
                name, f"WebSocket close frames {what}, by code", labels=["code"]
            )
            for label, count in sorted(counts.items()):
                family.add_metric([label], count)
            yield family

    # -- HTTP ---------------------------------------------------------------------------

    async def handle(self, _request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(
            body=generate_latest(self.registry),
            headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST, hdrs.CACHE_CONTROL: "no-store"},
        )


METRICS_KEY = web.AppKey("echo_metrics", Metrics)


def add_metrics(app: web.Application, metrics: Metrics) -> None:
    """Serve ``GET /metrics`` from ``metrics`` (register before the HTTP echo catch-all)."""
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", metrics.handle, expect_handler=expect_continue)
