"""The rollout controller across server processes: killed with SIGKILL mid-wave and
restarted, it resumes without repeating or skipping a device; with two processes on one
PostgreSQL exactly one acts, and when it dies the other takes over."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgefleet.credentials import Role
from tests.ab_world import HARDWARE, AbWorld, eventually
from tests.conftest import Device, Fleet, start_fleet

RELEASE = "2026.12.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``edgefleet server`` as its own process, so it can be killed for real."""

    def __init__(self, fleet: Fleet, log: Path) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "edgefleet", "server", "--data-dir", str(fleet.settings.data_dir),
                   "--port", str(self.port), "--log-level", "info"]
        if fleet.settings.database_url:
            command += ["--database-url", fleet.settings.database_url]
        env = {**os.environ, "EDGEFLEET_ATTESTATION_REQUIRED": "false", "EDGEFLEET_ROLLOUT_TICK_SECONDS": "0.1"}
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(command, env=env, stdout=stderr, stderr=stderr)
        self.ca = fleet.settings.pki.ca_cert
        tls = ssl.create_default_context(cafile=str(self.ca))
        self.client = httpx.Client(base_url=self.url, verify=tls, timeout=10,
                                   headers={"authorization": f"Bearer {fleet.tokens[Role.OPERATOR]}"})
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.client.close()

    def leads(self) -> bool:
        return "this process is the rollout controller" in " ".join(self.log.read_text().split())


def prepared(tmp: Path, database: str | None, count: int) -> tuple[Fleet, list[Device], str]:
    """A data dir with a published release and enrolled devices (labelled for this test
    only: the PostgreSQL database is shared by the session); its thread server stopped."""
    plane = start_fleet(tmp / "plane", database)
    AbWorld(plane, tmp / "releases").publish(RELEASE, 12)
    label = f"ctl-{secrets.token_hex(4)}"
    devices = [plane.enroll(labels={"fleet": label}, hardware_type=HARDWARE) for _ in range(count)]
    for client in plane.clients:  # no connection may outlive the server's event loop
        client.close()
    plane.server.stop()
    return plane, devices, label


def report_committed(server: ServerProcess, device: Device, seq: int) -> None:
    tls = ssl.create_default_context(cafile=str(server.ca))
    tls.load_cert_chain(str(device.directory / "cert.pem"), str(device.directory / "key.pem"))
    body = {"seq": seq, "running_version": RELEASE, "update_state": "committed",
            "update": {"phase": "committed", "release": RELEASE}}
    with httpx.Client(base_url=server.url, verify=tls, timeout=10) as client:
        assert client.post(f"/api/v1/devices/{device.id}/status", json=body).json()["accepted"]


def assigned(server: ServerProcess, rollout_id: str) -> list[str]:
    trail = server.client.get(f"/api/v1/admin/rollouts/{rollout_id}/events").json()["events"]
    return [e["device_id"] for e in trail if e["kind"] == "assign"]


def status(server: ServerProcess, rollout_id: str) -> str:
    return str(server.client.get(f"/api/v1/admin/rollouts/{rollout_id}").json()["status"])


def start(server: ServerProcess, label: str) -> str:
    body = {"release": RELEASE, "selector": {"fleet": label}, "waves": [{"size": "2"}, {"size": "100%"}]}
    response = server.client.post("/api/v1/admin/rollouts", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def director_versions(server: ServerProcess, devices: list[Device]) -> list[int]:
    return [server.client.get(f"/api/v1/admin/devices/{d.id}/desired").json()["version"] for d in devices]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str | None:
    # Every server process on a database takes part in electing the controller, so these
    # tests get a database of their own (not the session's, where other servers run).
    return None if request.param == "sqlite" else str(request.getfixturevalue("own_postgres_url"))


def test_controller_killed_mid_wave_resumes_without_repeating_or_skipping(tmp_path: Path,
                                                                          backend: str | None) -> None:
    plane, devices, label = prepared(tmp_path, backend, 4)
    first = ServerProcess(plane, tmp_path / "first.log")
    try:
        rollout_id = start(first, label)
        wave_one = eventually(lambda: len(assigned(first, rollout_id)) == 2 and assigned(first, rollout_id),
                              "wave 1 told")
    finally:
        first.kill()  # mid-wave: told, nothing committed yet
    second = ServerProcess(plane, tmp_path / "second.log")
    try:
        for seq, device in enumerate(d for d in devices if d.id in wave_one):
            report_committed(second, device, seq + 1)
        eventually(lambda: len(assigned(second, rollout_id)) == 4, "wave 2 told")
        for device in devices:
            if device.id not in wave_one:
                report_committed(second, device, 1)
        eventually(lambda: status(second, rollout_id) == "completed", "completion")
        told = assigned(second, rollout_id)
        assert sorted(told) == sorted(d.id for d in devices)  # each device told once, none skipped
        assert director_versions(second, devices) == [1, 1, 1, 1]  # each assigned exactly once
    finally:
        second.stop()
        plane.close()


@pytest.mark.postgres
def test_two_server_processes_elect_one_controller_and_hand_over_when_it_dies(
    tmp_path: Path, own_postgres_url: str
) -> None:
    plane, devices, label = prepared(tmp_path, own_postgres_url, 4)
    one = ServerProcess(plane, tmp_path / "one.log")
    two = ServerProcess(plane, tmp_path / "two.log")
    try:
        rollout_id = start(one, label)
        wave_one = eventually(lambda: len(assigned(two, rollout_id)) == 2 and assigned(two, rollout_id),
                              "wave 1 told")
        time.sleep(0.5)
        assert [one.leads(), two.leads()].count(True) == 1  # exactly one controller acts
        leader, other = (one, two) if one.leads() else (two, one)
        leader.kill()
        for seq, device in enumerate(d for d in devices if d.id in wave_one):
            report_committed(other, device, seq + 1)
        eventually(lambda: other.leads(), "handover", timeout=30)
        eventually(lambda: len(assigned(other, rollout_id)) == 4, "wave 2 told by the new leader")
        assert sorted(assigned(other, rollout_id)) == sorted(d.id for d in devices)
        # the director assignment follows the recorded decision; each device exactly once
        eventually(lambda: director_versions(other, devices) == [1, 1, 1, 1], "assignments")
        time.sleep(0.5)
        assert director_versions(other, devices) == [1, 1, 1, 1]
    finally:
        one.stop()
        two.stop()
        plane.close()
