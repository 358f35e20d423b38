"""The regional hub (``edgefleet hub``): the devices of its sites ship telemetry to it.

It keeps their raw records for ``raw_retention_seconds`` (local diagnosis), summarises
metrics per site and interval, and forwards the summaries and events upstream through its
own durable buffer and shipper: the same store-and-forward guarantees as a device, with
the hub enrolled in the fleet as a device of its own. Optionally it also pushes logs to
Loki and everything to an OpenTelemetry collector (OTLP/HTTP protobuf). It mirrors the
image repository for its sites (``mirror.py``).

Restart-safe: a batch is acknowledged only once stored; the summariser's cursor is set
in the same transaction that queues its summaries upstream; exporters advance their
cursors only after the receiver accepted a push."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet import __version__
from edgefleet.errors import ConfigError, EdgefleetError, InvalidRequest, TransportError
from edgefleet.hub import loki, otlp
from edgefleet.hub.mirror import MirrorCache
from edgefleet.hub.relay import ControlPlaneRelay
from edgefleet.hub.revocations import RevocationKeeper
from edgefleet.hub.store import HubStore, RawRecord
from edgefleet.hub.summary import summarise
from edgefleet.pki import make_csr, new_device_key
from edgefleet.protocol.v1 import EnrollRequest, Inventory
from edgefleet.telemetry.buffer import Record, open_buffer
from edgefleet.telemetry.health import BufferHealth
from edgefleet.telemetry.shipper import Shipper
from edgefleet.util.aio import pause
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.util.backoff import Backoff
from edgefleet.web.device_client import HttpsTransport
from edgefleet.web.tls import tls_context

log = logging.getLogger("edgefleet.hub")
SUMMARISED = "summarised"  # the upstream buffer's mark: raw ids summarised and queued so far
SUMMARY_METRIC = "edgefleet_site_summary"


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_HUB_", extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="this hub, e.g. hub-berlin")
    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="the site the hub is enrolled at")
    server_url: str = Field(description="the control plane upstream, e.g. https://fleet.example:8443")
    ca_file: Path = Field(description="the fleet CA: upstream's TLS and the devices' client certificates")
    tls_cert: Path = Field(description="the hub's TLS certificate (devices verify it)")
    tls_key: Path
    data_dir: Path = Path("/var/lib/edgefleet-hub")
    host: str = "0.0.0.0"  # noqa: S104 - the site's devices connect to it
    port: int = Field(8444, ge=0, le=65535)
    bootstrap_token_file: Path | None = Field(None, description="enrolls the hub upstream on first start")
    raw_retention_seconds: float = Field(7 * 86400.0, gt=0)
    summary_interval_seconds: float = Field(60.0, gt=0)
    upstream_max_bytes: int = Field(256 << 20, ge=1 << 16, description="the upstream buffer's bound")
    upstream_batch_seconds: float = Field(5.0, gt=0)
    cache_max_bytes: int = Field(20 << 30, ge=0, description="the repository mirror's bound")
    loki_url: str | None = Field(None, description="push logs and events here, e.g. http://loki:3100")
    otlp_url: str | None = Field(None, description="an OpenTelemetry collector's OTLP/HTTP base URL")
    backoff_initial_seconds: float = Field(1.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    request_timeout_seconds: float = Field(30.0, gt=0)
    revocation_sync_seconds: float = Field(60.0, gt=0, description="how often the fleet's revocation list is pulled")
    local_ui_token_file: Path | None = Field(None, description="the page for the site's technicians at /site/")
    relay_port: int | None = Field(None, ge=0, le=65535, description="carry devices' connections to the control "
                                   "plane (TLS end to end) from this port, for sites whose devices reach only the hub")


class Hub:
    def __init__(self, settings: HubSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        data = settings.data_dir
        self.identity = data / "identity"
        self.store = HubStore(data / "hub.db")
        self.upstream = open_buffer(data / "upstream.db", settings.upstream_max_bytes)
        self.received = 0
        self.refused: dict[str, int] = {}  # device batches refused since start, by reason
        self.rejected: dict[str, int] = {}
        self.device_id: str | None = None
        self.relay: ControlPlaneRelay | None = None  # devices' connections to the control plane (relay_port)
        self.relay_port: int | None = None  # where the relay listens, once it does
        self.shipper: Shipper | None = None
        self._transport: HttpsTransport | None = None
        self._client = httpx.AsyncClient(timeout=settings.request_timeout_seconds)
        self._upstream: httpx.AsyncClient | None = None  # mTLS as the hub: the mirror, the revocation list
        self.mirror: MirrorCache | None = None
        self.revocations = RevocationKeeper(data / "revocations.crl", settings.ca_file)
        self.crl_refused = 0  # revocation lists refused since start (bad signature, replay)

    # -- identity ---------------------------------------------------------------------

    async def enroll(self, stop: asyncio.Event) -> str:
        """The hub's device id upstream, enrolling with the bootstrap token the first time.
        Raises ConfigError (no identity and no token) or ServerRefused (token refused)."""
        ident = self.identity
        if (ident / "device_id").exists() and (ident / "cert.pem").exists():
            return (ident / "device_id").read_text().strip()
        token_file = self.settings.bootstrap_token_file
        if token_file is None:
            raise ConfigError(f"the hub is not enrolled ({ident} is empty): give it a bootstrap token file")
        if not (ident / "key.pem").exists():
            atomic_write_bytes(ident / "key.pem", new_device_key(), mode=0o600)
        hardware_id = f"hub-{self.settings.name}"
        request = EnrollRequest(
            token=token_file.read_text().strip(),
            csr_pem=make_csr((ident / "key.pem").read_bytes(), hardware_id).decode(),
            inventory=Inventory(hardware_id=hardware_id, hardware_type="edgefleet-hub", site=self.settings.site,
                                labels={"role": "hub"}, hostname=socket.gethostname()[:128],
                                agent_version=__version__))
        transport = HttpsTransport(self.settings.server_url, self.settings.ca_file,
                                   timeout=self.settings.request_timeout_seconds)
        backoff = Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds, self.rng)
        try:
            while True:
                try:
                    response = await transport.enroll(request)
                    break
                except TransportError as exc:
                    delay = backoff.next_delay()
                    log.warning("hub enrollment failed, retrying in %.1fs: %s", delay, exc)
                    if await pause(stop, delay):
                        raise
        finally:
            await transport.aclose()
        atomic_write_bytes(ident / "cert.pem", response.certificate_pem.encode())
        atomic_write_bytes(ident / "device_id", response.device_id.encode())
        log.info("hub %s enrolled upstream as %s", self.settings.name, response.device_id)
        return response.device_id

    def connect(self, device_id: str) -> None:
        """Upstream clients with the hub's identity: the shipper and the mirror."""
        settings, ident = self.settings, self.identity
        self.device_id = device_id
        self._transport = HttpsTransport(settings.server_url, settings.ca_file, cert_file=ident / "cert.pem",
                                         key_file=ident / "key.pem", timeout=settings.request_timeout_seconds)
        self.shipper = Shipper(self.upstream, self._transport.ship_telemetry, device_id, site=settings.site,
                               max_age_seconds=settings.upstream_batch_seconds,
                               backoff_initial_seconds=settings.backoff_initial_seconds,
                               backoff_max_seconds=settings.backoff_max_seconds, rng=self.rng)
        ssl_context = tls_context(settings.ca_file, ident / "cert.pem", ident / "key.pem", system_cas=True)
        self._upstream = httpx.AsyncClient(verify=ssl_context, timeout=settings.request_timeout_seconds)
        self.mirror = MirrorCache(settings.data_dir / "mirror", f"{settings.server_url.rstrip('/')}/repository",
                                  self._upstream, settings.cache_max_bytes)

    async def close(self) -> None:
        for client in (self._transport, self._upstream, self._client):
            if client is not None:
                await client.aclose()
        await asyncio.to_thread(self.upstream.close)
        await asyncio.to_thread(self.store.close)

    # -- what devices ship ------------------------------------------------------------

    def health(self) -> BufferHealth:
        return BufferHealth(self.upstream.figures(), self.shipper.last_success if self.shipper else None)

    def local_view(self) -> dict[str, Any]:
        """The page for the sites' technicians: every device that shipped here, the newest
        summaries, the upstream buffer, the mirror and the newest log lines. From the hub
        alone, so it works with the uplink down."""
        mirror = self.mirror
        return {
            "name": self.settings.name, "device_id": self.device_id,
            "devices": [vars(stream) for stream in self.store.streams()],
            "summaries": self.store.latest_summaries(), "upstream": self.health().samples(),
            "mirror": None if mirror is None else {"hits": mirror.hits, "misses": mirror.misses},
            "raw_records": self.store.count(),
            "logs": [{"at": r.at, "device": r.device_id, "site": r.site, "level": r.body.get("level", ""),
                      "source": r.body.get("source", ""), "message": str(r.body.get("message", ""))[:1000]}
                     for r in self.store.newest("log", 100)],
        }

    # -- summaries upstream -----------------------------------------------------------

    def summarise_once(self, now: float, limit: int = 50_000) -> int:
        """Summarise the metrics that arrived since the last time and queue them, with the
        events, upstream; the cursor moves in the same transaction. Returns raw records
        taken."""
        through = self.upstream.mark(SUMMARISED)
        rows = self.store.after(through, limit, kinds=("metric", "event"))
        if not rows:
            return 0
        summaries = summarise(rows, now)
        records = [Record("metric", now, _json({"name": SUMMARY_METRIC, **s})) for s in summaries]
        records += [Record("event", r.at, _json({**r.body, "device": r.device_id, "site": r.site, "seq": r.seq}))
                    for r in rows if r.kind == "event"]
        self.upstream.append(records, marks={SUMMARISED: rows[-1].id})
        self.store.save_summaries(summaries)
        if self.shipper is not None:
            self.shipper.wake()
        return len(rows)

    async def _summarise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await asyncio.to_thread(self.summarise_once, time.time()):
                    pass
            except EdgefleetError as exc:
                log.error("hub summaries not queued, trying again next interval: %s", exc)
            await pause(stop, self.settings.summary_interval_seconds)

    # -- exporters: Loki, OpenTelemetry -----------------------------------------------

    def exporters(self) -> dict[str, tuple[tuple[str, ...], Callable[[Sequence[RawRecord]], Awaitable[None]]]]:
        found: dict[str, tuple[tuple[str, ...], Callable[[Sequence[RawRecord]], Awaitable[None]]]] = {}
        if self.settings.loki_url:
            found["loki"] = (("log", "event"), self._push_loki)
        if self.settings.otlp_url:
            found["otlp"] = (("log", "metric", "event"), self._push_otlp)
        return found

    async def _post(self, url: str, body: bytes, content_type: str) -> None:
        """Raises TransportError (retry) or InvalidRequest (the receiver refused the content;
        sending it again will not help)."""
        try:
            response = await self._client.post(url, content=gzip.compress(body, 6), headers={
                "content-type": content_type, "content-encoding": "gzip"})
        except httpx.HTTPError as exc:
            raise TransportError(f"POST {url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TransportError(f"POST {url}: HTTP {response.status_code}")
        if response.status_code >= 300:
            raise InvalidRequest(f"POST {url}: HTTP {response.status_code}: {response.text[:200]}",
                                 code="export_refused")

    async def _push_loki(self, rows: Sequence[RawRecord]) -> None:
        assert self.settings.loki_url
        await self._post(f"{self.settings.loki_url.rstrip('/')}/loki/api/v1/push",
                         json.dumps(loki.push_body(rows)).encode(), "application/json")

    async def _push_otlp(self, rows: Sequence[RawRecord]) -> None:
        assert self.settings.otlp_url
        streams: dict[tuple[str, str | None], list[otlp.Item]] = {}
        for row in rows:
            streams.setdefault((row.device_id, row.site), []).append(otlp.Item(row.kind, row.at, row.body))
        pairs = [(otlp.Source(device, site), items) for (device, site), items in streams.items()]
        base = self.settings.otlp_url.rstrip("/")
        metrics, logs = otlp.metrics_request(pairs), otlp.logs_request(pairs)
        if metrics.resource_metrics:
            await self._post(f"{base}/v1/metrics", metrics.SerializeToString(), "application/x-protobuf")
        if logs.resource_logs:
            await self._post(f"{base}/v1/logs", logs.SerializeToString(), "application/x-protobuf")

    async def _follow(self, name: str, kinds: tuple[str, ...],
                      push: Callable[[Sequence[RawRecord]], Awaitable[None]], stop: asyncio.Event) -> None:
        """Push raw records to one exporter in arrival order, moving its cursor only after
        the receiver accepted them; retry forever with backoff."""
        backoff = Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds, self.rng)
        while not stop.is_set():
            delay = 1.0
            try:
                rows = await asyncio.to_thread(self.store.after, await asyncio.to_thread(self.store.cursor, name),
                                               1000, kinds)
                if rows:
                    try:
                        await push(rows)
                    except InvalidRequest as exc:  # never accepted: count it and move on
                        self.rejected[name] = self.rejected.get(name, 0) + len(rows)
                        log.error("%s refused %d records, skipped: %s", name, len(rows), exc)
                    await asyncio.to_thread(self.store.advance, name, rows[-1].id)
                    backoff.reset()
                    continue
            except EdgefleetError as exc:
                delay = backoff.next_delay()
                log.warning("%s export failed, retrying in %.1fs: %s", name, delay, exc)
            await pause(stop, delay)

    # -- the fleet's revocation list ----------------------------------------------------

    async def sync_revocations(self) -> bool:
        """Pull the fleet's CRL once; True when a newer list was kept.

        Raises TransportError (upstream unreachable or answering an error) or InvalidRequest
        (a list the fleet CA did not sign, or a replay of an older one: nothing changes).
        """
        assert self._upstream is not None
        url = f"{self.settings.server_url.rstrip('/')}/api/v1/revocations.crl"
        try:
            response = await self._upstream.get(url)
        except httpx.HTTPError as exc:
            raise TransportError(f"GET {url}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code != 200:
            raise TransportError(f"GET {url}: HTTP {response.status_code}")
        return await asyncio.to_thread(self.revocations.accept, response.content)

    async def _sync_revocations(self, stop: asyncio.Event) -> None:
        while True:
            try:
                await self.sync_revocations()
            except InvalidRequest as exc:
                self.crl_refused += 1
                log.error("revocation list refused, the hub keeps list %s: %s", self.revocations.number, exc)
            except TransportError as exc:
                log.warning("revocation list not synced, the hub keeps list %s: %s", self.revocations.number, exc)
            if await pause(stop, self.settings.revocation_sync_seconds):
                return

    # -- retention --------------------------------------------------------------------

    def prune_once(self, now: float) -> int:
        followed = [self.upstream.mark(SUMMARISED), *(self.store.cursor(name) for name in self.exporters())]
        removed = self.store.prune(now - self.settings.raw_retention_seconds, min(followed))
        if removed:
            log.info("hub removed %d raw records past their retention", removed)
        return removed

    async def _prune(self, stop: asyncio.Event) -> None:
        while not await pause(stop, min(60.0, self.settings.raw_retention_seconds / 4)):
            try:
                await asyncio.to_thread(self.prune_once, time.time())
            except EdgefleetError as exc:
                log.error("hub retention not applied: %s", exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Forward, export and prune until ``stop`` (``connect`` first)."""
        assert self.shipper is not None
        tasks = [asyncio.create_task(self.shipper.run(stop), name="hub-ship"),
                 asyncio.create_task(self._summarise(stop), name="hub-summarise"),
                 asyncio.create_task(self._prune(stop), name="hub-prune"),
                 asyncio.create_task(self._sync_revocations(stop), name="hub-revocations")]
        tasks += [asyncio.create_task(self._follow(name, kinds, push, stop), name=f"hub-{name}")
                  for name, (kinds, push) in self.exporters().items()]
        await asyncio.gather(*tasks)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), default=str).encode()
