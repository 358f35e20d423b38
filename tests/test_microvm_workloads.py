"""microVM workloads under real QEMU (``microvm`` machine, software emulation when there is
no KVM): a Debian kernel and an initramfs this test builds from busybox, both signed
targets; the VM boots and reports healthy, and a tampered kernel never boots."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgefleet.protocol.workloads import MicroVmWorkload, WorkloadStatus
from edgefleet.workloads.supervisor import Supervisor
from tests.conftest import need
from tests.wasm_modules import signed_target

ROOT = Path(__file__).resolve().parent.parent
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "EDGEFLEET-HEALTHY $(/bin/busybox tr ' ' '\\n' </proc/cmdline | /bin/busybox grep '^site=')"
exec /bin/busybox sleep 3600
"""


def kernel() -> Path:
    """A kernel that boots on QEMU's microvm: $EDGEFLEET_MICROVM_KERNEL, the one
    scripts/test takes from Debian's linux-image package, or the host's."""
    candidates = [Path(os.environ["EDGEFLEET_MICROVM_KERNEL"])] if "EDGEFLEET_MICROVM_KERNEL" in os.environ else []
    candidates += [ROOT / ".cache" / "microvm" / "vmlinuz", *sorted(Path("/boot").glob("vmlinuz-*"))]
    for path in candidates:
        if path.is_file() and os.access(path, os.R_OK):
            return path
    need("a Linux kernel", "none in $EDGEFLEET_MICROVM_KERNEL, .cache/microvm/vmlinuz or /boot (scripts/test "
         "fetches Debian's as root)")
    raise AssertionError


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("busybox", "busybox-static"),
                          ("cpio", "cpio")):
        if shutil.which(tool) is None:
            need(tool, f"not installed (Debian: {package})")
    root = tmp_path_factory.mktemp("initramfs")
    (root / "bin").mkdir()
    (root / "proc").mkdir()
    shutil.copy(shutil.which("busybox") or "", root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, check=True,
                             capture_output=True).stdout
    return kernel().read_bytes(), gzip.compress(archive, compresslevel=1)


def vm(name: str) -> MicroVmWorkload:
    return MicroVmWorkload(name=name, kind="microvm", kernel=f"workloads/{name}/vmlinuz",
                           initrd=f"workloads/{name}/initrd.gz", cmdline="quiet site=store-0042", memory_mib=128)


def run_with(tmp: Path, spec: MicroVmWorkload, artifacts: list[tuple[bytes, bytes]],
             until_done: bool) -> WorkloadStatus:
    async def scenario() -> WorkloadStatus:
        supervisor = Supervisor(tmp / "data", tmp / "logs")
        try:
            await supervisor.apply([(spec, [(data, signed_target(path, signed))
                                            for (data, signed), path in zip(artifacts, spec.targets, strict=True)])])
            for _ in range(1200):  # 120 s: a cold boot under software emulation takes a few
                [status] = supervisor.status()
                if not until_done or status.healthy or status.state not in ("starting", "running"):
                    return status
                await asyncio.sleep(0.1)
            return status
        finally:
            await supervisor.close()

    return asyncio.run(scenario())


def test_a_microvm_of_signed_artifacts_boots_and_reports_healthy(tmp_path: Path,
                                                                 images: tuple[bytes, bytes]) -> None:
    kernel_bytes, initrd = images
    status = run_with(tmp_path, vm("edge-vm"), [(kernel_bytes, kernel_bytes), (initrd, initrd)], until_done=True)
    assert (status.state, status.healthy) == ("running", True), status
    assert "EDGEFLEET-HEALTHY site=store-0042" in status.output
    cached = sorted((tmp_path / "data" / ".artifacts").iterdir())
    assert len(cached) == 2
    assert all(not os.access(p, os.W_OK) or os.geteuid() == 0 for p in cached)
    assert all(oct(p.stat().st_mode)[-3:] == "444" for p in cached)  # the VM boots read-only copies


def test_a_tampered_kernel_is_refused_and_never_boots(tmp_path: Path, images: tuple[bytes, bytes]) -> None:
    kernel_bytes, initrd = images
    tampered = bytearray(kernel_bytes)
    tampered[len(tampered) // 2] ^= 0xFF
    status = run_with(tmp_path, vm("edge-vm"), [(bytes(tampered), kernel_bytes), (initrd, initrd)],
                      until_done=False)
    assert status.state == "refused"
    assert status.detail is not None
    assert "workloads/edge-vm/vmlinuz does not match its signed target" in status.detail
    assert not (tmp_path / "logs" / "edge-vm.stdout").exists()  # QEMU never started
    assert not (tmp_path / "data" / ".artifacts").exists()  # nothing unverified was written


MICROVM_YAML = """- name: edge-vm
  kernel: artifacts/2026.12.0/vmlinuz
  initrd: artifacts/2026.12.0/initrd.gz
  cmdline: quiet site=store-0042
  memory_mib: 128
"""


def test_a_microvm_declared_in_the_fleet_repository_boots_on_the_device(tmp_path: Path,
                                                                         images: tuple[bytes, bytes]) -> None:
    """apps/<group>/microvm.yaml -> director-signed configuration -> kernel and initramfs
    fetched as release artifacts and verified -> QEMU -> healthy, reported, in sync."""
    from edgefleet.credentials import Role
    from tests.ab_world import AbWorld, run, until
    from tests.conftest import start_fleet
    from tests.gitops_world import FleetRepo
    from tests.test_gitops import BASE

    repo = FleetRepo(tmp_path / "git")
    repo.with_apps(BASE, {"apps/stores/microvm.yaml": MICROVM_YAML})
    plane = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, gitops=repo.syncs())
    try:
        world = AbWorld(plane, tmp_path / "releases")
        artifacts = tmp_path / "vm"
        artifacts.mkdir()
        (artifacts / "vmlinuz").write_bytes(images[0])
        (artifacts / "initrd.gz").write_bytes(images[1])
        world.publish("2026.12.0", 12, artifacts=[artifacts / "vmlinuz", artifacts / "initrd.gz"])
        device = world.device("vm", status_interval_seconds=0.5, update_check_seconds=0.5)
        viewer = plane.client(role=Role.VIEWER)

        def reported() -> dict[str, object]:
            assert device.agent is not None
            view = viewer.get(f"/api/v1/admin/devices/{device.agent.device_id}").json()
            return next((w for w in view.get("workloads") or [] if w["name"] == "edge-vm"), {})

        async def steps() -> None:
            await until(lambda: device.agent is not None and device.agent.reports >= 1, what="enrollment")
            assert plane.client(role=Role.OPERATOR).post("/api/v1/admin/gitops/sync").status_code == 200
            await until(lambda: reported().get("healthy") is True, timeout=120, what="the VM healthy, reported")
            assert viewer.get("/api/v1/admin/drift").json()["devices"] == []  # in sync: nothing listed

        run(world, device, steps, timeout=150)
        status = reported()
        assert status["kind"] == "microvm"
        assert status["targets"] == ["artifacts/2026.12.0/vmlinuz", "artifacts/2026.12.0/initrd.gz"]
        assert "EDGEFLEET-HEALTHY site=store-0042" in status["output"]  # type: ignore[operator]
    finally:
        plane.close()
