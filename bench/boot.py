"""A real boot under emulation: build (or reuse) the golden image, boot it in QEMU q35 +
OVMF + swtpm (TCG), and time the stages of the boot from QEMU's start:

    firmware    the baseline: OVMF alone, up to the kernel's EFI stub ("EFI stub:")
    initramfs   the initramfs opened the root slot through dm-verity and mounted it
    systemd     systemd reached the login prompt on the console
    evidence    the guest read its TPM's PCRs and the kernel's event log (golden boot)
    quote       (second boot, the same image with a control plane baked in) the agent
                enrolled through the guest's TPM and its first quote passed, checked
                event by event against the predicted reference values
    update      (third VM, release A with the fleet's TUF roots) from "release B
                assigned" to "B committed": download, slot write, staged UKI, armed
                trial, the real reboot into slot B, health checks, quote, commit; with
                the device's own timestamps of each phase

    python bench/boot.py [--runs 1] [--no-attest] [--no-update]

Needs root and Debian's mmdebstrap, qemu-system-x86, ovmf, swtpm-tools and the image
builder's tools; says which one is missing instead of failing.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/real_boot.py: the control plane's side

from tests import real_boot

from edgefleet.agent.evidence import find
from edgefleet.attestation import eventlog, reference
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.image.build import REFERENCE_VALUES, UKI, build_image
from edgefleet.image.spec import load_spec
from edgefleet.vm import Machine, MachineConfig

ROOT = Path(__file__).resolve().parent.parent
MARKS = {"firmware_s": "EFI stub:", "initramfs_s": "verified and mounted", "systemd_s": "login:"}


def boot_once(disk: Path, work: Path, deadline: float, cpus: int) -> dict[str, float | bool]:
    machine = Machine(MachineConfig(disk=disk, directory=work, fw_cfg={"opt/io.edgefleet/print-evidence": b"1"},
                                    cpus=cpus))
    figures: dict[str, float | bool] = {}
    with machine:
        start = machine.started_at
        while time.monotonic() - start < deadline:
            console = machine.console_text() + machine.evidence_port.read_text(errors="replace")
            for key, mark in MARKS.items():
                if key not in figures and mark in console:
                    figures[key] = round(time.monotonic() - start, 1)
            found = find(machine.evidence_port.read_text(errors="replace"))
            if found is not None:
                figures["evidence_s"] = round(time.monotonic() - start, 1)
                log = eventlog.parse(base64.b64decode(str(found["event_log"])))
                figures["log"] = log  # type: ignore[assignment]
                break
            if not machine.running:
                break
            time.sleep(0.2)
    return figures


def attest_once(spec_text: str, golden_log: eventlog.EventLog, deadline: float, cpus: int) -> dict[str, float | bool]:
    """Boot the image with a control plane baked in; seconds to enrollment and to the first passed quote."""
    figures: dict[str, float | bool] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-attest-") as tmp:
        plane = real_boot.attesting_plane(golden_log, Path(tmp))
        try:
            image = real_boot.published_fleet_image(plane, spec_text, Path(tmp))
            viewer = plane.client(role=Role.VIEWER)
            config = dataclasses.replace(real_boot.provisioned_vm(plane, image, Path(tmp) / "vm"), cpus=cpus)
            with Machine(config) as machine:
                device_id = real_boot.enrolled_device(plane, machine)
                figures["enrolled_s"] = round(time.monotonic() - machine.started_at, 1)
                verdict = real_boot.wait_until(
                    lambda: viewer.get(f"/api/v1/admin/devices/{device_id}").json().get("attestation"),
                    "attestation", machine, deadline, every=0.25)
                figures["quote_s"] = round(time.monotonic() - machine.started_at, 1)
                figures["quote_passed"] = bool(verdict["passed"])  # type: ignore[index]
        finally:
            plane.close()
    return figures


UPDATE_SPEC = """
name = "edgefleet-bench"
version = "{version}"
release_counter = {counter}
hardware_id = "qemu-q35"
"""


def update_once(golden_log: eventlog.EventLog, deadline: float) -> dict[str, float | bool]:
    """Release A boots; B is assigned (forced reboot); seconds until B is committed. One
    vCPU, as in the VM tests (``golden_log`` must come from a one-vCPU boot: PCR 0 follows
    the CPU count)."""
    figures: dict[str, float | bool] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-update-") as tmp:
        root = Path(tmp)
        plane = real_boot.attesting_plane(golden_log, root)
        try:
            releases = real_boot.Releases(plane, root / "releases")
            images = {}
            for name, version, counter in (("a", "2026.12.20", 20), ("b", "2026.12.21", 21)):
                (root / name).mkdir()
                images[name] = real_boot.published_fleet_image(
                    plane, UPDATE_SPEC.format(version=version, counter=counter), root / name, releases, trusted=True)
            viewer = plane.client(role=Role.VIEWER)
            with Machine(real_boot.provisioned_vm(plane, images["a"], root / "vm")) as machine:
                device_id = real_boot.enrolled_device(plane, machine)

                def record() -> dict[str, object]:
                    value: dict[str, object] = viewer.get(f"/api/v1/admin/devices/{device_id}").json()
                    return value

                real_boot.wait_until(lambda: record().get("attestation"), "attestation on A", machine, deadline)
                assigned = time.monotonic()
                with AdminClient(plane.url, plane.tokens[Role.ADMIN], plane.settings.pki.ca_cert) as admin:
                    admin.assign(device_id, "2026.12.21", force_reboot=True)
                real_boot.wait_until(lambda: record()["update_state"] == "committed"
                                     and record()["running_version"] == "2026.12.21", "commit of B", machine,
                                     deadline, every=0.5)
                figures["update_assigned_to_committed_s"] = round(time.monotonic() - assigned, 1)
                events = viewer.get(f"/api/v1/admin/devices/{device_id}/updates").json()["events"]
                at = {e["phase"]: e["at"] for e in events if e["release"] == "2026.12.21"}
                for phase, start, end in (("download", "downloading", "downloaded"),
                                          ("install", "installing", "installed"),
                                          ("reboot", "rebooting", "trial_boot"),
                                          ("trial", "trial_boot", "committed")):
                    if start in at and end in at:
                        span = datetime.fromisoformat(at[end]) - datetime.fromisoformat(at[start])
                        figures[f"update_{phase}_s"] = round(span.total_seconds(), 1)
                slot = images["b"].path("root.erofs").stat().st_size
                figures["update_image_mib"] = round(slot / 2**20, 1)
        finally:
            plane.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=ROOT / "examples/image/edge.toml")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-attest", action="store_true", help="skip the boot that attests to a control plane")
    parser.add_argument("--no-update", action="store_true", help="skip the A -> B update on the real boot chain")
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--cpus", type=int, default=2,
                        help="vCPUs of the golden and attesting boots (the update always runs on one, as the "
                             "VM tests do: with two, OVMF sometimes hangs at a guest reboot)")
    args = parser.parse_args()
    missing = real_boot.missing_for_real_boots()
    if missing is not None:
        print(f"bench/boot.py needs {missing}")
        return 0
    spec, spec_dir = load_spec(args.spec)
    built = build_image(spec, spec_dir)
    print(f"image {spec.version}: {'cache hit' if built.cached else 'built'} in {built.seconds:.1f} s")
    hit = build_image(spec, spec_dir)
    print(f"  again: {'cache hit' if hit.cached else 'rebuilt'} in {hit.seconds:.1f} s")
    slot = built.path("root.erofs").stat().st_size
    disk_used = built.disk.stat().st_blocks * 512
    print(f"  root slot {slot / 2**20:.0f} MiB (erofs + dm-verity), disk {disk_used / 2**20:.0f} MiB used "
          f"of {built.disk.stat().st_size / 2**20:.0f} MiB, UKI "
          f"{built.path(UKI).stat().st_size / 2**20:.1f} MiB")
    expected = reference.loads(built.path(REFERENCE_VALUES).read_bytes())
    runs = []
    golden_log = None
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="edgefleet-boot-") as tmp:
            figures = boot_once(built.disk, Path(tmp), args.deadline, args.cpus)
        log = figures.pop("log", None)
        golden_log = log if log is not None else golden_log
        figures["predicted_equal_booted"] = bool(log is not None and not reference.compare(log, expected))  # type: ignore[arg-type]
        runs.append(figures)
        print(f"run {run + 1}: " + ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in figures.items()
                                              if k.endswith("_s")) +
              f"; predicted reference values {'equal' if figures['predicted_equal_booted'] else 'DIFFER from'} "
              "the guest's event log")
    best = min(runs, key=lambda r: float(r.get("evidence_s", 1e9)))
    if not args.no_attest and golden_log is not None:
        best.update(attest_once(args.spec.read_text(), golden_log, args.deadline, args.cpus))
        print(f"attesting boot: first passed quote {best.get('quote_s')} s after QEMU started "
              f"(enrolled {best.get('enrolled_s')} s)")
    if not args.no_update and golden_log is not None and args.cpus != 1:
        with tempfile.TemporaryDirectory(prefix="edgefleet-boot-") as tmp:
            one = boot_once(built.disk, Path(tmp), args.deadline, 1)
        golden_log = one.pop("log", None)  # type: ignore[assignment]
        best["evidence_1cpu_s"] = one.get("evidence_s", 0.0)
    if not args.no_update and golden_log is not None:
        best.update(update_once(golden_log, args.deadline))
        print(f"update A -> B: committed on B {best.get('update_assigned_to_committed_s')} s after it was assigned "
              f"(download {best.get('update_download_s')} s of a {best.get('update_image_mib')} MiB image, "
              f"install {best.get('update_install_s')} s, reboot {best.get('update_reboot_s')} s, "
              f"trial {best.get('update_trial_s')} s)")
    summary = {
        "build_s": round(built.seconds, 1), "build_cached": built.cached, "cache_hit_s": round(hit.seconds, 2),
        "slot_mib": round(slot / 2**20, 1), "disk_used_mib": round(disk_used / 2**20, 1),
        "cpus": args.cpus, **{k: v for k, v in best.items()},
        "qemu": re.sub(r"\s+", " ", os.popen("qemu-system-x86_64 --version").read().splitlines()[0]),  # noqa: S605
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
