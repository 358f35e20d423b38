"""Telemetry from the durable buffer to the control plane over a link that keeps failing:
ten outages of random length, the shipping process killed with -9 during some of them,
and every record written arrives exactly once, in order. A buffer that reached its cap
drops its oldest records and the receiver learns how many."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.hardware import VirtualDevice
from edgefleet.agent.state import StateDir
from edgefleet.credentials import Role
from edgefleet.telemetry.buffer import DurableBuffer, Record
from edgefleet.telemetry.shipper import Shipper
from edgefleet.web.device_client import HttpsTransport
from tests.conftest import Device, Fleet, start_fleet


class Link:
    """A TCP link to the control plane that can be cut: open connections are closed and
    new ones refused until it is restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = threading.Event()
        self.up.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        with self.lock:
            self.open -= {source, sink}

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            for end in self.open:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self.open.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


def stored_through(plane: Fleet, device_id: str) -> int:
    """How far the control plane has stored the device's records (0: none yet)."""
    page = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{device_id}/telemetry", params={"limit": 1})
    return int(page.json()["stored_through"]) if page.status_code == 200 else 0


def stored(plane: Fleet, device_id: str) -> dict[str, Any]:
    viewer, after, records = plane.client(role=Role.VIEWER), 0, []
    while True:
        page = viewer.get(f"/api/v1/admin/devices/{device_id}/telemetry", params={"after": after, "limit": 10000})
        assert page.status_code == 200, page.text
        answer = page.json()
        records += answer["records"]
        if not answer["records"]:
            return {**answer, "records": records}
        after = answer["records"][-1]["seq"]


SHIPPER = """
import asyncio, json, sys, time
from pathlib import Path
from edgefleet.agent.hardware import VirtualDevice
from edgefleet.agent.state import StateDir
from edgefleet.web.device_client import HttpsTransport
from edgefleet.telemetry.buffer import DurableBuffer, Record
from edgefleet.telemetry.shipper import Shipper

path, url, ca, cert, key, device_id, done = sys.argv[1:8]
buffer = DurableBuffer(Path(path), 1 << 30)

async def main() -> None:
    transport = HttpsTransport(url, Path(ca), cert_file=Path(cert), key_file=Path(key), timeout=2)
    shipper = Shipper(buffer, transport.ship_telemetry, device_id, max_records=200, max_age_seconds=0.1,
                      backoff_initial_seconds=0.05, backoff_max_seconds=0.4)
    stop = asyncio.Event()
    task = asyncio.create_task(shipper.run(stop))
    while not Path(done).exists():
        first = buffer.last_seq() + 1
        buffer.append([Record("log", time.time(), json.dumps({"n": first + i}).encode()) for i in range(20)])
        shipper.wake()
        await asyncio.sleep(0.02)
    while buffer.figures().queued:
        await asyncio.sleep(0.05)
    stop.set()
    await task
    await transport.aclose()

asyncio.run(main())
"""


def test_every_record_arrives_once_in_order_through_outages_and_kill_9(plane: Fleet, tmp_path: Path) -> None:
    device: Device = plane.enroll()
    link = Link(("127.0.0.1", int(plane.url.rsplit(":", 1)[1].rstrip("/"))))
    path, done = tmp_path / "buffer.db", tmp_path / "done"
    command = [sys.executable, "-c", SHIPPER, str(path), f"https://127.0.0.1:{link.port}",
               str(plane.settings.pki.ca_cert), str(device.directory / "cert.pem"), str(device.directory / "key.pem"),
               device.id, str(done)]
    rng = random.Random(7)
    kills = 0
    process = subprocess.Popen(command)
    try:
        for outage in range(10):
            time.sleep(rng.uniform(0.3, 0.8))  # link up
            link.cut()
            time.sleep(rng.uniform(0.2, 0.5))
            if outage % 3 == 1:  # killed while the link is down, and started again
                process.kill()
                process.wait()
                kills += 1
                process = subprocess.Popen(command)
            time.sleep(rng.uniform(0.1, 0.8))
            link.restore()
        deadline = time.monotonic() + 120  # enough records to mean something, however slow the machine
        while stored_through(plane, device.id) <= 1000:
            assert time.monotonic() < deadline, "the writer's records did not arrive"
            time.sleep(0.2)
        done.touch()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        link.close()
    buffer = DurableBuffer(path, 1 << 30)
    written = buffer.last_seq()
    assert buffer.figures().queued == 0
    buffer.close()
    answer = stored(plane, device.id)
    seqs = [r["seq"] for r in answer["records"]]
    assert kills == 3
    assert written > 1000
    assert seqs == list(range(1, written + 1))  # every record, once, in order
    assert [json.loads(r["body"])["n"] for r in answer["records"]] == seqs
    assert (answer["stored_through"], answer["dropped"]) == (written, 0)


def test_a_full_buffer_ships_its_newest_records_and_how_many_it_dropped(plane: Fleet, tmp_path: Path) -> None:
    device: Device = plane.enroll()
    buffer = DurableBuffer(tmp_path / "buffer.db", 100 * 64)  # about 100 records of 32 bytes
    for n in range(0, 300, 10):  # the link is down meanwhile
        buffer.append([Record("metric", time.time(), json.dumps({"n": n + i}).encode().ljust(32)) for i in range(10)])
    dropped = buffer.figures().dropped
    assert dropped == 200

    async def ship() -> None:
        transport = HttpsTransport(plane.url, plane.settings.pki.ca_cert, cert_file=device.directory / "cert.pem",
                                   key_file=device.directory / "key.pem")
        shipper = Shipper(buffer, transport.ship_telemetry, device.id, max_records=40)
        while await shipper.ship_once():
            pass
        await transport.aclose()

    asyncio.run(ship())
    answer = stored(plane, device.id)
    assert [r["seq"] for r in answer["records"]] == list(range(201, 301))  # the newest, in order
    assert answer["dropped"] == 200
    buffer.close()


def test_malformed_or_oversized_batches_are_refused_and_change_nothing(plane: Fleet) -> None:
    device: Device = plane.enroll()
    url = f"/api/v1/devices/{device.id}/telemetry"
    record = {"kind": "log", "dt_ms": 0, "body": {"message": "x"}}
    good = {"batch_id": "a:1-1", "first_seq": 1, "at_ms": 1_795_000_000_000, "records": [record]}
    cases = [
        (gzip.compress(json.dumps(good).encode())[:-9], "gzip"),  # truncated
        (gzip.compress(b"\0" * (5 << 20)), "gzip"),  # a gzip bomb
        (gzip.compress(json.dumps({**good, "first_seq": 0}).encode()), "gzip"),  # no seq 0
        (gzip.compress(json.dumps({**good, "records": [{**record, "body": "x"}]}).encode()), "gzip"),  # no object
        (gzip.compress(json.dumps({**good, "records": []}).encode()), "gzip"),
        (json.dumps(good).encode(), "br"),
    ]
    before = plane.rows()
    for body, encoding in cases:
        response = device.client.post(url, content=body, headers={"content-encoding": encoding,
                                                                  "content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] in ("bad_encoding", "batch_too_large", "invalid_telemetry")
    assert plane.rows() == before
    again = [device.client.post(url, content=gzip.compress(json.dumps(good).encode()),
                                headers={"content-encoding": "gzip"}) for _ in range(2)]
    assert [r.json() for r in again] == [{"stored_through": 1}, {"stored_through": 1}]  # sent twice, stored once
    assert [r["seq"] for r in stored(plane, device.id)["records"]] == [1]


def test_the_whole_agent_killed_with_9_during_outages_loses_no_record_it_wrote(plane: Fleet, tmp_path: Path) -> None:
    """`edgefleet agent` itself (its own figures and warnings are the records), through ten
    outages of random length, killed with -9 during three of them."""
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id=f"hw-tel-{os.getpid()}-{tmp_path.name}"[:60],
                                  site="store-1")
    link = Link(("127.0.0.1", int(plane.url.rsplit(":", 1)[1].rstrip("/"))))
    config = tmp_path / "agent.toml"
    config.write_text(
        f'server_url = "https://127.0.0.1:{link.port}"\nca_file = "{plane.settings.pki.ca_cert}"\n'
        f'state_dir = "{device.agent_dir}"\ndevice_dir = "{device.path}"\n'
        f'bootstrap_token = "{plane.bootstrap_token()}"\ncheckin_interval_seconds = 0.2\n'
        "status_interval_seconds = 0.1\ntelemetry_batch_seconds = 0.1\nbackoff_initial_seconds = 0.05\n"
        "backoff_max_seconds = 0.4\nrequest_timeout_seconds = 2\n")
    command = [sys.executable, "-m", "edgefleet", "agent", "--config", str(config)]
    buffer_path = device.agent_dir / "telemetry.db"
    rng = random.Random(11)
    kills = 0
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not buffer_path.exists():
            assert process.poll() is None, "the agent exited"
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.1)
        for outage in range(10):
            time.sleep(rng.uniform(0.3, 0.8))  # link up
            link.cut()
            time.sleep(rng.uniform(0.2, 0.5))
            if outage % 3 == 1:  # the agent killed while the link is down, and started again
                process.kill()
                process.wait()
                kills += 1
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.1, 0.8))
            link.restore()
        # The link is back: wait for a moment when all the agent wrote so far has arrived.
        buffer = DurableBuffer(buffer_path, 64 << 20)
        deadline = time.monotonic() + 60
        device_id = StateDir(device.agent_dir).load().device_id or ""
        while True:
            written = buffer.last_seq()
            if written > 50 and stored_through(plane, device_id) >= written:  # enough, and all arrived
                break
            assert time.monotonic() < deadline, "the agent's records did not arrive"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        link.close()
    answer = stored(plane, device_id)
    seqs = [r["seq"] for r in answer["records"]]
    assert kills == 3
    assert written > 50
    assert seqs == list(range(1, answer["stored_through"] + 1))  # once each, in order, no gap
    assert answer["stored_through"] >= written
    assert answer["dropped"] == 0
    # What is left is shipped at the next start: written while stopping, and possibly some the
    # server stored but whose acknowledgement the stopping agent did not receive (sent again,
    # stored once). No gap between what the server stored and what the buffer still holds.
    left = buffer.batch(100_000)
    assert left is None or left.first_seq <= answer["stored_through"] + 1
    kinds = {r["kind"] for r in answer["records"]}
    names = {json.loads(r["body"]).get("name") for r in answer["records"] if r["kind"] == "metric"}
    assert "log" in kinds
    assert "edgefleet_agent_telemetry_queued_records" in names
    buffer.close()
