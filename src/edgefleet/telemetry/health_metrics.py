"""A telemetry buffer's health (``telemetry/health.py``) as Prometheus metrics: the agent's
textfile for node_exporter, the hub's /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.telemetry.health import HELP, BufferHealth


class BufferHealthCollector(Collector):
    """``<prefix>_<name>`` for each figure, read when scraped."""

    def __init__(self, prefix: str, read: Callable[[], BufferHealth]) -> None:
        self.prefix = prefix
        self.read = read

    def collect(self) -> Iterator[Metric]:
        for name, value in self.read().samples().items():
            full = f"{self.prefix}_{name}"
            if name.endswith("_total"):
                counter = CounterMetricFamily(full.removesuffix("_total"), HELP[name])
                counter.add_metric([], value)
                yield counter
            else:
                yield GaugeMetricFamily(full, HELP[name], value=value)


def write_textfile(path: Path, prefix: str, health: BufferHealth) -> None:
    """The figures as a node_exporter textfile (a temporary file renamed over ``path``).
    Raises OSError."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BufferHealthCollector(prefix, lambda: health))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
