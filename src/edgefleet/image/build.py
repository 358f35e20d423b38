"""``edgefleet image build``: Debian packages -> root tree -> erofs + dm-verity slot ->
initramfs -> UKI -> ESP with systemd-boot -> GPT disk, and the reference values the
firmware will measure (``predict``). Each stage's output is cached by its inputs."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from edgefleet import bootchain
from edgefleet.delta.erofs import build_erofs
from edgefleet.errors import BuildError
from edgefleet.image import _tools, closure, disk, initramfs, kernel, rootfs, sbom, uki, verity
from edgefleet.image.cache import cached, digest_of, file_digest
from edgefleet.image.spec import ImageSpec

BOOTLOADER = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
TOOLS = ("mmdebstrap", "mkfs.erofs", "veritysetup", "objcopy", "readelf", "sgdisk", "mkfs.vfat", "mcopy", "mmd",
         "mkfs.ext4", "cpio", "depmod", "modprobe", "dpkg-deb")
MANIFEST = "image.json"
REFERENCE_VALUES = "reference-values.json"  # predicted, edgefleet-reference-values/1


@dataclass(frozen=True)
class BuiltImage:
    """The outputs of one build (all in ``directory``)."""

    directory: Path
    cached: bool
    seconds: float

    @property
    def manifest(self) -> dict[str, object]:
        value = json.loads((self.directory / MANIFEST).read_text())
        assert isinstance(value, dict)
        return value

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    def path(self, name: str) -> Path:
        return self.directory / name


STUB_COPY = "linuxx64.efi.stub"  # kept with the outputs: a test rebuilds a UKI with the same stub
UKI = "uki.efi"  # the slot's unified kernel image (also inside root.erofs, after its hash tree)
FIRST_ENTRY = bootchain.Entry(1, "a").name  # slot A's boot entry on a new disk: good, no counter


def uki_osrel(osrel: bytes, version: str) -> bytes:
    """The os-release inside the UKI: the slot's, with the release in PRETTY_NAME and
    without IMAGE_VERSION, so that systemd-boot orders our entries by file name (the
    agent's boot order) instead of by version (see bootchain)."""
    lines = []
    for line in osrel.decode().splitlines():
        if line.startswith("IMAGE_VERSION="):
            continue
        if line.startswith("PRETTY_NAME="):
            name = line.partition("=")[2].strip('"')
            line = f'PRETTY_NAME="{name} edgefleet {version}"'
        lines.append(line)
    return ("\n".join(lines) + "\n").encode()


def _enable(system: Path, unit: str, target: str, source: str) -> None:
    """What ``systemctl enable`` leaves: a link in ``target``'s wants directory."""
    wants = system / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit).unlink(missing_ok=True)
    (wants / unit).symlink_to(source)


def _device_files(spec: ImageSpec, spec_dir: Path, root: Path) -> None:
    """What makes the Debian tree an edgefleet device."""
    share = root / "usr/share/edgefleet"
    (share / "trust").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "efi").mkdir(exist_ok=True)  # the ESP: the agent writes boot entries there
    units = files("edgefleet.image").joinpath("files")
    system = root / "etc/systemd/system"
    for unit in ("edgefleet-agent.service", "edgefleet-provision.service", "edgefleet-evidence.service"):
        (system / unit).write_bytes(units.joinpath(unit).read_bytes())
        if unit == "edgefleet-agent.service" and spec.fleet is None:
            continue  # no server to talk to: installed, not started
        _enable(system, unit, "multi-user.target", f"/etc/systemd/system/{unit}")
    provision = root / "usr/lib/edgefleet/provision"
    provision.parent.mkdir(parents=True, exist_ok=True)
    provision.write_bytes(units.joinpath("provision").read_bytes())
    provision.chmod(0o755)
    network = root / "etc/systemd/network/20-wired.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_bytes(units.joinpath("20-wired.network").read_bytes())
    for unit, target in (("systemd-networkd.service", "multi-user.target"),
                         ("systemd-networkd-wait-online.service", "network-online.target")):
        _enable(system, unit, target, f"/lib/systemd/system/{unit}")
    # systemd-pcrphase extends PCR 11 after boot ("sysinit", "ready") and logs it only to
    # the journal: the firmware's event log could then never replay to the quoted PCR 11.
    for unit in ("systemd-pcrphase.service", "systemd-pcrphase-sysinit.service", "systemd-pcrphase-initrd.service"):
        (system / unit).unlink(missing_ok=True)
        (system / unit).symlink_to("/dev/null")
    # A read-only root: the machine id lives on the data partition (the initramfs makes
    # it at first boot), scratch space is memory.
    machine_id = root / "etc/machine-id"
    machine_id.unlink(missing_ok=True)
    machine_id.symlink_to("/data/etc/machine-id")
    with open(root / "etc/fstab", "w") as fstab:
        fstab.write("tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\ntmpfs /var/tmp tmpfs mode=1777,nosuid,nodev 0 0\n"
                    "PARTLABEL=esp /efi vfat umask=0077,noexec,nosuid,nodev,flush 0 0\n")
    (root / "etc/hostname").write_text(f"{spec.name}\n")
    hosts = "127.0.0.1 localhost\n::1 localhost\n"
    osrel = (root / "usr/lib/os-release").read_text().rstrip("\n")
    osrel += f'\nIMAGE_ID={spec.name}\nIMAGE_VERSION={spec.version}\nEDGEFLEET_RELEASE_COUNTER={spec.release_counter}\n'
    (root / "usr/lib/os-release").write_text(osrel)
    health = root / "etc/edgefleet/health.d"
    health.mkdir(parents=True, exist_ok=True)
    for check in spec.health:
        (health / f"{check.name}.json").write_text(json.dumps(check.model_dump(), sort_keys=True) + "\n")
    agent: dict[str, object] = {"state_dir": "/data/agent", "tpm": "device:/dev/tpmrm0",
                                "trust_dir": "/usr/share/edgefleet/trust", "hardware_type": spec.hardware_id,
                                "slot_a": "/dev/disk/by-partlabel/root-a", "slot_b": "/dev/disk/by-partlabel/root-b",
                                "bootloader": "systemd-boot", "esp": "/efi"}
    if spec.fleet is not None:
        shutil.copyfile(spec_dir / spec.fleet.ca_file, share / "fleet-ca.pem")
        agent.update(server_url=spec.fleet.server_url, ca_file="/usr/share/edgefleet/fleet-ca.pem")
        if spec.fleet.trust_dir is not None:
            for name in ("image-root.json", "director-root.json"):
                source = spec_dir / spec.fleet.trust_dir / name
                if source.exists():
                    shutil.copyfile(source, share / "trust" / name)
        hosts += "".join(f"{address} {name}\n" for name, address in sorted(spec.fleet.hosts.items()))
        agent.update(spec.fleet.agent)
    (root / "etc/hosts").write_text(hosts)
    lines = [f"{key} = {json.dumps(value)}" for key, value in sorted(agent.items()) if not isinstance(value, dict)]
    (root / "etc/edgefleet/agent.toml").write_text("\n".join(lines) + "\n")


def _slot_tree(spec: ImageSpec, spec_dir: Path, debian: Path, wheels: Path, work: Path) -> Path:
    root = work / "root"
    rootfs.unpack(debian / rootfs.ROOTFS_TAR, root)
    rootfs.install_agent(root, wheels, closure.closure_files(rootfs.source_tree(), closure.DEVICE_MODULES))
    _device_files(spec, spec_dir, root)
    return root


def build_image(spec: ImageSpec, spec_dir: Path, cache: Path | None = None, *,
                into: Path | None = None) -> BuiltImage:
    """Build (or find in the cache) the disk, slot, UKI and reference values of ``spec``.
    With ``into``, the last stage is built afresh into that (empty) directory instead:
    what a reproducibility check compares with the cached build.

    Raises BuildError (a tool is missing or failed) or ConfigError (bad spec files).
    """
    started = time.monotonic()
    _tools.require(TOOLS)
    debian, _ = rootfs.debian_stage(spec, cache)
    wheels, _ = rootfs.wheel_stage(cache)
    source = rootfs.source_tree()
    inputs = {"spec": spec.model_dump(mode="json"), "debian": debian.name, "wheels": wheels.name,
              "edgefleet": _closure_digest(source, closure.DEVICE_MODULES),
              "builder": _closure_digest(source, closure.BUILDER_MODULES),
              "fleet": rootfs.inputs_digest(spec_dir, spec), "stage": 2}

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-image-") as tmp:
            _build(spec, spec_dir, debian, wheels, out, Path(tmp))

    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
        build(into)
        return BuiltImage(into, False, time.monotonic() - started)
    directory, hit = cached("image", digest_of(inputs), build, cache)
    return BuiltImage(directory, hit, time.monotonic() - started)


def _closure_digest(source: Path, entries: tuple[str, ...]) -> str:
    return closure.files_digest(source, closure.closure_files(source, entries))


def _build(spec: ImageSpec, spec_dir: Path, debian: Path, wheels: Path, out: Path, work: Path) -> None:
    from edgefleet.image import predict

    root = _slot_tree(spec, spec_dir, debian, wheels, work)
    packages = sbom.debian_packages(root) + sbom.python_packages(root / rootfs.AGENT_LIB)
    (out / sbom.SBOM).write_text(sbom.build_sbom(spec.name, spec.version, packages))
    booted = kernel.extract(debian / rootfs.KERNEL_DEB, work / "kernel")
    initrd = initramfs.build(root, booted, work)
    slot = out / "root.erofs"
    build_erofs(root, slot, name=spec.name, all_root=False)
    tree = verity.format_slot(slot)
    osrel = (root / "usr/lib/os-release").read_bytes()
    # The command line names no slot: the initramfs opens whichever slot verifies against
    # the root hash, so one UKI (and one set of reference values) serves both slots.
    cmdline = f"{spec.kernel_cmdline} {tree.cmdline()} ro"
    parts = uki.UkiParts(booted.vmlinuz, initrd, cmdline, uki_osrel(osrel, spec.version))
    image = out / UKI
    shutil.copyfile(initramfs.inside(root, root / STUB), out / STUB_COPY)
    uki.build(out / STUB_COPY, parts, image, work)
    bootchain.append_uki(slot, image)
    if slot.stat().st_size > spec.slot_size_mib * disk.MIB:
        raise BuildError(f"the root slot and its UKI need {slot.stat().st_size >> 20} MiB; "
                         f"slot_size_mib is {spec.slot_size_mib}")
    bootloader = out / "BOOTX64.EFI"
    shutil.copyfile(initramfs.inside(root, root / BOOTLOADER), bootloader)
    loader_conf = f"default {bootchain.LOADER_DEFAULT}\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\n"
    esp = work / "esp.img"
    disk.esp_image(esp, spec.esp_size_mib, {
        "EFI/BOOT/BOOTX64.EFI": bootloader,
        f"{bootchain.ENTRY_DIR}/{FIRST_ENTRY}": image,
        "loader/loader.conf": loader_conf.encode(),
    }, spec.name)
    data_tree = work / "data-tree"
    (data_tree / "agent").mkdir(parents=True)
    (data_tree / "etc").mkdir()
    data = work / "data.img"
    disk.data_image(data, spec.data_size_mib, data_tree, spec.name)
    placed = disk.layout(spec.esp_size_mib, spec.slot_size_mib, spec.data_size_mib)
    disk.assemble(out / "disk.raw", spec.name, placed, {"esp": esp, "root-a": slot, "data": data})
    shutil.copyfile(booted.vmlinuz, out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.cpio")
    (out / "cmdline.txt").write_text(cmdline)
    (out / "os-release").write_bytes(parts.osrel)
    references = predict.predict(bootloader=bootloader, uki=image, parts=parts, disk=out / "disk.raw")
    (out / "packages.tsv").write_bytes((debian / rootfs.PACKAGE_LIST).read_bytes())
    manifest = {
        "name": spec.name, "version": spec.version, "release_counter": spec.release_counter,
        "hardware_id": spec.hardware_id, "kernel": booted.release,
        "verity": {"data_blocks": tree.data_blocks, "hash_offset": tree.hash_offset, "root_hash": tree.root_hash},
        "files": {name: file_digest(out / name) for name in
                  ("root.erofs", UKI, "BOOTX64.EFI", "vmlinuz", "initrd.cpio")},
        "disk_bytes": (out / "disk.raw").stat().st_size,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / REFERENCE_VALUES).write_text(json.dumps(references.to_document(), indent=2) + "\n")
