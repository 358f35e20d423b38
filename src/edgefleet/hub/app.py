"""The hub's HTTP side, on uvicorn with the fleet's mTLS: devices ship telemetry
(``POST /api/v1/devices/{id}/telemetry``, the control plane's own API, so an agent only
changes its URL), fetch the mirrored repository (``/repository/...``), and Prometheus
scrapes ``/metrics`` (the site summaries and the hub's own health)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

import uvicorn
from fastapi import FastAPI, Path, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.errors import ConfigError, EdgefleetError, Forbidden, Unauthenticated
from edgefleet.hub.loop import Hub, HubSettings
from edgefleet.hub.relay import ControlPlaneRelay, upstream_address
from edgefleet.hub.summary import QUANTILES
from edgefleet.localpage import create_local_app, read_credential
from edgefleet.pki import DeviceCertificate, device_identity_from_pem
from edgefleet.protocol.telemetry import TelemetryAck, parse_batch
from edgefleet.telemetry.health_metrics import BufferHealthCollector
from edgefleet.web.bodylimit import BodyLimit
from edgefleet.web.errors import error_response, status_for
from edgefleet.web.mtls import MutualTlsHttpProtocol
from edgefleet.web.serve import UvicornThread, bind

log = logging.getLogger("edgefleet.hub")


class HubCollector(Collector):
    """The newest summary per site and metric, and what the hub has received and cached."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        summary = Metric("edgefleet_site_metric", "Per-site summary of a device metric over the last interval",
                         "summary")
        low = GaugeMetricFamily("edgefleet_site_metric_min", "Smallest value in the last interval",
                                labels=["site", "metric"])
        high = GaugeMetricFamily("edgefleet_site_metric_max", "Largest value in the last interval",
                                 labels=["site", "metric"])
        for s in self.hub.store.latest_summaries():
            labels = {"site": s["site"], "metric": s["metric"]}
            for q in QUANTILES:
                summary.add_sample("edgefleet_site_metric", {**labels, "quantile": str(q)}, s["quantiles"][str(q)])
            summary.add_sample("edgefleet_site_metric_count", labels, s["count"])
            summary.add_sample("edgefleet_site_metric_sum", labels, s["sum"])
            low.add_metric([s["site"], s["metric"]], s["min"])
            high.add_metric([s["site"], s["metric"]], s["max"])
        yield from (summary, low, high)
        received = CounterMetricFamily("edgefleet_hub_received_records", "Records stored from devices since start")
        received.add_metric([], self.hub.received)
        yield received
        yield GaugeMetricFamily("edgefleet_hub_devices", "Devices that shipped telemetry to this hub",
                                value=len(self.hub.store.streams()))
        yield GaugeMetricFamily("edgefleet_hub_raw_records", "Raw records kept for local diagnosis",
                                value=self.hub.store.count())
        refused = CounterMetricFamily("edgefleet_hub_refused_batches", "Device batches refused, by reason",
                                      labels=["reason"])
        for reason, count in sorted(self.hub.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        rejected = CounterMetricFamily("edgefleet_hub_export_rejected_records",
                                       "Records an exporter's receiver refused (skipped)", labels=["exporter"])
        for name in self.hub.exporters():
            rejected.add_metric([name], self.hub.rejected.get(name, 0))
        yield rejected
        number = self.hub.revocations.number
        yield GaugeMetricFamily("edgefleet_hub_revocation_list_number",
                                "CRL number of the fleet revocation list the hub enforces (-1: none yet)",
                                value=-1 if number is None else number)
        yield CounterMetricFamily("edgefleet_hub_revocation_lists_refused",
                                  "Revocation lists refused since start (bad signature, replay)",
                                  value=self.hub.crl_refused)
        mirror = self.hub.mirror
        if mirror is not None:
            requests = CounterMetricFamily("edgefleet_hub_mirror_requests", "Repository requests served",
                                           labels=["result"])
            requests.add_metric(["hit"], mirror.hits)
            requests.add_metric(["miss"], mirror.misses)
            yield requests


def _device(hub: Hub, request: Request, device_id: str) -> DeviceCertificate:
    tls = request.scope.get("extensions", {}).get("tls")
    if not tls or not tls.get("client_cert_chain"):
        raise Unauthenticated("client certificate required", code="client_cert_required")
    identity = device_identity_from_pem(tls["client_cert_chain"][0])  # TLS verified it against the fleet CA
    if hub.revocations.is_revoked(identity.serial):
        hub.refused["revoked"] = hub.refused.get("revoked", 0) + 1
        raise Unauthenticated(f"certificate {identity.serial} of {identity.device_id} was revoked",
                              code="certificate_revoked")
    if identity.device_id != device_id:
        raise Forbidden(f"certificate of {identity.device_id} cannot ship for {device_id}", code="wrong_device")
    return identity


def create_hub_app(hub: Hub) -> FastAPI:
    stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop.clear()
        hub.connect(await hub.enroll(stop))
        task = asyncio.create_task(hub.run(stop), name="hub")
        if hub.settings.relay_port is not None:
            hub.relay = ControlPlaneRelay(upstream_address(hub.settings.server_url))
            hub.relay_port = await hub.relay.start(hub.settings.host, hub.settings.relay_port)
        yield
        if hub.relay is not None:
            await hub.relay.close()
        stop.set()
        await task
        await hub.close()

    app = FastAPI(title="edgefleet hub", lifespan=lifespan, docs_url=None, redoc_url=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    registry.register(BufferHealthCollector("edgefleet_hub_upstream", hub.health))

    @app.post("/api/v1/devices/{device_id}/telemetry")
    async def ship(request: Request, device_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
                   ) -> TelemetryAck:
        identity = _device(hub, request, device_id)
        batch = parse_batch(await request.body(), request.headers.get("content-encoding", ""))
        if batch.site is not None and batch.site != identity.site:  # its certificate says where it is
            hub.refused["wrong_site"] = hub.refused.get("wrong_site", 0) + 1
            raise Forbidden(f"{device_id} enrolled at {identity.site or 'a site its certificate does not name'} "
                            f"cannot ship as {batch.site}", code="wrong_site")
        through = await asyncio.to_thread(hub.store.ingest, device_id, identity.site, batch, time.time())
        hub.received += len(batch.records)
        return TelemetryAck(stored_through=through)

    @app.get("/repository/{path:path}")
    async def mirrored(path: str) -> FileResponse:
        assert hub.mirror is not None
        return FileResponse(await hub.mirror.get(path))

    @app.get("/metrics")
    async def metrics() -> Response:
        text = await asyncio.to_thread(generate_latest, registry)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EdgefleetError)
        status = status_for(exc)
        log.log(logging.INFO if status == 404 else logging.WARNING, "refused %s %s -> %d %s: %s", request.method,
                request.url.path, status, exc.code, exc.message)
        return error_response(status, exc.code, exc.message)

    app.add_exception_handler(EdgefleetError, on_error)
    app.add_middleware(BodyLimit, max_bytes=1 << 20)
    token = read_credential(hub.settings.local_ui_token_file)
    if token is not None:
        app.mount("/site", create_local_app(hub.local_view, token, "site.html", f"Sites of {hub.settings.name}"))
    return app


def _config(settings: HubSettings, app: FastAPI, *, log_config: bool) -> uvicorn.Config:
    return uvicorn.Config(
        app, http=MutualTlsHttpProtocol, ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key),
        ssl_ca_certs=str(settings.ca_file), ssl_cert_reqs=ssl.CERT_OPTIONAL, lifespan="on", access_log=False,
        log_config=uvicorn.config.LOGGING_CONFIG if log_config else None, server_header=False,
        timeout_graceful_shutdown=10, timeout_keep_alive=120)  # longer than agents keep idle connections


def serve_hub(settings: HubSettings) -> None:
    """Run until SIGINT/SIGTERM. Raises ConfigError (port taken, not enrolled)."""
    hub = Hub(settings)
    sock = bind(settings.host, settings.port)
    server = uvicorn.Server(_config(settings, create_hub_app(hub), log_config=True))
    log.info("hub %s serving https://%s:%d", settings.name, settings.host, sock.getsockname()[1])
    server.run(sockets=[sock])
    if not server.started:
        raise ConfigError("the hub failed to start; see the log above")


class HubThread(UvicornThread):
    """A hub on a background thread (tests, the demo)."""

    def __init__(self, settings: HubSettings) -> None:
        self.hub = Hub(settings)
        super().__init__(uvicorn.Server(_config(settings, create_hub_app(self.hub), log_config=False)),
                         bind(settings.host, settings.port), "edgefleet-hub")
