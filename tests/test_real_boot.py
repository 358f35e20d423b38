"""A real golden image booting real UEFI firmware: `edgefleet image build` makes the disk
(systemd-boot, a UKI, erofs + dm-verity slots), QEMU q35 + OVMF + swtpm (TCG) boots it,
and what the guest's TPM and the kernel's event log report equals what the build
predicted from the artifacts alone. One boot serves every assertion about it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pefile
import pytest

from edgefleet.attestation import eventlog, reference
from edgefleet.credentials import Role
from edgefleet.image import predict, rootfs
from edgefleet.image import uki as uki_builder
from edgefleet.image.build import FIRST_ENTRY, REFERENCE_VALUES, STUB_COPY, UKI, BuiltImage, build_image
from edgefleet.image.sbom import SBOM
from edgefleet.image.spec import load_spec
from edgefleet.image.uki import UkiParts
from edgefleet.protocol.sessions import Exit, SessionRequest
from edgefleet.remote_client import Operator, SessionRefused
from edgefleet.vm import Machine, MachineConfig
from tests.conftest import Fleet
from tests.real_boot import (
    BOOT_DEADLINE,
    GOLDEN_SPEC,
    Releases,
    booted_log,
    enrolled_device,
    provisioned_vm,
    published_fleet_image,
    wait_until,
)

pytestmark = pytest.mark.real_boot

SPEC = GOLDEN_SPEC


def predicted(image: BuiltImage) -> reference.ReferenceValues:
    return reference.loads(image.path(REFERENCE_VALUES).read_bytes())


def test_the_disk_has_the_boot_chain_two_slots_and_data_and_a_rebuild_is_a_cache_hit(
        real_image: BuiltImage, real_spec_file: Path) -> None:
    table = subprocess.run(["sgdisk", "-p", str(real_image.disk)], capture_output=True, text=True, check=True).stdout
    for label in ("esp", "root-a", "root-b", "data"):
        assert f" {label}" in table
    manifest = real_image.manifest
    assert manifest["version"] == "2026.12.0"
    assert len(str(manifest["verity"]["root_hash"])) == 64  # type: ignore[index]
    spec, spec_dir = load_spec(real_spec_file)
    again = build_image(spec, spec_dir)
    assert again.cached
    assert again.directory == real_image.directory


def test_the_guest_tpm_and_event_log_equal_the_predicted_reference_values(
        real_image: BuiltImage, real_golden: tuple[dict[str, object], str]) -> None:
    evidence, console = real_golden
    log = booted_log(evidence)
    tpm = {int(p): bytes.fromhex(v) for p, v in evidence["pcrs"].items()}  # type: ignore[attr-defined]
    # The kernel's event log replays to what the TPM holds (PCR 10 is IMA's own log).
    replayed = eventlog.replay(log, "sha256", range(16))
    assert {p for p in range(16) if replayed[p] != tpm[p]} <= {10}
    expected = predicted(real_image)
    assert set(expected.pcrs) == set(predict.PREDICTED_PCRS)
    assert reference.compare(log, expected) == []  # event by event
    assert {p: v for p, v in expected.values().items()} == {p: tpm[p] for p in expected.pcrs}
    assert "slot a verified and mounted" in console  # dm-verity opened the slot with the measured root hash


def test_the_images_sbom_lists_what_dpkg_query_finds_in_its_root_and_the_schema_accepts_it(
        real_image: BuiltImage, tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    text = real_image.path(SBOM).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    listed = [PackageURL.from_string(c["purl"]) for c in json.loads(text)["components"]]
    root = tmp_path / "root"  # the slot's own files, as the device mounts them
    subprocess.run(["fsck.erofs", f"--extract={root}", str(real_image.path("root.erofs"))], check=True,
                   capture_output=True)
    dpkg = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f",
                           "${Package} ${Version} ${Architecture}\n"], capture_output=True, text=True, check=True)
    installed = {tuple(line.split()) for line in dpkg.stdout.splitlines()}
    assert {(p.name, p.version, (p.qualifiers or {}).get("arch")) for p in listed if p.type == "deb"} == installed
    assert len(installed) > 100
    python = {p.name for p in listed if p.type == "pypi"}
    assert {"httpx", "cryptography", "pydantic"} <= python  # the agent's own dependencies, as installed


def test_two_builds_of_the_same_inputs_give_the_same_reference_values(
        real_image: BuiltImage, real_spec_file: Path, tmp_path: Path) -> None:
    # In another process, from another checkout and another virtualenv path: anything that
    # follows the process (hash randomisation, the clock), the builder's paths or the
    # source files' times and leaks into an artifact shows here (the cached build may come
    # from another clone: CI once found the host interpreter in the slot's console scripts).
    again = tmp_path / "again"
    checkout = tmp_path / "checkout"
    shutil.copytree(rootfs.source_tree(), checkout / "edgefleet", ignore=shutil.ignore_patterns("__pycache__"))
    for path in checkout.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    moved = tmp_path / "elsewhere-venv"
    moved.symlink_to(Path(sys.prefix), target_is_directory=True)
    python = moved / Path(sys.executable).relative_to(sys.prefix)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    environment["PYTHONPATH"] = str(checkout)
    subprocess.run([str(python), "-c", REBUILD, str(real_spec_file), str(again)], check=True, env=environment)
    assert (again / "built-by").read_text() == str(checkout / "edgefleet")
    rebuilt = BuiltImage(again, False, 0.0)
    assert rebuilt.path(REFERENCE_VALUES).read_text() == real_image.path(REFERENCE_VALUES).read_text()
    assert rebuilt.manifest["files"] == real_image.manifest["files"]  # slot, UKI, boot loader, kernel, initramfs


REBUILD = """
import sys
from pathlib import Path
from edgefleet.image.build import build_image
from edgefleet.image import rootfs
from edgefleet.image.spec import load_spec
spec, spec_dir = load_spec(Path(sys.argv[1]))
build_image(spec, spec_dir, into=Path(sys.argv[2]))
(Path(sys.argv[2]) / "built-by").write_text(str(rootfs.source_tree()))
"""


def _flip(source: Path, target: Path, offset: int) -> Path:
    data = bytearray(source.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("part", ["bootloader", "uki", "kernel"])
def test_a_one_byte_change_in_the_boot_chain_fails_naming_the_event(
        real_image: BuiltImage, real_golden: tuple[dict[str, object], str], part: str, tmp_path: Path) -> None:
    # The reference values of a release whose binary differs by one byte, against the log
    # of the golden boot: the comparison names the event (a device that booted the changed
    # binary against the real release's values is the same comparison the other way round).
    bootloader = real_image.path("BOOTX64.EFI")
    uki = real_image.path(UKI)
    parts = UkiParts(real_image.path("vmlinuz"), real_image.path("initrd.cpio"),
                     real_image.path("cmdline.txt").read_text(), real_image.path("os-release").read_bytes())
    if part == "bootloader":
        bootloader = _flip(bootloader, tmp_path / "BOOTX64.EFI", 0x1000)
    elif part == "uki":
        uki = _flip(uki, tmp_path / uki.name, 0x1000)
    else:
        parts = dataclasses.replace(parts, linux=_flip(parts.linux, tmp_path / "vmlinuz", 0x10000))
        uki = uki_builder.build(real_image.path(STUB_COPY), parts, tmp_path / "changed-kernel.efi", tmp_path)
    found = reference.compare(booted_log(real_golden[0]), predict.predict(bootloader=bootloader, uki=uki, parts=parts,
                                                                      disk=real_image.disk))
    assert found
    assert found[0].pcr == 4
    named = {"bootloader": "systemd-boot", "uki": "UKI", "kernel": "UKI"}[part]
    assert named in found[0].message, found
    if part == "kernel":  # the stub measured the kernel section too
        assert any(m.pcr == 11 and ".linux (contents)" in m.message for m in found)


def test_a_root_slot_altered_after_build_is_refused_by_dm_verity(real_image: BuiltImage, tmp_path: Path) -> None:
    config = MachineConfig(disk=real_image.disk, directory=tmp_path / "vm-tampered")
    machine = Machine(config)
    machine.prepare()
    slot_offset, _ = partition_span(real_image.disk, "root-a")
    # The erofs superblock (block 0 of the slot) changes in the VM's overlay only.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {slot_offset + 1024} 512",
                    str(config.directory / "disk.qcow2")], check=True, capture_output=True)
    with machine:
        console = machine.wait_for_console("is corrupted", BOOT_DEADLINE)
    assert "verity" in console
    assert "slot a verified and mounted" not in console  # the slot never mounted, systemd never ran


# -- the agent inside the VM: enroll through the guest's TPM, attest, configuration, token --

@pytest.fixture(scope="module")
def fleet_image(real_plane: Fleet, real_releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    # With the release workspace's TUF roots: a device without them fails closed (no
    # configuration, no workload token).
    return published_fleet_image(real_plane, SPEC, tmp_path_factory.mktemp("fleet-spec"), real_releases,
                                 trusted=True)


async def _remote(operator: Operator, device_id: str, request: SessionRequest) -> tuple[int, bytes]:
    """A session's output and exit code; offered again while the agent in the VM (TCG, slow)
    is busy elsewhere when the first offer comes."""
    for attempt in range(3):
        try:
            channel = await operator.session(device_id, request)
            break
        except SessionRefused as exc:
            if "did not answer" not in exc.message or attempt == 2:
                raise
    output = b""
    async with channel:
        while (frame := await channel.receive()) is not None:
            if isinstance(frame, bytes):
                output += frame
            elif isinstance(frame, Exit):
                return frame.code, output
    raise AssertionError(f"the session ended without an exit code ({channel.closed_reason}): {output!r}")


def test_the_agent_in_the_vm_enrolls_attests_with_the_kernels_event_log_gets_config_a_token_and_a_remote_shell(
        real_plane: Fleet, fleet_image: BuiltImage, tmp_path: Path) -> None:
    viewer, operator = real_plane.client(role=Role.VIEWER), real_plane.client(role=Role.OPERATOR)
    with Machine(provisioned_vm(real_plane, fleet_image, tmp_path / "vm")) as machine:
        device_id = enrolled_device(real_plane, machine)

        def record() -> dict[str, object]:
            value: dict[str, object] = viewer.get(f"/api/v1/admin/devices/{device_id}").json()
            return value

        attested = wait_until(lambda: record().get("attestation"), "attestation verdict", machine)
        attestation: dict[str, object] = attested  # type: ignore[assignment]
        assert attestation["passed"] is True, attestation  # its TPM's quote and its kernel's log, event by event
        assert attestation["release"] == "2026.12.0"
        # A native service that wants a workload token for one audience, in configuration
        # the director signs (with the release the device runs).
        service = {"name": "meter", "kind": "NativeService", "command": ["/bin/sleep", "3600"],
                   "tokens": [{"path": "billing.jwt", "audience": "https://billing.example"}]}
        operator.put(f"/api/v1/admin/devices/{device_id}/desired",
                     json={"document": {"config": {"group": "vm-test", "workloads": {"native": [service]}}}})
        operator.put(f"/api/v1/admin/devices/{device_id}/assignment", json={"release": "2026.12.0"})
        wait_until(lambda: record()["desired_version_applied"] == 2, "configuration applied", machine)

        def tokens_issued() -> list[str]:
            return [line for line in viewer.get("/metrics").text.splitlines()
                    if line.startswith("edgefleet_http_requests_total") and "workload-token" in line
                    and 'status="200"' in line]

        wait_until(tokens_issued, "workload token", machine)

        # A remote shell on the real image, through its attested agent: a real terminal, the
        # release it booted; and the unit's journal, since systemd runs there.
        remote = Operator(real_plane.url, real_plane.tokens[Role.OPERATOR], real_plane.settings.pki.ca_cert)
        command = ["grep IMAGE_VERSION /etc/os-release; tty; exit 3"]
        code, output = asyncio.run(_remote(remote, device_id, SessionRequest(verb="shell", command=command)))
        assert code == 3, output
        assert b"IMAGE_VERSION" in output
        assert b"2026.12.0" in output
        assert b"/dev/pts/" in output
        code, journal = asyncio.run(_remote(remote, device_id, SessionRequest(
            verb="logs", unit="edgefleet-agent.service", lines=50)))
        assert code == 0
        assert b"edgefleet" in journal
        assert b"-- No entries --" not in journal, journal

        # The hardware model's firmware changes under the device (as if its firmware had
        # been replaced): the next periodic quote fails, naming the event, and the device
        # is quarantined: 403 on configuration from then on.
        wrong = tmp_path / "other-firmware.json"
        files = real_plane.settings.attestation_reference_files
        right = files["qemu-q35"]
        golden = reference.loads(Path(right).read_bytes())
        first = golden.events[0]
        changed = dataclasses.replace(first, digest=bytes(32))
        wrong.write_text(json.dumps(reference.ReferenceValues((changed, *golden.events[1:])).to_document()))
        files["qemu-q35"] = wrong
        try:
            failed = wait_until(lambda: (record().get("attestation") or {}).get("quarantined")  # type: ignore[attr-defined]
                                and record()["attestation"], "quarantine", machine)
            assert any(f"PCR {first.pcr} event 0" in check for check in failed["failed_checks"]), failed  # type: ignore[index]

            def refused() -> list[str]:
                return [line for line in viewer.get("/metrics").text.splitlines()
                        if line.startswith("edgefleet_refusals_total") and 'code="quarantined"' in line]

            wait_until(refused, "a 403 for the quarantined device", machine)
        finally:
            files["qemu-q35"] = right


@pytest.mark.parametrize("part", ["bootloader", "uki"])
def test_a_device_that_boots_a_boot_chain_changed_by_one_byte_fails_attestation_naming_the_event(
        real_plane: Fleet, fleet_image: BuiltImage, part: str, tmp_path: Path) -> None:
    # One byte of the release's systemd-boot (in its PE header's padding) or UKI (in its
    # .osrel section) changes, in the ESP of this VM's overlay only; both still boot. The
    # device enrolls and quotes with its real TPM, and the verifier names the event.
    path = "EFI/BOOT/BOOTX64.EFI" if part == "bootloader" else f"EFI/Linux/{FIRST_ENTRY}"
    esp_offset, esp_size = partition_span(fleet_image.disk, "esp")
    esp = tmp_path / "esp.img"
    with open(fleet_image.disk, "rb") as source:
        source.seek(esp_offset)
        esp.write_bytes(source.read(esp_size))
    changed = tmp_path / Path(path).name
    subprocess.run(["mcopy", "-i", str(esp), f"::/{path}", str(changed)], check=True, capture_output=True)
    data = bytearray(changed.read_bytes())
    if part == "bootloader":
        pe = pefile.PE(data=bytes(data), fast_load=True)
        at = pe.sections[-1].get_file_offset() + 40 + 8  # past the section table, inside SizeOfHeaders
        assert at < pe.OPTIONAL_HEADER.SizeOfHeaders
        data[at] ^= 0x01
    else:
        data[data.index(b"PRETTY_NAME=")] = ord("Q")
    changed.write_bytes(bytes(data))
    subprocess.run(["mcopy", "-o", "-i", str(esp), str(changed), f"::/{path}"], check=True, capture_output=True)
    config = provisioned_vm(real_plane, fleet_image, tmp_path / "vm")
    machine = Machine(config)
    machine.prepare()
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {esp} {esp_offset} {esp_size}",
                    str(config.directory / "disk.qcow2")], check=True, capture_output=True)
    viewer = real_plane.client(role=Role.VIEWER)
    with machine:
        device_id = enrolled_device(real_plane, machine, exclude=known_devices(real_plane))
        verdict = wait_until(lambda: viewer.get(f"/api/v1/admin/devices/{device_id}").json().get("attestation"),
                             "attestation verdict", machine)
    checks = verdict["failed_checks"]  # type: ignore[index]
    assert verdict["quarantined"] is True, verdict  # type: ignore[index]
    if part == "bootloader":
        assert any(c.startswith("policy: PCR 4 event 2") and "'systemd-boot" in c for c in checks), checks
    else:
        assert any(c.startswith("policy: PCR 4 event 3") and f"'UKI {UKI}'" in c for c in checks), checks
        assert any(c.startswith("policy: PCR 11 event 3") and ".osrel (contents)" in c for c in checks), checks


def partition_span(disk: Path, label: str) -> tuple[int, int]:
    shown = subprocess.run(["sgdisk", "-p", str(disk)], capture_output=True, text=True, check=True).stdout
    for line in shown.splitlines():
        words = line.split()
        if words and words[0].isdigit() and words[-1] == label:
            return int(words[1]) * 512, (int(words[2]) - int(words[1]) + 1) * 512
    raise AssertionError(f"no partition {label} in {shown}")


def known_devices(real_plane: Fleet) -> set[str]:
    listed = real_plane.client(role=Role.VIEWER).get("/api/v1/admin/devices", params={"site": "store-vm"}).json()
    return {str(d["id"]) for d in listed["devices"]}
