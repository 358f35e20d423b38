"""Telemetry records as OTLP/HTTP protobuf, for any OpenTelemetry collector: metric
records become data points (grouped by name, one Metric each: a ``*_total`` name is a
monotonic cumulative Sum, anything else a Gauge), log and event records become
LogRecords. Each device is one Resource (``service.name``, ``device.id``,
``edgefleet.site``). Encoded with the ``opentelemetry-proto`` messages themselves."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from edgefleet import __version__

SCOPE = InstrumentationScope(name="edgefleet", version=__version__)
SEVERITY = {"debug": SeverityNumber.SEVERITY_NUMBER_DEBUG, "info": SeverityNumber.SEVERITY_NUMBER_INFO,
            "warning": SeverityNumber.SEVERITY_NUMBER_WARN, "error": SeverityNumber.SEVERITY_NUMBER_ERROR,
            "critical": SeverityNumber.SEVERITY_NUMBER_FATAL}


@dataclass(frozen=True)
class Source:
    """Whose records: a device (and its site)."""

    device_id: str
    site: str | None = None


@dataclass(frozen=True)
class Item:
    """One record to export: its kind, time (unix seconds) and decoded JSON body."""

    kind: str
    at: float
    body: Mapping[str, Any]


def _attributes(values: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=str(key), value=AnyValue(string_value=str(value))) for key, value in values.items()]


def _resource(source: Source) -> Resource:
    values = {"service.name": "edgefleet-agent", "device.id": source.device_id}
    if source.site:
        values["edgefleet.site"] = source.site
    return Resource(attributes=_attributes(values))


def unix_nanos(at: float) -> int:
    """Unix seconds as nanoseconds, to the microsecond (what a float holds exactly)."""
    return round(at * 1_000_000) * 1000


def metrics_request(streams: Iterable[tuple[Source, Sequence[Item]]]) -> ExportMetricsServiceRequest:
    """The metric records of each device, one ResourceMetrics per device."""
    request = ExportMetricsServiceRequest()
    for source, items in streams:
        by_name: dict[str, list[NumberDataPoint]] = {}
        for item in items:
            value = item.body.get("value")
            if item.kind != "metric" or not isinstance(value, int | float):
                continue
            labels = item.body.get("labels") or {}
            by_name.setdefault(str(item.body.get("name", "unnamed")), []).append(NumberDataPoint(
                attributes=_attributes(labels if isinstance(labels, Mapping) else {}),
                time_unix_nano=unix_nanos(item.at), as_double=float(value)))
        if not by_name:
            continue
        metrics = []
        for name, points in by_name.items():
            if name.endswith("_total"):
                metrics.append(Metric(name=name, sum=Sum(
                    data_points=points, is_monotonic=True,
                    aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE)))
            else:
                metrics.append(Metric(name=name, gauge=Gauge(data_points=points)))
        request.resource_metrics.append(ResourceMetrics(
            resource=_resource(source), scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=metrics)]))
    return request


def _log_record(item: Item) -> LogRecord:
    if item.kind == "event":
        fields = {k: v for k, v in item.body.items() if k != "event"}
        return LogRecord(time_unix_nano=unix_nanos(item.at), severity_number=SeverityNumber.SEVERITY_NUMBER_INFO,
                         severity_text="info", event_name=str(item.body.get("event", "")),
                         body=AnyValue(string_value=json.dumps(fields, separators=(",", ":"), default=str)))
    level = str(item.body.get("level", "info"))
    return LogRecord(time_unix_nano=unix_nanos(item.at), severity_text=level,
                     severity_number=SEVERITY.get(level, SeverityNumber.SEVERITY_NUMBER_UNSPECIFIED),
                     body=AnyValue(string_value=str(item.body.get("message", ""))),
                     attributes=_attributes({"source": item.body.get("source", "")}))


def logs_request(streams: Iterable[tuple[Source, Sequence[Item]]]) -> ExportLogsServiceRequest:
    """The log and event records of each device, one ResourceLogs per device."""
    request = ExportLogsServiceRequest()
    for source, items in streams:
        records = [_log_record(item) for item in items if item.kind in ("log", "event")]
        if records:
            request.resource_logs.append(ResourceLogs(
                resource=_resource(source), scope_logs=[ScopeLogs(scope=SCOPE, log_records=records)]))
    return request
