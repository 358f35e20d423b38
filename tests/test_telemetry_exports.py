"""Export formats: OTLP/HTTP protobuf that the opentelemetry-proto messages decode, a
Loki push, Prometheus text that promtool accepts, and Debian's Prometheus server
scraping the hub's site summaries."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

from edgefleet.agent.telemetry_link import TelemetryLink
from edgefleet.hub.app import HubThread
from edgefleet.hub.loop import HubSettings
from edgefleet.hub.otlp import Item, Source, logs_request, metrics_request
from edgefleet.pki import issue_server_certificate
from edgefleet.telemetry.buffer import DurableBuffer, Figures, Record
from edgefleet.telemetry.health import BufferHealth
from edgefleet.telemetry.shipper import Shipper
from edgefleet.web.device_client import HttpsTransport
from tests.conftest import Device, Fleet, need, start_fleet
from tests.test_telemetry_hub import free_port


def test_otlp_requests_decode_with_the_opentelemetry_proto_messages() -> None:
    at = 1_795_000_000.25
    items = [Item("metric", at, {"name": "edge_temp_celsius", "value": 41.5, "labels": {"sensor": "cpu"}}),
             Item("metric", at + 1, {"name": "edge_temp_celsius", "value": 42, "labels": {"sensor": "cpu"}}),
             Item("metric", at, {"name": "edge_packets_total", "value": 1000, "labels": {}}),
             Item("log", at, {"level": "error", "source": "workload/pos", "message": "printer offline"}),
             Item("event", at, {"event": "update_phase", "phase": "trial"})]
    metrics = ExportMetricsServiceRequest.FromString(
        metrics_request([(Source("dev-1", "store-9"), items)]).SerializeToString())
    resource = metrics.resource_metrics[0]
    assert {a.key: a.value.string_value for a in resource.resource.attributes} == {
        "service.name": "edgefleet-agent", "device.id": "dev-1", "edgefleet.site": "store-9"}
    by_name = {m.name: m for m in resource.scope_metrics[0].metrics}
    gauge = by_name["edge_temp_celsius"].gauge.data_points
    assert [(p.as_double, p.time_unix_nano) for p in gauge] == [(41.5, 1_795_000_000_250_000_000),
                                                               (42.0, 1_795_000_001_250_000_000)]
    assert gauge[0].attributes[0].key == "sensor"
    assert gauge[0].attributes[0].value.string_value == "cpu"
    counter = by_name["edge_packets_total"].sum
    assert counter.is_monotonic
    assert counter.data_points[0].as_double == 1000
    logs = ExportLogsServiceRequest.FromString(logs_request([(Source("dev-1"), items)]).SerializeToString())
    records = logs.resource_logs[0].scope_logs[0].log_records
    assert records[0].severity_number == SeverityNumber.SEVERITY_NUMBER_ERROR
    assert records[0].body.string_value == "printer offline"
    assert records[1].event_name == "update_phase"
    assert json.loads(records[1].body.string_value) == {"phase": "trial"}


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP collector and a Loki on one port: decodes what arrives with the
    opentelemetry-proto messages (and JSON for Loki); refuses the first OTLP push with 503."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CollectorHandler)
        self.points: list[tuple[str, str, float]] = []  # device, metric, value
        self.otlp_logs: list[str] = []
        self.loki: list[tuple[dict[str, str], str]] = []
        self.refused = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        collector = self.server
        if self.path.startswith("/v1/") and collector.refused == 0:
            collector.refused += 1
            self.send_response(503)
            self.end_headers()
            return
        if self.path == "/v1/metrics":
            request = ExportMetricsServiceRequest.FromString(body)
            for resource in request.resource_metrics:
                device = {a.key: a.value.string_value for a in resource.resource.attributes}["device.id"]
                collector.points += [(device, m.name, p.as_double) for s in resource.scope_metrics
                                     for m in s.metrics for p in m.gauge.data_points]
        elif self.path == "/v1/logs":
            request_logs = ExportLogsServiceRequest.FromString(body)
            collector.otlp_logs += [r.body.string_value for rl in request_logs.resource_logs
                                    for sl in rl.scope_logs for r in sl.log_records]
        elif self.path == "/loki/api/v1/push":
            for stream in json.loads(body)["streams"]:
                collector.loki += [(stream["stream"], line) for _, line in stream["values"]]
        self.send_response(204 if self.path.startswith("/loki") else 200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


def start_hub(plane: Fleet, directory: Path, **overrides: Any) -> HubThread:
    issued = issue_server_certificate(plane.settings.pki.load_ca(), ["127.0.0.1"], datetime.now(UTC))
    directory.mkdir(parents=True)
    (directory / "hub.pem").write_bytes(issued.cert_pem)
    (directory / "hub.key").write_bytes(issued.key_pem)
    (directory / "token").write_text(plane.bootstrap_token("region-1"))
    settings = HubSettings(name="hub-1", site="region-1", server_url=plane.url, ca_file=plane.settings.pki.ca_cert,
                           tls_cert=directory / "hub.pem", tls_key=directory / "hub.key", data_dir=directory / "data",
                           host="127.0.0.1", port=0, bootstrap_token_file=directory / "token",
                           summary_interval_seconds=0.2, upstream_batch_seconds=0.2, backoff_initial_seconds=0.1,
                           backoff_max_seconds=0.5, **overrides)
    return HubThread(settings).start()


def ship_to_hub(plane: Fleet, device: Device, hub: HubThread, path: Path, records: list[Record]) -> None:
    buffer = DurableBuffer(path, 1 << 30)
    buffer.append(records)

    async def ship() -> None:
        transport = HttpsTransport(f"https://127.0.0.1:{hub.port}", plane.settings.pki.ca_cert,
                                   cert_file=device.directory / "cert.pem", key_file=device.directory / "key.pem")
        shipper = Shipper(buffer, transport.ship_telemetry, device.id, site="store-a", max_records=7)
        while await shipper.ship_once():
            pass
        await transport.aclose()

    asyncio.run(ship())
    assert buffer.figures().queued == 0
    buffer.close()


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_hub_pushes_logs_to_loki_and_everything_to_an_otlp_collector_once(plane: Fleet, tmp_path: Path) -> None:
    collector = Collector()
    hub = start_hub(plane, tmp_path / "hub", loki_url=collector.url, otlp_url=collector.url)
    try:
        device = plane.enroll(site="store-a")
        now = time.time()
        records = [Record("metric", now + n, json.dumps({"name": "edge_temp_celsius", "value": n}).encode())
                   for n in range(30)]
        records += [Record("log", now + n, json.dumps({"level": "warning", "source": "workload/pos",
                                                       "message": f"line {n}"}).encode()) for n in range(20)]
        ship_to_hub(plane, device, hub, tmp_path / "device.db", records)
        wait_until(lambda: len(collector.points) >= 30 and len(collector.loki) >= 20 and len(collector.otlp_logs) >= 20)
        time.sleep(0.5)  # nothing more arrives
    finally:
        hub.stop()
        collector.shutdown()
        collector.server_close()
    assert collector.refused == 1  # the collector's 503 was retried
    assert sorted(collector.points) == [(device.id, "edge_temp_celsius", float(n)) for n in range(30)]
    assert sorted(line for _, line in collector.loki) == sorted(f"line {n}" for n in range(20))
    assert {labels["device"] for labels, _ in collector.loki} == {device.id}
    assert {labels["site"] for labels, _ in collector.loki} == {"store-a"}
    assert sorted(collector.otlp_logs) == sorted(f"line {n}" for n in range(20))


def promtool_check(text: str) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip(), result.stdout  # no lint findings either


def test_prometheus_scraping_the_hub_shows_the_site_summaries_and_promtool_accepts_our_metrics(
        plane: Fleet, tmp_path: Path) -> None:
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        need("prometheus", "Debian's prometheus (prometheus, promtool) is not installed")
    hub = start_hub(plane, tmp_path / "hub")
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        for site in ("store-a", "store-b"):
            device = plane.enroll(site=site)
            values = list(range(1, 101)) if site == "store-a" else [5] * 10
            now = time.time()
            records = [Record("metric", now, json.dumps({"name": "edge_temp_celsius", "value": v}).encode())
                       for v in values]
            buffer = DurableBuffer(tmp_path / f"{site}.db", 1 << 30)
            buffer.append(records)

            async def ship(device: Device = device, buffer: DurableBuffer = buffer, site: str = site) -> None:
                transport = HttpsTransport(f"https://127.0.0.1:{hub.port}", plane.settings.pki.ca_cert,
                                           cert_file=device.directory / "cert.pem",
                                           key_file=device.directory / "key.pem")
                while await Shipper(buffer, transport.ship_telemetry, device.id, site=site).ship_once():
                    pass
                await transport.aclose()

            asyncio.run(ship())
        wait_until(lambda: len(hub.hub.store.latest_summaries()) == 2)
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "edgefleet-hub", "scheme": "https",
                                "tls_config": {"ca_file": str(plane.settings.pki.ca_cert)},
                                "static_configs": [{"targets": [f"127.0.0.1:{hub.port}"]}]}]}))
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found: dict[str, dict[str, float]] = {}

        def scraped() -> bool:
            for query in ("edgefleet_site_metric_count", "edgefleet_site_metric_max",
                          'edgefleet_site_metric{quantile="0.9"}'):
                try:  # while starting, Prometheus answers 503 with a plain-text body
                    answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}).json()
                except (httpx.HTTPError, ValueError):
                    return False
                if answer.get("status") != "success":
                    return False
                found[query] = {r["metric"]["site"]: float(r["value"][1]) for r in answer["data"]["result"]}
            return all(len(v) == 2 for v in found.values())

        wait_until(scraped, timeout=60)
        assert found["edgefleet_site_metric_count"] == {"store-a": 100.0, "store-b": 10.0}
        assert found["edgefleet_site_metric_max"] == {"store-a": 100.0, "store-b": 5.0}
        assert found['edgefleet_site_metric{quantile="0.9"}'] == {"store-a": 90.0, "store-b": 5.0}
        promtool_check(httpx.get(f"https://127.0.0.1:{hub.port}/metrics",
                                 verify=plane.tls()).text)
        promtool_check(plane.client().get("/metrics").text)
        metrics_file = tmp_path / "agent.prom"
        TelemetryLink.write_metrics_file(metrics_file, BufferHealth(Figures(3, 300, 1, 2.5), time.time() - 4))
        promtool_check(metrics_file.read_text())
        assert "edgefleet_agent_telemetry_dropped_records_total 1.0" in metrics_file.read_text()
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(20)
        hub.stop()


def test_the_hubs_page_for_its_sites_shows_devices_and_summaries_with_the_uplink_down(
        plane: Fleet, tmp_path: Path) -> None:
    (tmp_path / "credential").write_text("site-tech-0042\n")
    hub = start_hub(plane, tmp_path / "hub", local_ui_token_file=tmp_path / "credential")
    try:
        device = plane.enroll(site="store-a")
        now = time.time()
        records = [Record("metric", now, json.dumps({"name": "edge_temp_celsius", "value": v}).encode())
                   for v in (40, 50, 60)]
        records.append(Record("log", now, json.dumps({"level": "error", "source": "workload/pos",
                                                      "message": "printer offline"}).encode()))
        ship_to_hub(plane, device, hub, tmp_path / "device.db", records)
        wait_until(lambda: len(hub.hub.store.latest_summaries()) == 1)
        plane.server.stop()  # the uplink is gone; the page is the hub's own
        with httpx.Client(base_url=f"https://127.0.0.1:{hub.port}", verify=plane.tls()) as client:
            assert client.get("/site/").headers["location"] == "/site/login"
            assert client.post("/site/login", data={"credential": "guess-guess"}).status_code == 401
            assert client.get("/site/status.json").status_code == 401
            answer = client.post("/site/login", data={"credential": "site-tech-0042"})
            assert answer.status_code == 303
            page = client.get("/site/")
            assert page.status_code == 200
            view = client.get("/site/status.json").json()
    finally:
        hub.stop()
    assert device.id in page.text
    assert "printer offline" in page.text
    assert [(d["device_id"], d["site"], d["stored_through"]) for d in view["devices"]] == [(device.id, "store-a", 4)]
    assert [(s["site"], s["count"], s["max"]) for s in view["summaries"]] == [("store-a", 3, 60)]
