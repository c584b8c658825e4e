"""Prometheus metrics of a running front-end, served over HTTP on the front-end's own event loop.

The metrics are read from the front-end when Prometheus scrapes them, on the event loop
the front-end runs on, so a scrape never races the state it reads; the exposition format
comes from the standard client library. What cannot be read off the state at scrape
time is counted as it happens: events by kind, the round trip of every chunk from its
assignment to its accepted result, and how late the event loop wakes up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from console.engine.frontend import FrontEnd
from console.engine.records import Event

LAG_SAMPLE_S = 0.1
ROUND_TRIP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
IN_FLIGHT_KEPT = 100_000
"""Assignments whose start is remembered for the round-trip histogram; the oldest go first."""
REQUEST_LIMIT = 8192
READ_TIMEOUT_S = 5.0


class FrontEndMetrics(Collector):
    """The front-end's metrics in their own registry."""

    def __init__(self, frontend: FrontEnd) -> None:
        self.frontend = frontend
        self.registry = CollectorRegistry(auto_describe=False)
        self.events = Counter("chainconsole_events", "Events of the front-end, by kind (join, lost, invalid, "
                              "quarantine, requeue, abandon, finished …)", ["kind"], registry=self.registry)
        self.round_trip = Histogram("chainconsole_chunk_round_trip_seconds",
                                    "From a chunk's assignment to its accepted result", buckets=ROUND_TRIP_BUCKETS,
                                    registry=self.registry)
        self.registry.register(self)
        self._max_lag_s = 0.0
        self._assigned: collections.OrderedDict[tuple[str, int, int], float] = collections.OrderedDict()
        frontend.on_event(self._event)
        frontend.on_assign(self._assigned_chunk)
        frontend.on_accept(self._accepted_chunk)

    def _event(self, event: Event) -> None:
        self.events.labels(event.kind).inc()

    def _assigned_chunk(self, key: tuple[str, int, int]) -> None:
        self._assigned[key] = time.monotonic()
        while len(self._assigned) > IN_FLIGHT_KEPT:
            self._assigned.popitem(last=False)

    def _accepted_chunk(self, key: tuple[str, int, int]) -> None:
        started = self._assigned.pop(key, None)
        if started is not None:
            self.round_trip.observe(time.monotonic() - started)

    async def sample_lag(self) -> None:
        """Measure how late the event loop wakes from a short sleep: what a blocking call costs everyone."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(LAG_SAMPLE_S)
            self._max_lag_s = max(self._max_lag_s, loop.time() - began - LAG_SAMPLE_S)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nodes, tasks = self.frontend.node_rows(), self.frontend.task_rows()
        by_state = GaugeMetricFamily("chainconsole_nodes", "Nodes by state", labels=["state"])
        for state, count in sorted(collections.Counter(n.state for n in nodes).items()):
            by_state.add_metric([state], count)
        yield by_state
        live = [n for n in nodes if n.heartbeat_age_s is not None]
        yield GaugeMetricFamily("chainconsole_slots", "Slots of connected nodes", value=sum(n.slots for n in live))
        yield GaugeMetricFamily("chainconsole_chunks_in_flight", "Chunk attempts held by connected nodes",
                                value=sum(n.in_flight for n in live))
        task_states = GaugeMetricFamily("chainconsole_tasks", "Tasks by state", labels=["state"])
        for state, count in sorted(collections.Counter(t.state for t in tasks).items()):
            task_states.add_metric([state], count)
        yield task_states
        yield GaugeMetricFamily("chainconsole_items_done", "Items with a result, over the tasks held",
                                value=sum(t.items_done for t in tasks))
        yield GaugeMetricFamily("chainconsole_items_failed", "Items that failed, over the tasks held",
                                value=sum(t.items_failed for t in tasks))
        yield GaugeMetricFamily("chainconsole_quarantined_keys", "Node keys refused until released",
                                value=len(self.frontend.hub.quarantined))
        lag, self._max_lag_s = self._max_lag_s, 0.0
        yield GaugeMetricFamily("chainconsole_loop_lag_seconds",
                                "Longest the event loop woke up late since the last scrape", value=lag)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` over plain HTTP on HOST:PORT (port 0 picks one)."""

    def __init__(self, metrics: FrontEndMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self._listen = (host, port)
        self._server: asyncio.Server | None = None
        self._lag: asyncio.Task | None = None
        self.address: tuple[str, int] = self._listen

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._answer, *self._listen)
        self.address = self._server.sockets[0].getsockname()[:2]
        self._lag = asyncio.get_running_loop().create_task(self.metrics.sample_lag())
        return self.address

    async def close(self) -> None:
        if self._lag is not None:
            self._lag.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            request = head[:REQUEST_LIMIT].split(b"\r\n", 1)[0].split()
            if len(request) >= 2 and request[0] == b"GET" and request[1].split(b"?")[0] in (b"/metrics", b"/"):
                body, status, kind = self.metrics.exposition(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, kind = b"not found; try /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
