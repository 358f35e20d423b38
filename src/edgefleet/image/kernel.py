"""The kernel and the few modules a slot needs before its root is mounted, taken from the
Debian kernel package that the root filesystem stage fetched from the same mirror."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import BuildError
from edgefleet.image import _tools

# Loaded by the initramfs, dependencies first: the disk (virtio), dm-verity, the slot's
# erofs and the data partition's ext4, the NIC, fw_cfg (per-VM provisioning), the ESP (vfat)
# and efivarfs (boot loader interface).
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "dm_verity", "erofs", "ext4",
                  "qemu_fw_cfg", "vfat", "nls_cp437", "nls_ascii", "efivarfs")


@dataclass(frozen=True)
class Kernel:
    release: str  # uname -r
    vmlinuz: Path
    tree: Path  # the package's files (lib/modules/<release>/...)
    modules: tuple[Path, ...]  # INITRD_MODULES and their dependencies, in load order


def extract(deb: Path, into: Path) -> Kernel:
    """Unpack the kernel package and resolve the initramfs modules with kmod.

    Raises BuildError when the package holds no kernel or a module is missing.
    """
    _tools.require(["dpkg-deb", "depmod", "modprobe"])
    _tools.run(["dpkg-deb", "-x", deb, into])
    images = sorted((into / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise BuildError(f"{deb.name} holds {len(images)} kernels, expected one")
    release = images[0].name.removeprefix("vmlinuz-")
    _tools.run(["depmod", "-b", into, release])
    order: list[Path] = []
    for module in INITRD_MODULES:
        shown = _tools.run(["modprobe", "-d", into, "-S", release, "--show-depends", module]).decode()
        for line in shown.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                path = Path(words[1])
                if path not in order:
                    order.append(path)
    if not order:
        raise BuildError(f"no initramfs modules found in {deb.name}")
    return Kernel(release, images[0], into, tuple(order))
