"""A/B updates on the real boot chain: one VM (QEMU q35 + OVMF + swtpm, TCG) boots release
A from its disk, and the agent inside it takes signed releases from the control plane:
it writes the other slot, stages that release's UKI on the ESP and arms a systemd-boot
trial (``+3``); the VM reboots for real; systemd-boot uses a try up before it starts
the entry. A release whose checks pass is committed (the counter dropped) and attests on
its own predicted reference values; one whose required check fails, and one whose kernel
panics before userspace (three times, one per try), come back on the committed slot
through the boot loader's counter. The failing release comes as a rollout whose first wave is the VM: it halts
there, and the devices of the next wave are never told. The tests share one running VM
and run in file order."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.credentials import Role
from edgefleet.image.build import BuiltImage
from edgefleet.vm import Machine
from tests.conftest import Device as Enrolled
from tests.conftest import Fleet
from tests.real_boot import SITE, Releases, VmDevice, enrolled_device, provisioned_vm, published_fleet_image

pytestmark = pytest.mark.real_boot

CMDLINE = "console=ttyS0,115200 panic=10"
SPEC = """
name = "edgefleet-test"
version = "{version}"
release_counter = {counter}
hardware_id = "qemu-q35"
kernel_cmdline = "{cmdline}"

[[health]]
name = "{check}"
kind = "command"
command = {command}
timeout_seconds = 60
"""
PASSES = '["test", "-s", "/etc/edgefleet/agent.toml"]'
FLEET = {"fleet": "updates"}  # the labels the rollout below selects


@dataclass
class Device(VmDevice):
    images: dict[str, BuiltImage]
    others: list[Enrolled]  # the next wave's devices


def build(real_plane: Fleet, real_releases: Releases, directory: Path, version: str, counter: int, *,
          check: str = "agent-settings", command: str = PASSES, cmdline: str = CMDLINE) -> BuiltImage:
    spec = SPEC.format(version=version, counter=counter, cmdline=cmdline, check=check, command=command)
    directory.mkdir(parents=True)
    return published_fleet_image(real_plane, spec, directory, real_releases, trusted=True)


@pytest.fixture(scope="module")
def device(module_plane: tuple[Fleet, Releases], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    real_plane, real_releases = module_plane
    root = tmp_path_factory.mktemp("updates")
    images = {
        "A": build(real_plane, real_releases, root / "a", "2026.12.10", 10),
        "B": build(real_plane, real_releases, root / "b", "2026.12.11", 11),
        "failing": build(real_plane, real_releases, root / "failing", "2026.12.12", 12,
                         check="always-fails", command='["false"]'),
        # No /init the kernel can run: it tries to mount a root it has not got, and panics.
        "panicking": build(real_plane, real_releases, root / "panicking", "2026.12.13", 13,
                           cmdline=f"{CMDLINE} rdinit=/edgefleet-missing"),
    }
    listed = real_plane.client(role=Role.VIEWER).get("/api/v1/admin/devices").json()["devices"]
    known = {str(d["id"]) for d in listed}
    others = [real_plane.enroll(SITE, labels=FLEET, hardware_type="qemu-q35") for _ in range(2)]
    known |= {other.id for other in others}
    with Machine(provisioned_vm(real_plane, images["A"], root / "vm", {**FLEET, "role": "canary"})) as machine:
        device_id = enrolled_device(real_plane, machine, exclude=known)
        yield Device(machine, device_id, real_plane, images, others)


def test_the_device_boots_release_a_and_attests_on_its_predicted_values(device: Device) -> None:
    verdict = device.wait("attestation on A", lambda: device.record().get("attestation"))
    assert verdict["passed"] is True, verdict
    assert verdict["release"] == "2026.12.10"
    assert "slot a verified and mounted" in device.machine.console_text()


def test_an_update_reboots_into_slot_b_commits_and_attests_on_bs_values(device: Device) -> None:
    device.assign("2026.12.11")
    device.wait("commit of B", lambda: device.record()["update_state"] == "committed"
                and device.record()["running_version"] == "2026.12.11")
    phases = [e["phase"] for e in reversed(device.history())]
    assert phases[-4:] == ["trial_boot", "health_checking", "attesting", "committed"], phases
    console = device.machine.console_text()
    assert "slot b verified and mounted" in console  # the real reboot, through the staged UKI
    verdict = device.wait("attestation on B", lambda: (a := device.record().get("attestation"))
                          and a["release"] == "2026.12.11" and a)
    assert verdict["passed"] is True, verdict


def test_a_rollout_halts_when_the_vm_canary_fails_its_trial_and_the_next_wave_is_never_told(
        device: Device) -> None:
    operator = device.plane.client(role=Role.OPERATOR)
    started = operator.post("/api/v1/admin/rollouts", json={
        "release": "2026.12.12", "selector": FLEET,
        "waves": [{"size": 1, "selector": {"role": "canary"}}, {"size": "100%"}]})
    assert started.status_code == 201, started.text
    rollout = started.json()["id"]
    device.wait("roll back of the failing release", lambda: device.record()["update_state"] == "rolled_back")
    reasons = [str(e.get("reason")) for e in device.history() if e["release"] == "2026.12.12"]
    assert any("always-fails" in r for r in reasons), reasons  # the required check, by name
    assert device.record()["running_version"] == "2026.12.11"
    boots = re.findall(r"\] edgefleet-initrd: slot (.) verified and mounted", device.machine.console_text())
    assert boots == ["a", "b", "a", "b"]  # A; B; the failed trial on A; back on B
    assert device.machine.reboots >= 3  # each a guest reset, powered on again (vm/qemu.py)
    view = device.wait("the halt", lambda: (r := operator.get(f"/api/v1/admin/rollouts/{rollout}").json())
                       and r["status"] not in ("running", "pending") and r)
    assert (view["status"], view["wave"]) == ("halted", 1), view
    assert device.id in str(view["waves"][0]["failed"]), view
    # The director is the one channel that tells a device what to install: it signed
    # nothing naming the release for the next wave's devices.
    others = {other.id for other in device.others}
    told = [row for row in device.plane.rows()["director_state"] if row["device_id"] in others]
    assert not any(row["release"] == "2026.12.12" or b"2026.12.12" in row["targets"] for row in told), told


def test_a_release_whose_kernel_panics_is_rolled_back_by_the_boot_loader(device: Device) -> None:
    device.assign("2026.12.13")
    device.wait("roll back of the panicking release", lambda: device.record()["update_state"] == "rolled_back"
                and any(e["release"] == "2026.12.13" and e["phase"] == "rolled_back" for e in device.history()))
    assert "Kernel panic" in device.machine.console_text()
    reasons = [str(e.get("reason")) for e in device.history() if e["release"] == "2026.12.13"]
    assert any("never started the agent" in r for r in reasons), reasons
    assert device.record()["running_version"] == "2026.12.11"
