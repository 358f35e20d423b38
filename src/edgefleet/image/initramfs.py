"""The initramfs: busybox, veritysetup with the libraries it links, the slot's modules and
``init.sh``, in a reproducible newc cpio (fixed times, root ownership, sorted names).
It is left uncompressed: under emulation decompressing costs more than reading."""

from __future__ import annotations

import os
import shutil
from importlib.resources import files
from pathlib import Path

from edgefleet.errors import BuildError
from edgefleet.image import _tools
from edgefleet.image.kernel import Kernel

LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64")
LOADER = "lib64/ld-linux-x86-64.so.2"


def inside(root: Path, path: Path) -> Path:
    """``path`` (under ``root``) with every symlink resolved as it would be inside ``root``:
    an absolute link target names a path in the image, never on the build host."""
    parts = list(path.relative_to(root).parts)
    current = root
    hops = 0
    while parts:
        current = current / parts.pop(0)
        if current.is_symlink():
            hops += 1
            if hops > 40:
                raise BuildError(f"too many symbolic links under {path}")
            target = Path(os.readlink(current))
            parts = [*target.parts[1:], *parts] if target.is_absolute() else [*target.parts, *parts]
            current = root if target.is_absolute() else current.parent
        elif current.name == "..":
            current = current.parent.parent if current.parent != root else root
    if not current.is_relative_to(root):
        raise BuildError(f"{path} leaves the image's root")
    return current


def _needed(binary: Path) -> list[str]:
    shown = _tools.run(["readelf", "-d", binary]).decode()
    return [line.split("[", 1)[1].split("]", 1)[0] for line in shown.splitlines() if "(NEEDED)" in line]


def _library(root: Path, name: str) -> Path:
    for directory in LIBRARY_DIRS:
        candidate = root / directory / name
        if os.path.lexists(candidate):
            return inside(root, candidate)
    raise BuildError(f"library {name} is not in the root filesystem")


def _closure(root: Path, binary: Path) -> dict[str, Path]:
    """Every shared library ``binary`` needs, transitively, from the image's own root."""
    found: dict[str, Path] = {}
    pending = _needed(binary)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found[name] = _library(root, name)
        pending += _needed(found[name])
    return found


def _copy(source: Path, target: Path, mode: int = 0o755) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, mode)


def build(root: Path, kernel: Kernel, work: Path) -> Path:
    """Write ``work/initrd.cpio`` from the image's root tree and kernel; returns its path."""
    _tools.require(["readelf", "cpio"])
    tree = work / "initrd"
    shutil.rmtree(tree, ignore_errors=True)
    for directory in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "sysroot", "lib/modules", "lib64"):
        (tree / directory).mkdir(parents=True, exist_ok=True)
    _copy(inside(root, root / "bin/busybox"), tree / "bin/busybox")
    (tree / "bin/sh").symlink_to("busybox")
    veritysetup = inside(root, root / "sbin/veritysetup")
    if not veritysetup.exists():
        raise BuildError("the root filesystem has no /sbin/veritysetup (Debian: cryptsetup-bin)")
    _copy(veritysetup, tree / "sbin/veritysetup")
    for name, path in sorted(_closure(root, veritysetup).items()):
        _copy(path, tree / "lib/x86_64-linux-gnu" / name)
    _copy(inside(root, root / LOADER), tree / LOADER)
    order = []
    for module in kernel.modules:
        relative = module.relative_to(kernel.tree / "lib/modules" / kernel.release)
        _copy(module, tree / "lib/modules" / relative, 0o644)
        order.append(str(relative))
    (tree / "lib/modules/load.order").write_text("\n".join(order) + "\n")
    init = tree / "init"
    init.write_bytes(files("edgefleet.image").joinpath("init.sh").read_bytes())
    init.chmod(0o755)
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    out = work / "initrd.cpio"
    with open(out, "wb") as handle:
        handle.write(_tools.run(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0"], cwd=tree,
                                input_bytes=("\n".join(names) + "\n").encode()))
    return out
