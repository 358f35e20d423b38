"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgefleet_http_requests", "HTTP requests by route and status", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "edgefleet_http_request_duration_seconds", "HTTP request latency", ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.enrollments = Counter("edgefleet_enrollments", "Enrollment attempts by result", ["result"], registry=r)
        self.checkins = Counter("edgefleet_checkins", "Device check-ins by result", ["result"], registry=r)
        self.status_reports = Counter("edgefleet_status_reports", "Status reports by result", ["result"], registry=r)
        self.telemetry_records = Counter("edgefleet_telemetry_records", "Telemetry records received from devices",
                                         registry=r)
        self.refusals = Counter("edgefleet_refusals", "Refused requests by error code", ["code"], registry=r)
        self.devices = Gauge("edgefleet_devices", "Enrolled devices", registry=r)
        self.attestations = Counter("edgefleet_attestations", "Quote verifications by result", ["result"], registry=r)
        self.quarantines = Counter("edgefleet_quarantines", "Devices quarantined by a failed attestation (alert "
                                   "on increase)", registry=r)
        self.long_polls = Gauge("edgefleet_long_polls", "Check-ins waiting in a long poll", registry=r)
        self.remote_sessions = Gauge("edgefleet_remote_sessions", "Remote sessions relaying now", registry=r)
        self.gitops_commits = Counter("edgefleet_gitops_commits", "Fleet repository commits processed by verdict",
                                      ["sync", "verdict"], registry=r)
        self.alerts = Counter("edgefleet_alerts", "Alerts raised by kind", ["kind"], registry=r)
        self.alert_deliveries = Counter("edgefleet_alert_deliveries", "Alert webhook deliveries by result",
                                        ["result"], registry=r)
        self.rollout_ticks = Histogram("edgefleet_rollout_tick_seconds", "Time of one rollout controller step over "
                                       "every rollout it follows", registry=r,
                                       buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.drift = Counter("edgefleet_drift_events", "Devices found out of sync with their desired configuration",
                             registry=r)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a request by method, route template and status, and time it. The labelled
        series are looked up once (``labels()`` validates and locks on every call)."""
        key = (method, route, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (self.requests.labels(method, route, str(status)),
                                                  self.latency.labels(route))
        series[0].inc()
        series[1].observe(seconds)
