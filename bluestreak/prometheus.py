"""Prometheus metrics for an engine (``pip install "bluestreak[prometheus]"``).

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> collector = BluestreakCollector(engine)
>>> registry.register(collector)
>>> await collector.refresh()      # the database's view: workflows by status, the oldest due age
>>> text = generate_latest(registry)

Counters of ``engine.metrics`` are exported as ``bluestreak_<name>_total``;
``in_flight`` and ``claim_seconds_max`` as gauges; after :meth:`refresh`,
``bluestreak_workflows{handler,status}`` and
``bluestreak_oldest_due_age_seconds`` too. :func:`serve_metrics` serves them
on a port of their own, for worker processes without a web server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("bluestreak.prometheus needs prometheus-client: pip install 'bluestreak[prometheus]'") from exc

from .records import Stats

if TYPE_CHECKING:
    from .engine import Bluestreak

GAUGES = {
    "in_flight": "Handlers running in this process now.",
    "claim_seconds_max": "Longest claim round trip of this process, in seconds.",
}


class BluestreakCollector(Collector):
    """Reads ``engine.metrics`` at each scrape, and the last :meth:`refresh` of ``engine.stats()``."""

    def __init__(self, engine: Bluestreak) -> None:
        self.engine = engine
        self.stats: Stats | None = None

    async def refresh(self) -> Stats:
        """Read ``engine.stats()`` (one aggregation) for the next scrapes."""
        self.stats = await self.engine.stats()
        return self.stats

    def collect(self) -> Iterator[Any]:
        for name, value in self.engine.metrics.snapshot().items():
            if name in GAUGES:
                yield GaugeMetricFamily(f"bluestreak_{name}", GAUGES[name], value=value)
            else:  # rendered as bluestreak_<name>_total
                yield CounterMetricFamily(f"bluestreak_{name}", f"bluestreak counter {name!r}", value=value)
        stats = self.stats
        if stats is not None:  # from the database: the same in every process
            workflows = GaugeMetricFamily(
                "bluestreak_workflows", "Workflows by handler and status.", labels=["handler", "status"]
            )
            for handler, counts in sorted(stats.counts.items()):
                for status, count in sorted(counts.items()):
                    workflows.add_metric([handler, status], count)
            yield workflows
            yield GaugeMetricFamily(
                "bluestreak_oldest_due_age_seconds",
                "How long the oldest due workflow has waited for a worker (0 if none).",
                value=stats.oldest_due_age or 0.0,
            )


@dataclass
class MetricsServer:
    """What :func:`serve_metrics` started: the HTTP server (``port``) and the task refreshing the figures."""

    port: int
    _server: Any
    _thread: Any
    _refresh: asyncio.Task[None]

    def close(self) -> None:
        """Stop serving and refreshing."""
        self._refresh.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(engine: Bluestreak, port: int = 9100, refresh_every: float = 15.0) -> MetricsServer:
    """Serve ``/metrics`` on 127.0.0.1:``port`` (from a thread; 0 picks a free port) and refresh the
    database's view every ``refresh_every`` seconds. Call from a running event loop.
    """
    registry = CollectorRegistry(auto_describe=False)
    collector = BluestreakCollector(engine)
    registry.register(collector)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)

    async def refresh() -> None:
        while True:
            with contextlib.suppress(Exception):  # the database is away: keep the last figures
                await collector.refresh()
            await asyncio.sleep(refresh_every)

    task = asyncio.get_running_loop().create_task(refresh(), name="bluestreak-metrics")
    return MetricsServer(int(server.server_port), server, thread, task)
