"""Wave rollouts with emulated devices (real agents, software TPMs, A/B slots) against a
real control plane: clean waves with bake time, a tampered boot halting the rollout before
the next wave, the failure threshold, and abort with revert."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.agent.emulated import EmulatedDevice
from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.cli import app
from edgefleet.credentials import Role
from edgefleet.protocol.v1 import StatusReport
from edgefleet.web.device_client import HttpsTransport
from tests.ab_world import RUNNING, SLOT_BYTES, AbWorld, until
from tests.cli_helpers import cli
from tests.conftest import own_findings, start_fleet

CHECKS = [{"name": "app", "kind": "command", "command": ["true"], "timeout_seconds": 5}]
FAILING = [{"name": "app", "kind": "command", "command": ["false"], "timeout_seconds": 5}]
HANGING = [{"name": "app", "kind": "command", "command": ["sleep", "600"], "timeout_seconds": 900}]


class TamperedDevice(EmulatedDevice):
    """A device whose new slot is changed between install and boot (an implant)."""

    def boot(self) -> None:
        image = self.device.slot_image("b")
        header = vimage.read_header(image) or {}
        if header.get("version") == "2026.12.0":
            data = bytearray(image.read_bytes())
            data[SLOT_BYTES - 8:] = b"implant!"
            image.write_bytes(bytes(data))
        super().boot()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AbWorld]:
    plane = start_fleet(tmp_path_factory.mktemp("rollout-plane"), None, rollout_tick_seconds=0.2)
    world = AbWorld(plane, tmp_path_factory.mktemp("rollouts"))
    factory = world.tmp / "factory.img"
    factory.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES))
    for version, counter, image, checks in ((RUNNING, 1, factory, ()), ("2026.12.0", 12, None, CHECKS),
                                            ("2026.12.1", 13, None, FAILING), ("2026.12.2", 14, None, HANGING)):
        if image is None:
            image = world.tmp / f"{version}.img"
            image.write_bytes(vimage.build(version, counter, size=SLOT_BYTES, health_checks=checks,
                                           filler=version.encode()))
        pcrs = reference_pcrs(image)
        world.publish(version, counter, image=image, measurements={0: pcrs[0].hex(), 4: pcrs[4].hex()})
    yield world
    time.sleep(3)  # let the devices' last long polls (2 s) end before the server stops
    plane.close()


class SlowRebootDevice(EmulatedDevice):
    """A device whose reboots take a few seconds (a slow disk): it commits late."""

    def boot(self) -> None:
        if self.boots:
            time.sleep(4)
        super().boot()


def fleet_of(world: AbWorld, name: str, count: int, tampered: int | None = None,
             **settings: Any) -> list[EmulatedDevice]:
    devices = []
    for i in range(count):
        tpm = InsecureSoftwareTpm(world.tmp / f"{name}-{i}-tpm")
        labels = {"fleet": name, "ring": "canary" if i < 2 else "main"}
        emulated = world.device(f"{name}-{i}", tpm=tpm, labels=labels, status_interval_seconds=0.5,
                                update_check_seconds=1, **settings)
        if i == tampered:
            emulated = TamperedDevice(emulated.device, emulated.make_agent, tpm=tpm, hang_seconds=0.2)
        devices.append(emulated)
    return devices


def api(world: AbWorld, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = world.plane.client(role=Role.OPERATOR).request(method, path, **kwargs)
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def run_fleet(devices: list[EmulatedDevice], steps: Any, timeout: float = 90) -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(d.run(stop)) for d in devices]
        try:
            await asyncio.wait_for(steps(), timeout)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(scenario())


async def enrolled(devices: list[EmulatedDevice]) -> None:
    await until(lambda: all(d.agent is not None and d.agent.attested is not None and d.agent.reports >= 2
                            for d in devices), timeout=30, what="enrollment and attestation")


def rollout(world: AbWorld, name: str, release: str, waves: list[dict[str, Any]], **extra: Any) -> str:
    body = {"release": release, "selector": {"fleet": name}, "waves": waves, **extra}
    return str(api(world, "POST", "/api/v1/admin/rollouts", json=body)["id"])


def status(world: AbWorld, rollout_id: str) -> dict[str, Any]:
    return api(world, "GET", f"/api/v1/admin/rollouts/{rollout_id}")


def events(world: AbWorld, rollout_id: str) -> list[dict[str, Any]]:
    return list(reversed(api(world, "GET", f"/api/v1/admin/rollouts/{rollout_id}/events")["events"]))


def roll(world: AbWorld, devices: list[EmulatedDevice], name: str, release: str, waves: list[dict[str, Any]],
         until_status: str, **extra: Any) -> str:
    """Run the fleet, start a rollout over it, and wait for ``until_status``."""
    rollout_id = ""

    async def steps() -> None:
        nonlocal rollout_id
        await enrolled(devices)
        rollout_id = rollout(world, name, release, waves, **extra)
        await until(lambda: status(world, rollout_id)["status"] == until_status, timeout=60, what=until_status)
        await asyncio.sleep(1.0)  # the controller keeps looking: nothing more may happen

    run_fleet(devices, steps)
    return rollout_id


def test_clean_rollout_finishes_wave_by_wave_with_bake_time_honoured(world: AbWorld) -> None:
    devices = fleet_of(world, "clean", 3)
    rollout_id = roll(world, devices, "clean", "2026.12.0", [{"size": "1", "bake_seconds": 2}, {"size": "100%"}],
                      "completed")
    for emulated in devices:
        assert emulated.device.os_version() == "2026.12.0"
    trail = events(world, rollout_id)
    kinds = [e["kind"] for e in trail]
    assert kinds.count("wave_started") == 2
    assert "baking" in kinds
    first_commit = next(e for e in trail if e["kind"] == "device" and e["reason"] == "succeeded")
    second_wave = [e for e in trail if e["kind"] == "wave_started"][1]
    assert (datetime.fromisoformat(second_wave["at"]) - datetime.fromisoformat(first_commit["at"])).total_seconds() >= 2
    view = status(world, rollout_id)
    assert [w["counts"]["succeeded"] for w in view["waves"]] == [1, 2]
    watched = cli("rollout", "watch", rollout_id, *world.server).splitlines()  # returns once stopped
    assert watched[-1].startswith(f"{rollout_id} completed wave 2/2")  # off a terminal: a line per change
    shown = cli("rollout", "status", rollout_id, "--events", *world.server)
    assert "wave_started" in shown
    assert "baking" in shown


def test_tampered_boot_fails_attestation_and_halts_before_the_next_wave(world: AbWorld) -> None:
    devices = fleet_of(world, "tampered", 4, tampered=0)
    rollout_id = roll(world, devices, "tampered", "2026.12.0", [{"size": "2", "selector": {"ring": "canary"}},
                                                                 {"size": "100%"}], "halted")
    view = status(world, rollout_id)
    assert "attestation failed on" in view["reason"]
    assert view["wave"] == 1
    assert view["waves"][1]["counts"] == {s: 0 for s in view["waves"][1]["counts"]}
    # The wave it did not start shows who it would take: the two devices that are not canaries.
    assert view["waves"][1]["planned_count"] == 2
    assert set(view["waves"][1]["planned"]) == {str(d.agent.device_id) for d in devices[2:] if d.agent}
    assert view["waves"][0]["planned_count"] is None  # a started wave has its counts instead
    shown = cli("rollout", "status", rollout_id, *world.server)
    assert "planned" in shown
    untouched = [d for d in devices if d.boots == 1]
    assert len(untouched) == 2  # the next wave's devices never got the release
    assert all(d.device.os_version() == RUNNING for d in untouched)
    assert devices[0].device.os_version() == RUNNING  # the tampered device rolled back by itself
    alerts = world.plane.client(role=Role.VIEWER).get("/api/v1/admin/alerts").json()["alerts"]
    assert any(a["kind"] == "rollout_halted" and a["subject"] == rollout_id for a in alerts)


def test_crossing_the_failure_threshold_halts_the_rollout(world: AbWorld) -> None:
    devices = fleet_of(world, "failing", 4)
    rollout_id = roll(world, devices, "failing", "2026.12.1", [{"size": "2", "success_threshold": 0},
                                                                {"size": "100%"}], "halted", failure_threshold="2")
    view = status(world, rollout_id)
    assert view["reason"] == "2 devices failed or timed out, threshold 2"
    reasons = [f["reason"] for f in view["waves"][0]["failed"]]
    assert len(reasons) == 2
    assert all(r.startswith("update rolled_back on the device") for r in reasons), reasons


def test_abort_with_revert_returns_updated_devices_to_the_previous_release(world: AbWorld) -> None:
    devices = fleet_of(world, "revert", 3)
    rollout_id = ""

    async def steps() -> None:
        nonlocal rollout_id
        await enrolled(devices)
        rollout_id = rollout(world, "revert", "2026.12.0", [{"size": "1"}, {"size": "100%"}],
                             approval_between_waves=True)
        await until(lambda: status(world, rollout_id)["status"] == "awaiting_approval", timeout=60, what="wave 1")
        await asyncio.to_thread(cli, "rollout", "abort", rollout_id, "--revert", *world.server)
        await until(lambda: all(d.device.os_version() == RUNNING for d in devices) and
                    any(d.boots >= 3 for d in devices), timeout=60, what="revert")

    run_fleet(devices, steps)
    assert status(world, rollout_id)["status"] == "aborted"
    reverted = [d for d in devices if d.boots >= 3]
    assert len(reverted) == 1
    assert reverted[0].device.booted() == "a"
    kinds = [e["kind"] for e in events(world, rollout_id)]
    assert kinds[-2:] == ["abort", "revert"]


def test_an_offline_device_neither_stalls_its_wave_nor_fails_and_a_late_joiner_gets_the_release(
        world: AbWorld) -> None:
    devices = fleet_of(world, "offline", 4)
    present, away, late = devices[:3], devices[1], devices[3]
    rollout_id = ""

    async def scenario() -> None:
        nonlocal rollout_id
        stop, link_down = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(d.run(stop)) for d in present if d is not away]
        absent = asyncio.create_task(away.run(link_down))
        try:
            await enrolled(present)
            link_down.set()  # the canary store's link goes down before the rollout starts
            await asyncio.wait_for(absent, 30)
            rollout_id = rollout(world, "offline", "2026.12.0", [{"size": "2", "selector": {"ring": "canary"}},
                                                                 {"size": "100%"}], offline_after_seconds=3)
            await until(lambda: status(world, rollout_id)["status"] == "completed", timeout=60, what="completion")
            view = status(world, rollout_id)
            assert view["waves"][0]["counts"]["offline"] == 1  # counted apart, and not waited for
            assert view["waves"][0]["counts"]["succeeded"] == 1
            # The link comes back, and a new device joins the group after the rollout completed.
            tasks += [asyncio.create_task(away.run(stop)), asyncio.create_task(late.run(stop))]
            await until(lambda: [w["counts"]["succeeded"] for w in status(world, rollout_id)["waves"]] == [2, 2],
                        timeout=60, what="the returning and the joining device on the release")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert all(d.device.os_version() == "2026.12.0" for d in devices)
    assert away.agent is not None
    trail = events(world, rollout_id)
    verdicts = [e["reason"] for e in trail if e["device_id"] == away.agent.device_id and e["kind"] == "device"]
    # "updating" in between is seen only if a step falls inside its update.
    assert verdicts[0] == "offline: not seen since the wave started"
    assert verdicts[-1] == "succeeded"
    assert set(verdicts[1:-1]) <= {"updating"}
    assert any(e["kind"] == "assign" and e["reason"] == "joined after the rollout completed" for e in trail)


def test_a_canary_whose_trial_deadline_passes_on_a_slow_link_rolls_back_reports_and_fails_the_wave(
        world: AbWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's stuck canary: a device that had rolled back a broken release was the canary
    of the next rollout, and its trial passed the deadline. It logged the rollback, but the
    report it sends before rebooting took longer than its 5 s allowance on a loaded server:
    the watchdog died of the timeout before it asked for the reboot, the device never
    rebooted, the server kept showing the trial, and the rollout counted it "updating"."""
    real_report = HttpsTransport.report_status

    async def slow_while_rolling_back(self: HttpsTransport, device_id: str, report: StatusReport) -> Any:
        if report.update is not None and report.update.phase == "rolling_back":
            await asyncio.sleep(6)  # a loaded server, or a slow link, at the wrong moment
        return await real_report(self, device_id, report)

    monkeypatch.setattr(HttpsTransport, "report_status", slow_while_rolling_back)
    devices = fleet_of(world, "stuck", 3, trial_deadline_seconds=4)
    canaries, rest = devices[:2], devices[2]
    rollout_id = ""

    async def steps() -> None:
        nonlocal rollout_id
        await enrolled(devices)
        for canary in canaries:
            await asyncio.to_thread(world.assign, canary, "2026.12.1")
        await until(lambda: all(world.record(c).update_state == "rolled_back" for c in canaries), timeout=30,
                    what="the first rollback")
        rollout_id = rollout(world, "stuck", "2026.12.2", [{"size": "100%", "selector": {"ring": "canary"}},
                                                          {"size": "100%"}], failure_threshold="2")
        await until(lambda: status(world, rollout_id)["status"] == "halted", timeout=90, what="the halt")

    run_fleet(devices, steps, timeout=150)
    view = status(world, rollout_id)
    failed = view["waves"][0]["failed"]
    assert sorted(f["device_id"] for f in failed) == sorted(world.device_id(c) for c in canaries)
    assert all("trial deadline of 4s passed" in f["reason"] for f in failed), failed
    for canary in canaries:
        assert canary.boots == 5  # factory, the broken release and back, the hung one and back
        assert canary.device.booted() == "a"
        record = world.record(canary)
        assert (record.running_version, record.update_state) == (RUNNING, "rolled_back")
    assert view["waves"][1]["counts"] == {s: 0 for s in view["waves"][1]["counts"]}
    assert rest.boots == 1


def health_d(root: Path, flag: Path) -> Path:
    """A device's health.d: a required check that fails once ``flag`` exists (the app lost
    its port), and a wanted one that always fails (its metrics exporter is not installed)."""
    for kind in ("required.d", "wanted.d"):
        (root / kind).mkdir(parents=True)
    app = root / "required.d" / "app-ready"
    app.write_text(f"#!/bin/sh\nif [ -e '{flag}' ]; then echo 'app: port 8443 in use' >&2; exit 1; fi\n")
    metrics = root / "wanted.d" / "metrics-exporter"
    metrics.write_text("#!/bin/sh\necho 'node_exporter: not installed' >&2\nexit 1\n")
    for script in (app, metrics):
        script.chmod(0o755)
    return root


def test_a_required_check_failing_after_commit_halts_the_rollout_while_it_bakes(world: AbWorld) -> None:
    broken = world.tmp / "unhealthy-flag"
    devices = [world.device(f"health-{i}", tpm=InsecureSoftwareTpm(world.tmp / f"health-{i}-tpm"),
                            labels={"fleet": "health", "ring": "canary" if i < 2 else "main"},
                            status_interval_seconds=0.5, update_check_seconds=1, health_interval_seconds=0.5,
                            health_dir=health_d(world.tmp / f"health-{i}.d", broken if i == 0 else world.tmp / "never"))
               for i in range(3)]
    rollout_id = ""

    async def steps() -> None:
        nonlocal rollout_id
        await enrolled(devices)
        await until(lambda: all(world.record(d).health == "degraded" for d in devices), timeout=30,
                    what="the wanted check's verdict")
        rollout_id = rollout(world, "health", "2026.12.0", [{"size": "100%", "selector": {"ring": "canary"},
                                                            "bake_seconds": 600}, {"size": "100%"}],
                             failure_threshold="1")
        await until(lambda: status(world, rollout_id)["status"] == "baking", timeout=60, what="the bake")
        broken.touch()  # the app on the first canary loses its port, after the commit
        await until(lambda: status(world, rollout_id)["status"] == "halted", timeout=60, what="the halt")

    run_fleet(devices, steps, timeout=150)
    view = status(world, rollout_id)
    sick = world.device_id(devices[0])
    assert view["reason"] == "1 devices failed or timed out, threshold 1"
    assert [(f["device_id"], f["reason"]) for f in view["waves"][0]["failed"]] == [
        (sick, "unhealthy on the release: health.d/app-ready")]
    assert view["waves"][1]["counts"] == {s: 0 for s in view["waves"][1]["counts"]}
    assert devices[2].boots == 1  # the next wave never got the release
    trail = [e for e in events(world, rollout_id) if e["device_id"] == sick and e["kind"] == "device"]
    assert trail[-1]["reason"] == "failed: unhealthy on the release: health.d/app-ready"
    assert trail[-1]["at"]  # when
    shown = json.loads(cli("devices", "show", sick, *world.server))
    assert shown["health"] == "unhealthy"
    assert {(f["name"], f["required"]) for f in own_findings(shown["health_findings"])} == {
        ("health.d/app-ready", True), ("health.d/metrics-exporter", False)}
    assert "port 8443 in use" in next(f["detail"] for f in shown["health_findings"] if f["required"])
    other = json.loads(cli("devices", "show", world.device_id(devices[1]), *world.server))
    assert (other["health"], [f["name"] for f in own_findings(other["health_findings"])]) == (
        "degraded", ["health.d/metrics-exporter"])  # a wanted check only degrades
    with httpx.Client(base_url=world.plane.url, verify=world.plane.tls()) as client:
        assert client.post("/ui/login", data={"token": world.plane.tokens[Role.VIEWER]}).status_code == 303
        page = client.get(f"/ui/devices/{sick}").text
    assert 'class="health-unhealthy">unhealthy' in page
    assert "<code>health.d/app-ready</code> exit 1 app: port 8443 in use" in page


def test_a_device_that_fails_a_quote_while_its_wave_bakes_halts_the_rollout(world: AbWorld) -> None:
    devices = fleet_of(world, "requote", 3, attestation_interval_seconds=1)
    rollout_id = ""

    async def steps() -> None:
        nonlocal rollout_id
        await enrolled(devices)
        rollout_id = rollout(world, "requote", "2026.12.0", [{"size": "100%", "selector": {"ring": "canary"},
                                                             "bake_seconds": 600}, {"size": "100%"}])
        await until(lambda: status(world, rollout_id)["status"] == "baking", timeout=60, what="the bake")
        assert devices[0].tpm is not None
        devices[0].tpm.extend_pcr(4, "sha256", hashlib.sha256(b"code loaded after the boot").digest())
        await until(lambda: status(world, rollout_id)["status"] == "halted", timeout=60, what="the halt")

    run_fleet(devices, steps, timeout=150)
    view = status(world, rollout_id)
    sick = world.device_id(devices[0])
    assert view["reason"] == f"attestation failed on {sick} (tolerated: 0)"
    assert [(f["device_id"], f["reason"]) for f in view["waves"][0]["failed"]] == [
        (sick, "attestation against the new release failed")]
    assert view["waves"][1]["counts"] == {s: 0 for s in view["waves"][1]["counts"]}
    assert devices[2].boots == 1  # the next wave never got the release


def test_a_selector_that_matches_no_device_is_refused_unless_the_operator_allows_it(world: AbWorld) -> None:
    operator = world.plane.client(role=Role.OPERATOR)
    body = {"release": "2026.12.0", "selector": {"fleet": "no-such-fleet"}, "waves": [{"size": "100%"}]}
    refused = operator.post("/api/v1/admin/rollouts", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "selector_matches_nothing"
    assert "no-such-fleet" not in str(api(world, "GET", "/api/v1/admin/rollouts"))  # nothing was started
    shown = CliRunner().invoke(app, ["rollout", "start", "--release", "2026.12.0", "-l", "fleet=no-such-fleet",
                                     *world.server])
    assert shown.exit_code == 1
    assert "matches no device" in shown.output
    allowed = operator.post("/api/v1/admin/rollouts", json={**body, "allow_empty": True})
    assert allowed.status_code == 201, allowed.text


def test_a_halted_rollout_keeps_counting_so_a_canary_that_commits_after_the_halt_is_succeeded(
        world: AbWorld) -> None:
    devices = fleet_of(world, "halt-live", 4, tampered=0)
    slow = devices[1]  # the other canary: it reboots into the release slowly, and commits after the halt
    devices[1] = SlowRebootDevice(slow.device, slow.make_agent, tpm=slow.tpm, hang_seconds=0.2)
    rollout_id = ""

    async def steps() -> None:
        nonlocal rollout_id
        await enrolled(devices)
        rollout_id = rollout(world, "halt-live", "2026.12.0", [{"size": "2", "selector": {"ring": "canary"}},
                                                               {"size": "100%"}])
        await until(lambda: status(world, rollout_id)["status"] == "halted", timeout=60, what="the halt")
        await until(lambda: status(world, rollout_id)["waves"][0]["counts"]["succeeded"] == 1, timeout=60,
                    what="the slow canary counted as succeeded")

    run_fleet(devices, steps)
    view = status(world, rollout_id)
    assert view["status"] == "halted"
    assert devices[1].device.os_version() == "2026.12.0"
    assert view["waves"][0]["counts"]["updating"] == 0
    assert view["waves"][0]["counts"]["failed"] == 1  # the tampered canary
    assert sum(view["waves"][1]["counts"].values()) == 0  # and the next wave was never told


def test_a_preview_shows_who_each_wave_takes_and_the_rollout_then_takes_exactly_them(world: AbWorld) -> None:
    devices = fleet_of(world, "preview", 5)
    waves = [{"size": "1", "selector": {"ring": "canary"}}, {"size": "50%"}, {"size": "100%"}]
    body = {"release": "2026.12.0", "selector": {"fleet": "preview"}, "waves": waves}
    seen: dict[str, Any] = {}

    async def steps() -> None:
        await enrolled(devices)
        before = api(world, "GET", "/api/v1/admin/rollouts")["rollouts"]
        seen["preview"] = api(world, "POST", "/api/v1/admin/rollouts/preview", json=body)
        dry = CliRunner().invoke(app, ["rollout", "start", "--release", "2026.12.0", "-l", "fleet=preview",
                                       "--wave", "1", "--wave", "100%", "--dry-run", *world.server])
        seen["dry"] = dry.output
        assert api(world, "GET", "/api/v1/admin/rollouts")["rollouts"] == before  # nothing was started
        rollout_id = str(api(world, "POST", "/api/v1/admin/rollouts", json=body)["id"])
        await until(lambda: status(world, rollout_id)["status"] == "completed", timeout=60, what="completed")
        seen["view"] = status(world, rollout_id)

    run_fleet(devices, steps)
    preview, view = seen["preview"], seen["view"]
    assert preview["matched"] == 5
    assert [w["count"] for w in preview["waves"]] == [sum(w["counts"].values()) for w in view["waves"]]
    canaries = sorted(str(d.agent.device_id) for d in devices[:2] if d.agent is not None)
    assert preview["waves"][0]["devices"] == canaries[:1]  # the first canary by id, as the planner picks
    assert sum(w["count"] for w in preview["waves"]) == 5
    assert "planned: 5 devices match" in seen["dry"]
