"""Drift: an emulated device whose OS configuration is changed behind the platform's back
is out of sync within one status report, an HMAC-signed alert webhook arrives, and
self-heal brings the device back in sync."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.credentials import Role
from tests.conftest import Fleet, start_fleet
from tests.gitops_world import FleetRepo
from tests.test_gitops import BASE

SECRET = "alert-hmac-key"


class Receiver:
    """An alert webhook endpoint that keeps what arrives with a valid signature."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.forged = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if hmac.compare_digest(self.headers.get("x-edgefleet-signature", ""), expected):
                    outer.alerts.append(json.loads(body))
                    self.send_response(204)
                else:
                    outer.forged += 1
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def test_config_changed_behind_the_platforms_back_is_drift_alerted_and_healed(tmp_path: Path,
                                                                               receiver: Receiver) -> None:
    repo = FleetRepo(tmp_path / "git")
    # No release in the group: this device only takes configuration.
    repo.commit({**BASE, "fleet.yaml": "self_heal: true\n",
                 "groups/stores.yaml": "selector: {matchLabels: {site: store-1}}\nmaintenance: {install: []}\n"},
                "fleet", signer="alice")
    plane: Fleet = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600,
                               alert_webhooks=[receiver.url], alert_webhook_secret=SECRET,
                               gitops=[{"name": "platform", "kind": "root", "url": str(repo.path),
                                        "allowed_signers": str(repo.allowed_signers("alice"))}])
    from tests.ab_world import AbWorld

    world = AbWorld(plane, tmp_path / "releases")
    world.publish("2026.12.0", 12)  # the TUF roots and the director the device verifies its configuration with
    # Update checks (which put signed configuration back) only when the desired state changes:
    # what heals the drift here is the server's self_heal.
    emulated = world.device("drift", status_interval_seconds=0.3, update_check_seconds=3600)
    viewer = plane.client(role=Role.VIEWER)
    user_data = emulated.device.os_config_dir() / "nocloud" / "user-data"

    class Running:  # the agent of the device's current boot
        def __getattr__(self, name: str) -> Any:
            return getattr(emulated.agent, name)

    agent = Running()

    def drift_state() -> str | None:
        rows = viewer.get("/api/v1/admin/drift").json()["devices"]
        return rows[0]["state"] if rows else None

    async def until(check: Any, what: str, timeout: float = 20) -> float:
        started = time.monotonic()
        while not await asyncio.to_thread(check):
            assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(emulated.run(stop))
        try:
            await until(lambda: emulated.agent is not None and agent.reports >= 1, "enrollment")
            await asyncio.to_thread(plane.client(role=Role.OPERATOR).post, "/api/v1/admin/gitops/sync")
            log = (await asyncio.to_thread(viewer.get, "/api/v1/admin/gitops/commits")).json()["commits"]
            assert [c["accepted"] for c in log] == [True]
            await until(lambda: user_data.exists(), "configuration applied")
            desired_text = user_data.read_text()
            assert "hostname: hw-drift" in desired_text  # the device's own hostname, rendered per device
            reports = agent.reports
            user_data.write_text(desired_text.replace("content: store-1", "content: hacked"))  # behind our back
            # One report may have been in flight (read before the change); the one after it
            # carries the drift, and the server records the alert in that report's transaction.
            await until(lambda: agent.reports >= reports + 2, "two more reports")
            drift_alerts = [a for a in viewer.get("/api/v1/admin/alerts").json()["alerts"] if a["kind"] == "drift"]
            assert drift_alerts, "drift not recorded within one report of the change"
            await until(lambda: receiver.alerts, "drift alert webhook", timeout=5)
            await until(lambda: user_data.read_text() == desired_text, "self-heal")
            await until(lambda: drift_state() is None, "back in sync")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    try:
        asyncio.run(scenario())
        alert = receiver.alerts[0]
        assert alert["kind"] == "drift"
        assert alert["subject"] == agent.device_id
        assert list(alert["details"]["differences"]) == ["cloud_init"]
        assert receiver.forged == 0
        drift = viewer.get("/api/v1/admin/alerts").json()["alerts"]
        assert drift[0]["delivered_at"] is not None
        assert b"edgefleet_drift_events_total 1.0" in viewer.get("/metrics").content
    finally:
        plane.close()


def test_device_applies_only_configuration_the_director_signed(tmp_path: Path) -> None:
    from tests.ab_world import AbWorld, run, tamper_desired, until

    repo = FleetRepo(tmp_path / "git")
    repo.commit(BASE, "fleet", signer="alice")
    plane: Fleet = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600,
                               gitops=[{"name": "platform", "kind": "root", "url": str(repo.path),
                                        "allowed_signers": str(repo.allowed_signers("alice"))}])
    try:
        world = AbWorld(plane, tmp_path / "releases")
        world.publish("2026.12.0", 12)  # roots and a release: the device verifies the director
        device = world.device("signed-config", status_interval_seconds=0.3, update_check_seconds=0.5)
        user_data = device.device.os_config_dir() / "nocloud" / "user-data"
        operator = plane.client(role=Role.OPERATOR)

        async def steps() -> None:
            await until(lambda: device.agent is not None and device.agent.reports >= 1, what="enrollment")
            await until(lambda: user_data.exists(), what="signed configuration applied")
            assert device.agent is not None
            url = f"/api/v1/admin/devices/{device.agent.device_id}/desired"
            document = (await asyncio.to_thread(operator.get, url)).json()["document"]
            forged = {**document["config"], "os": {**document["config"]["os"], "cloud_init": "#cloud-config\n"
                                                   "users: [{name: intruder}]\n"}}
            # Past the one writer (which would have the director sign it): straight into the store.
            await asyncio.to_thread(tamper_desired, world, device.agent.device_id, {**document, "config": forged})
            await asyncio.sleep(2.0)  # several update checks and reports
            assert "intruder" not in user_data.read_text()

        run(world, device, steps)
        assert "hostname: hw-signed-config" in user_data.read_text()
    finally:
        plane.close()
