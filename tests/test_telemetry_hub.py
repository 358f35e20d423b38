"""The regional hub, as a real `edgefleet hub` process between devices and the control
plane: killed with -9 mid-stream it loses nothing; while it is down the site's devices
keep buffering; what it forwards upstream is per-site summaries (every metric record
counted once) and the events."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgefleet.credentials import Role
from edgefleet.hub.store import HubStore
from edgefleet.telemetry.buffer import DurableBuffer, Record
from edgefleet.telemetry.shipper import Shipper
from edgefleet.web.device_client import HttpsTransport
from tests.conftest import Device, Fleet, start_fleet
from tests.test_telemetry_shipping import stored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


class HubProcess:
    """``edgefleet hub`` in its own process, with its TLS certificate from
    ``edgefleet server hub-cert`` and JSON logs."""

    def __init__(self, plane: Fleet, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "edgefleet", "server", "hub-cert", "127.0.0.1", "--out",
                        str(directory / "tls"), "--data-dir", str(plane.settings.data_dir)], check=True,
                       capture_output=True)
        (directory / "token").write_text(plane.bootstrap_token("region-1", kind="hub"))
        self.command = [sys.executable, "-m", "edgefleet", "hub", "--name", "hub-1", "--site", "region-1",
                        "--server-url", plane.url, "--ca-file", str(plane.settings.pki.ca_cert),
                        "--tls-cert", str(directory / "tls" / "hub.pem"),
                        "--tls-key", str(directory / "tls" / "hub.key"),
                        "--bootstrap-token-file", str(directory / "token"), "--data-dir", str(directory / "data"),
                        "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, "EDGEFLEET_LOG_FORMAT": "json", "EDGEFLEET_HUB_SUMMARY_INTERVAL_SECONDS": "0.3",
                    "EDGEFLEET_HUB_UPSTREAM_BATCH_SECONDS": "0.2", "EDGEFLEET_HUB_BACKOFF_MAX_SECONDS": "0.5"}
        self.logs: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.logs.append(self.directory / f"hub-{len(self.logs)}.log")
        with self.logs[-1].open("wb") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.logs[-1].read_text()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert time.monotonic() < deadline, "the hub did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled

    def device_id(self) -> str:
        return (self.directory / "data" / "identity" / "device_id").read_text().strip()


async def device_writes_and_ships(device: Device, hub_url: str, ca: Path, path: Path, site: str,
                                  stop: asyncio.Event, written: list[int]) -> DurableBuffer:
    """A device of ``site``: metric records with known values (and an event now and then)
    into its buffer every 20 ms, shipped to the hub, until ``stop``; then until drained."""
    buffer = DurableBuffer(path, 1 << 30)
    transport = HttpsTransport(hub_url, ca, cert_file=device.directory / "cert.pem",
                               key_file=device.directory / "key.pem", timeout=2)
    shipper = Shipper(buffer, transport.ship_telemetry, device.id, site=site, max_records=100,
                      max_age_seconds=0.1, backoff_initial_seconds=0.05, backoff_max_seconds=0.3)
    done = asyncio.Event()
    task = asyncio.create_task(shipper.run(done))
    n = 0
    while not stop.is_set():
        records = [Record("metric", time.time(), json.dumps({"name": "edge_temp_celsius", "value": n + i,
                                                              "labels": {}}).encode()) for i in range(5)]
        if n % 50 == 0:
            records.append(Record("event", time.time(), json.dumps({"event": "door_opened", "n": n}).encode()))
        buffer.append(records)
        written.extend(range(n, n + 5))
        n += 5
        shipper.wake()
        await asyncio.sleep(0.02)
    while buffer.figures().queued:  # noqa: ASYNC110 - the buffer is a file; polling it is the point
        await asyncio.sleep(0.05)
    done.set()
    await task
    await transport.aclose()
    return buffer


def test_a_hub_killed_mid_stream_loses_nothing_and_its_site_keeps_buffering_meanwhile(
        plane: Fleet, tmp_path: Path) -> None:
    hub = HubProcess(plane, tmp_path / "hub")
    devices = [plane.enroll(site="store-a"), plane.enroll(site="store-b")]
    values: dict[str, list[int]] = {d.id: [] for d in devices}
    queued_while_down: list[int] = []

    async def scenario() -> list[DurableBuffer]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(device_writes_and_ships(
            d, hub.url, plane.settings.pki.ca_cert, tmp_path / f"{d.id}.db", site, stop, values[d.id]))
            for d, site in zip(devices, ("store-a", "store-b"), strict=True)]
        rng = random.Random(3)
        for _ in range(2):
            await asyncio.sleep(rng.uniform(0.8, 1.5))
            await asyncio.to_thread(hub.kill)  # mid-stream
            before = sum(DurableBuffer(tmp_path / f"{d.id}.db", 1 << 30).figures().queued for d in devices)
            await asyncio.sleep(1.0)
            after = sum(DurableBuffer(tmp_path / f"{d.id}.db", 1 << 30).figures().queued for d in devices)
            queued_while_down.append(after - before)
            await asyncio.to_thread(hub.start)
        await asyncio.sleep(1.0)
        stop.set()
        return list(await asyncio.gather(*tasks))

    hub.start()
    try:
        buffers = asyncio.run(scenario())
        hub_id = hub.device_id()
        # Everything reaches upstream as summaries: wait until every metric record is counted.
        total = sum(len(v) for v in values.values())
        deadline = time.monotonic() + 60
        while True:
            upstream = [json.loads(r["body"]) for r in stored(plane, hub_id)["records"]]
            summaries = [u for u in upstream if u.get("name") == "edgefleet_site_summary"]
            if sum(s["count"] for s in summaries) >= total or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        hub.stop()
    assert all(grown > 0 for grown in queued_while_down)  # the devices kept buffering while the hub was down
    # Enrolled with a hub's token, it is listed as a hub and counted as no fleet device.
    viewer = plane.client(role=Role.VIEWER)
    listed = viewer.get("/api/v1/admin/devices", params={"limit": 1000}).json()
    assert hub_id not in {d["id"] for d in listed["devices"]}
    hubs = viewer.get("/api/v1/admin/devices", params={"kind": "hub"}).json()["devices"]
    assert [(d["id"], d["kind"]) for d in hubs if d["id"] == hub_id] == [(hub_id, "hub")]
    store = HubStore(tmp_path / "hub" / "data" / "hub.db")
    for device, buffer in zip(devices, buffers, strict=True):
        kept = store.device_records(device.id, limit=100_000)
        assert [r.seq for r in kept] == list(range(1, buffer.last_seq() + 1))  # each record once, in order
        assert [r.body["value"] for r in kept if r.kind == "metric"] == values[device.id]
    store.close()
    # Summaries: every metric record counted exactly once, per site, with the right extremes.
    assert sum(s["count"] for s in summaries) == total
    for device, site in zip(devices, ("store-a", "store-b"), strict=True):
        mine = [s for s in summaries if s["site"] == site]
        assert sum(s["count"] for s in mine) == len(values[device.id])
        assert min(s["min"] for s in mine) == 0
        assert max(s["max"] for s in mine) == max(values[device.id])
        assert sum(s["sum"] for s in mine) == sum(values[device.id])
    events = [u for u in upstream if u.get("event") == "door_opened"]
    assert sorted((e["device"], e["n"]) for e in events) == sorted(
        (d.id, n) for d in devices for n in values[d.id] if n % 50 == 0)
    # Structured JSON logs, one object per line, from every run of the hub.
    lines = [json.loads(line) for log in hub.logs for line in log.read_text().splitlines()
             if line.startswith("{")]
    assert any(line["logger"] == "edgefleet.hub" and "enrolled upstream" in line["message"] for line in lines)


def test_the_hub_files_a_devices_records_under_the_site_its_certificate_names_and_refuses_another(
        plane: Fleet, tmp_path: Path) -> None:
    hub = HubProcess(plane, tmp_path / "hub")
    berlin = plane.enroll(site="store-berlin")
    hub.start()
    try:
        context = ssl.create_default_context(cafile=str(plane.settings.pki.ca_cert))
        context.load_cert_chain(str(berlin.directory / "cert.pem"), str(berlin.directory / "key.pem"))
        with httpx.Client(base_url=hub.url, verify=context, timeout=10) as client:
            def ship(site: str, first: int) -> httpx.Response:
                return client.post(f"/api/v1/devices/{berlin.id}/telemetry", json={
                    "batch_id": f"{berlin.id}:{first}", "first_seq": first, "at_ms": 1_795_000_000_000, "site": site,
                    "records": [{"kind": "metric", "dt_ms": 0, "body": {"name": "edge_temp_celsius", "value": 99}}]})

            forged = ship("factory-lyon", 1)  # a device of store-berlin speaking for another site
            assert (forged.status_code, forged.json()["error"]["code"]) == (403, "wrong_site")
            assert ship("store-berlin", 1).status_code == 200
            metrics = client.get("/metrics").text
        assert 'edgefleet_hub_refused_batches_total{reason="wrong_site"} 1.0' in metrics
    finally:
        hub.stop()
    store = HubStore(tmp_path / "hub" / "data" / "hub.db")
    try:
        assert [(r.seq, r.site) for r in store.device_records(berlin.id)] == [(1, "store-berlin")]
    finally:
        store.close()
