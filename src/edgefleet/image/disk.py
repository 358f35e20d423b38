"""The device's GPT disk: ESP (boot chain), root-a and root-b (erofs + dm-verity), data
(ext4, writable). Every GUID follows from the product name, so the partition table, which
the firmware measures into PCR 5, is the same for every build of the same product."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import BuildError
from edgefleet.image import _tools

MIB = 1 << 20
SECTOR = 512
ESP_TYPE, ROOT_TYPE, DATA_TYPE = "ef00", "8304", "8300"  # ESP, Linux x86-64 root, Linux data


@dataclass(frozen=True)
class Partition:
    label: str
    type_code: str
    size_mib: int


@dataclass(frozen=True)
class Placed:
    partition: Partition
    number: int
    offset: int  # bytes from the start of the disk

    @property
    def size(self) -> int:
        return self.partition.size_mib * MIB


def layout(esp_mib: int, slot_mib: int, data_mib: int) -> list[Placed]:
    partitions = [Partition("esp", ESP_TYPE, esp_mib), Partition("root-a", ROOT_TYPE, slot_mib),
                  Partition("root-b", ROOT_TYPE, slot_mib), Partition("data", DATA_TYPE, data_mib)]
    placed, offset = [], MIB
    for number, partition in enumerate(partitions, start=1):
        placed.append(Placed(partition, number, offset))
        offset += partition.size_mib * MIB
    return placed


def guid(product: str, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgefleet:disk:{product}:{what}")).upper()


def esp_image(path: Path, size_mib: int, files: Mapping[str, Path | bytes], product: str) -> None:
    """A FAT32 ESP holding ``files`` (ESP path -> file or bytes), without mounting anything."""
    _tools.require(["mkfs.vfat", "mmd", "mcopy"])
    with open(path, "wb") as handle:
        handle.truncate(size_mib * MIB)
    serial = guid(product, "esp-serial").replace("-", "")[:8]
    _tools.run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-i", serial, path])
    made: set[str] = set()
    staging = path.parent / "esp-files"
    staging.mkdir(exist_ok=True)
    for target, source in sorted(files.items()):
        parts = target.strip("/").split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                _tools.run(["mmd", "-i", path, f"::/{directory}"])
                made.add(directory)
        if isinstance(source, bytes):
            staged = staging / parts[-1]
            staged.write_bytes(source)
            source = staged
        _tools.run(["mcopy", "-i", path, source, f"::/{'/'.join(parts)}"])
    shutil.rmtree(staging)


def data_image(path: Path, size_mib: int, tree: Path, product: str) -> None:
    """The writable data partition (ext4) with ``tree``'s contents, reproducibly."""
    _tools.require(["mkfs.ext4"])
    with open(path, "wb") as handle:
        handle.truncate(size_mib * MIB)
    fs_uuid = guid(product, "data-fs").lower()
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1"}
    _tools.run(["mkfs.ext4", "-q", "-L", "data", "-U", fs_uuid, "-E", f"hash_seed={fs_uuid},root_owner=0:0",
                "-d", tree, path], env=env)


def assemble(out: Path, product: str, placed: list[Placed], contents: Mapping[str, Path]) -> None:
    """Write the GPT and copy each partition's image (label -> file) into place; a label
    without contents stays zero (sparse)."""
    _tools.require(["sgdisk"])
    end = placed[-1].offset + placed[-1].size + MIB
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.truncate(end)
    command: list[str | Path] = ["sgdisk", "--clear", f"--disk-guid={guid(product, 'disk')}"]
    for p in placed:
        first = p.offset // SECTOR
        last = (p.offset + p.size) // SECTOR - 1
        command += [f"--new={p.number}:{first}:{last}", f"--typecode={p.number}:{p.partition.type_code}",
                    f"--change-name={p.number}:{p.partition.label}",
                    f"--partition-guid={p.number}:{guid(product, p.partition.label)}"]
    _tools.run([*command, tmp])
    with open(tmp, "r+b") as disk:
        for p in placed:
            source = contents.get(p.partition.label)
            if source is None:
                continue
            if source.stat().st_size > p.size:
                raise BuildError(f"{p.partition.label} needs {source.stat().st_size >> 20} MiB, "
                                 f"the partition has {p.partition.size_mib}")
            disk.seek(p.offset)
            with open(source, "rb") as handle:
                while chunk := handle.read(4 * MIB):
                    if chunk.count(0) == len(chunk):
                        disk.seek(len(chunk), os.SEEK_CUR)  # keep the disk sparse
                    else:
                        disk.write(chunk)
    os.replace(tmp, out)
