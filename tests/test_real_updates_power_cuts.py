"""Real power cuts during an A/B update on the real boot chain (see tests/power_cuts.py):
one VM (QEMU q35 + OVMF + swtpm, TCG) boots release A and is assigned release B; ten
times, at moments drawn from a seed, QEMU is killed with SIGKILL and powered on again with
the same disk, firmware variables and TPM state. After every cut a slot verifies and
mounts and the device attests again; after the last one the device converges on B.

The seed changes from run to run (so CI covers new moments over time) and is printed;
``EDGEFLEET_POWER_CUT_SEED=N`` replays a run. The long loop is bench/powercut_vm.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.credentials import Role
from tests.conftest import Fleet
from tests.power_cuts import PowerCuts, figures, plan_rounds
from tests.real_boot import (
    BOOT_DEADLINE,
    SITE,
    Releases,
    VmDevice,
    enrolled_device,
    provisioned_vm,
    published_fleet_image,
)

pytestmark = pytest.mark.real_boot
ROUNDS = 10
SPEC = """
name = "edgefleet-test"
version = "{version}"
release_counter = {counter}
hardware_id = "qemu-q35"
"""
A, B = ("2026.12.20", 20), ("2026.12.21", 21)


@pytest.fixture(scope="module")
def device(module_plane: tuple[Fleet, Releases], tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmDevice]:
    from edgefleet.vm import Machine

    real_plane, real_releases = module_plane
    root = tmp_path_factory.mktemp("power-cuts")
    images = {}
    for version, counter in (A, B):
        (root / version).mkdir()
        images[version] = published_fleet_image(real_plane, SPEC.format(version=version, counter=counter),
                                                root / version, real_releases, trusted=True)
    listed = real_plane.client(role=Role.VIEWER).get("/api/v1/admin/devices").json()["devices"]
    known = {str(d["id"]) for d in listed}
    with Machine(provisioned_vm(real_plane, images[A[0]], root / "vm", {"fleet": "power-cuts"})) as machine:
        yield VmDevice(machine, enrolled_device(real_plane, machine, exclude=known), real_plane)


def seed() -> int:
    configured = os.environ.get("EDGEFLEET_POWER_CUT_SEED")
    return int(configured) if configured else int(time.time()) % 1_000_000


def test_ten_power_cuts_during_an_update_leave_a_bootable_attested_device_that_converges(
        device: VmDevice, tmp_path: Path) -> None:
    device.wait("attestation on A", lambda: (a := device.record().get("attestation")) and a["passed"]
                and a["release"] == A[0])
    first = seed()
    plans = plan_rounds(first, ROUNDS)
    print(f"power cuts: seed {first} (EDGEFLEET_POWER_CUT_SEED={first} replays this run)", flush=True)
    update = PowerCuts(device, BOOT_DEADLINE).update(B[0], plans)
    result = figures([update], 1.0)
    replay = f"seed {first}; rounds: " + "; ".join(r.line() for r in update.rounds)
    assert result["bricked"] == 0, replay
    assert result["both_slots_bad"] == 0, replay
    assert all(r.passed for r in update.rounds), replay
    assert update.converged, f"{update.error}; {replay}"
    assert len(update.rounds) == ROUNDS, replay
    assert device.record()["site"] == SITE
