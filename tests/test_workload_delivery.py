"""A workload's module travels as a release artifact: signed offline into the image
repository, published to the control plane's mirror, fetched and verified by the device's
TUF client, and run by the supervisor."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.errors import UpdateRefused
from edgefleet.protocol.workloads import WasmWorkload
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.workloads.supervisor import Supervisor
from tests.ab_world import AbWorld, run, until
from tests.conftest import start_fleet
from tests.gitops_world import FleetRepo
from tests.test_gitops import BASE
from tests.uptane_world import Setup
from tests.wasm_modules import module, settled

MODULE = "artifacts/7.0/meter.wasm"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    plane = start_fleet(tmp_path / "plane", None)
    keys = Keystore(tmp_path / "keys")
    workspace = Workspace(tmp_path / "ws")
    workspace.init(keys, load_online_keys(plane.settings.data_dir / "keys" / "online-keys.json"), datetime.now(UTC))
    image, meter = tmp_path / "7.0.img", tmp_path / "meter.wasm"
    image.write_bytes(b"image 7.0 " * 5000)
    meter.write_bytes(module("hello", "meter reading 42"))
    workspace.create_release(image, ReleaseInfo("7.0", 7, ("hw-x86",), {}), datetime.now(UTC), artifacts=[meter])
    workspace.sign_targets(keys.signer("targets-1"))
    with AdminClient(plane.url, plane.tokens[Role.ADMIN], plane.settings.pki.ca_cert) as client:
        publish_workspace(workspace, client)
    yield Setup(plane, workspace, plane.enroll(hardware_type="hw-x86"), tmp_path)
    plane.close()


def test_a_module_published_as_a_release_artifact_is_fetched_verified_and_run(setup: Setup) -> None:
    client = setup.client()
    [(data, target)], changed = client.artifacts([MODULE])
    assert target.hashes == setup.workspace.image.targets().signed.targets[MODULE].hashes
    assert not changed

    async def run() -> list[str]:
        supervisor = Supervisor(setup.tmp / "data", setup.tmp / "logs")
        spec = WasmWorkload(name="meter", kind="wasm", target=MODULE, restart={"policy": "never"})
        await supervisor.apply([(spec, [(data, target)])])
        return (await settled(supervisor, "meter", lambda s: s.state == "exited")).output

    assert asyncio.run(asyncio.wait_for(run(), 30)) == ["meter reading 42"]
    client.close()


def test_a_kept_artifact_changed_or_removed_on_disk_is_fetched_again(setup: Setup) -> None:
    client = setup.client()
    [(data, target)], _ = client.artifacts([MODULE])
    kept = setup.device.directory / "artifacts" / target.hashes["sha256"]
    kept.write_bytes(data.replace(b"meter reading 42", b"meter reading 99"))
    [(again, _)], changed = client.artifacts([MODULE])
    assert again == data
    assert changed
    assert kept.read_bytes() == data
    kept.unlink()  # removed behind the agent's back
    [(again, _)], changed = client.artifacts([MODULE])
    assert (again, changed) == (data, True)
    assert kept.read_bytes() == data
    assert client.artifacts([MODULE])[1] is False  # nothing changed since
    client.close()


def test_an_artifact_the_image_repository_does_not_list_is_refused(setup: Setup) -> None:
    client = setup.client()
    with pytest.raises(UpdateRefused) as refused:
        client.artifacts(["artifacts/7.0/implant.wasm"])
    assert refused.value.code == "artifact_unknown"
    assert not (setup.device.directory / "artifacts").exists()
    client.close()


def test_a_workload_of_the_group_runs_on_the_device_and_is_reported(tmp_path: Path) -> None:
    """From the fleet repository (apps/<group>/wasm.yaml) through the director-signed
    configuration and the image repository to a running module, and back in the status
    report. A kept module changed behind the agent's back is drift: alerted, healed."""
    repo = FleetRepo(tmp_path / "git")
    wasm = ("- {name: meter, target: artifacts/2026.12.0/meter.wasm, limits: {memory_mib: 4},\n"
            "   restart: {policy: always, initial_seconds: 0.2, max_seconds: 0.5}}\n")
    repo.with_apps({**BASE, "fleet.yaml": "self_heal: true\n"}, {"apps/stores/wasm.yaml": wasm})
    plane = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, gitops=repo.syncs())
    try:
        world = AbWorld(plane, tmp_path / "releases")
        meter = tmp_path / "meter.wasm"
        meter.write_bytes(module("hello", "meter reading 42"))
        world.publish("2026.12.0", 12, artifacts=[meter])
        device = world.device("workloads", status_interval_seconds=0.3, update_check_seconds=0.5,
                              telemetry_batch_seconds=0.2)
        viewer = plane.client(role=Role.VIEWER)

        def reported() -> dict[str, Any] | None:
            assert device.agent is not None
            view = viewer.get(f"/api/v1/admin/devices/{device.agent.device_id}").json()
            found = [w for w in view.get("workloads") or [] if w["name"] == "meter"]
            return found[0] if found else None

        def drifted() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = viewer.get("/api/v1/admin/drift").json()["devices"]
            return [row for row in rows if row["state"] == "out_of_sync"]

        def telemetry() -> list[dict[str, Any]]:
            assert device.agent is not None
            response = viewer.get(f"/api/v1/admin/devices/{device.agent.device_id}/telemetry")
            return response.json()["records"] if response.status_code == 200 else []

        def meter_drift_alerts() -> list[dict[str, Any]]:
            return [a for a in viewer.get("/api/v1/admin/alerts").json()["alerts"]
                    if a["kind"] == "drift" and "workload.meter" in a["details"]["differences"]]

        async def steps() -> None:
            await until(lambda: device.agent is not None and device.agent.reports >= 1, what="enrollment")
            await until(lambda: (reported() or {}).get("restarts", 0) >= 1, what="the module running, reported")
            status = reported()
            assert status is not None
            assert status["output"][-1] == "meter reading 42"
            assert status["sha256"] == hashlib.sha256(meter.read_bytes()).hexdigest()
            assert status["targets"] == ["artifacts/2026.12.0/meter.wasm"]
            assert await asyncio.to_thread(drifted) == []  # it runs as declared
            kept = device.device.agent_dir / "artifacts" / status["sha256"]
            kept.write_bytes(b"\\0asm tampered")  # behind the agent's back
            await until(lambda: len(meter_drift_alerts()) == 1, what="drift alerted")
            await until(lambda: kept.read_bytes() == meter.read_bytes(), what="the kept module fetched again")
            await until(lambda: drifted() == [], what="back in sync")
            kept.unlink()  # removed behind the agent's back: drift again, healed again
            await until(lambda: len(meter_drift_alerts()) == 2, what="the removal alerted")
            await until(lambda: kept.exists() and kept.read_bytes() == meter.read_bytes(), what="fetched again")
            await until(lambda: drifted() == [], what="back in sync after the removal")
            # Its output went into the device's durable buffer and from there to the control plane.
            await until(lambda: any(json.loads(r["body"]) == {"level": "info", "source": "workload/meter",
                                                              "message": "meter reading 42"}
                                    for r in telemetry()), what="the module's output in telemetry")
            assert {json.loads(r["body"]).get("name") for r in telemetry() if r["kind"] == "metric"} >= {
                "edgefleet_agent_telemetry_queued_records", "edgefleet_agent_telemetry_dropped_records_total"}

        run(world, device, steps)
    finally:
        plane.close()


def test_a_trial_boot_whose_workloads_do_not_come_up_healthy_rolls_back(tmp_path: Path) -> None:
    """A ``workloads`` health check: the new release commits only once every workload of
    the device's configuration runs; a crashing one rolls the update back."""
    repo = FleetRepo(tmp_path / "git")
    group = "selector: {matchLabels: {tier: %s}}\npriority: 10\nmaintenance: {install: []}\n"
    module_of = "- {name: meter, target: artifacts/2026.12.1/%s.wasm, restart: {policy: %s, initial_seconds: 0.2}}\n"
    repo.with_apps({**BASE, "groups/good.yaml": group % "good", "groups/bad.yaml": group % "bad"},
                   {"apps/good/wasm.yaml": module_of % ("good", "never"),
                    "apps/bad/wasm.yaml": module_of % ("bad", "always")})
    plane = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, gitops=repo.syncs())
    try:
        world = AbWorld(plane, tmp_path / "releases")
        good, bad = tmp_path / "good.wasm", tmp_path / "bad.wasm"
        good.write_bytes(module("hello", "meter ok"))
        bad.write_bytes(module("crashes", "meter crashing"))
        world.publish("2026.12.1", 13, artifacts=[good, bad])
        checks = [{"name": "workloads", "kind": "workloads", "timeout_seconds": 20}]
        devices = {tier: world.device(tier, labels={"tier": tier}, status_interval_seconds=0.3,
                                      update_check_seconds=0.5, health_checks=checks, health_interval_seconds=0.5)
                   for tier in ("good", "bad")}

        def meter(tier: str) -> dict[str, Any]:
            view = world.record(devices[tier])
            return next((w.model_dump() for w in view.workloads or [] if w.name == "meter"), {})

        async def steps() -> None:
            await until(lambda: all(d.agent is not None and d.agent.reports >= 1 for d in devices.values()),
                        what="enrolled")
            assert plane.client(role=Role.OPERATOR).post("/api/v1/admin/gitops/sync").status_code == 200
            await until(lambda: meter("good").get("last_exit") == "exited", what="the good meter ran")
            await until(lambda: meter("bad").get("last_exit") == "crashed", what="the bad meter crashed")
            for tier in devices:
                await asyncio.to_thread(world.assign, devices[tier], "2026.12.1")
            await until(lambda: world.record(devices["good"]).update_state == "committed", timeout=60,
                        what="the good device committed")
            await until(lambda: world.record(devices["bad"]).update_state == "rolled_back", timeout=60,
                        what="the bad device rolled back")
            # In steady state the crash loop makes the device unhealthy, naming the workload.
            await until(lambda: [(f.name, f.required) for f in world.record(devices["bad"]).health_findings
                                 if f.name.startswith("workload/")] == [("workload/meter", True)],
                        what="the bad device unhealthy on its workload")

        async def scenario() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(d.run(stop)) for d in devices.values()]
            try:
                await asyncio.wait_for(steps(), 120)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 30)

        asyncio.run(scenario())
        update = world.record(devices["bad"]).update or {}
        assert "required health check failed: workloads (workload meter crashed" in update["reason"], update
        assert world.record(devices["good"]).running_version == "2026.12.1"
        assert world.record(devices["bad"]).running_version == "2026.11.0"
        assert world.record(devices["bad"]).health == "unhealthy"
        assert not [f for f in world.record(devices["good"]).health_findings if f.name.startswith("workload/")]
    finally:
        plane.close()
