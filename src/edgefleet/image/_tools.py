"""Running the builder's tools (mmdebstrap, mkfs.erofs, veritysetup, objcopy, sgdisk,
mtools): every failure becomes a BuildError that names the tool and the tail of what it
said, and a missing tool names the Debian package that has it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgefleet.errors import BuildError

# tool -> Debian package
PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.erofs": "erofs-utils",
    "veritysetup": "cryptsetup-bin",
    "objcopy": "binutils",
    "readelf": "binutils",
    "sgdisk": "gdisk",
    "mformat": "mtools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mkfs.ext4": "e2fsprogs",
    "cpio": "cpio",
    "depmod": "kmod",
    "modprobe": "kmod",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "swtpm": "swtpm",
}


def missing(tools: Sequence[str]) -> list[str]:
    """The tools of ``tools`` that are not on PATH."""
    found = {tool: shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin") for tool in tools}
    return [tool for tool, path in found.items() if path is None]


def require(tools: Sequence[str]) -> None:
    """Raises BuildError naming each missing tool and its Debian package."""
    absent = missing(tools)
    if absent:
        names = ", ".join(f"{t} (Debian: {PACKAGES.get(t, t)})" for t in absent)
        raise BuildError(f"the image builder needs {names}", code="builder_tool_missing")


def run(command: Sequence[str | Path], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        input_bytes: bytes | None = None, timeout: float = 1800) -> bytes:
    """Run one tool; its standard output, or BuildError with the tail of its error output."""
    argv = [str(part) for part in command]
    try:
        done = subprocess.run(  # noqa: S603 - an argument list, never a shell
            argv, cwd=cwd, env=None if env is None else dict(env), input=input_bytes, capture_output=True,
            timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} is not installed (Debian: {PACKAGES.get(argv[0], argv[0])})",
                         code="builder_tool_missing") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-15:]
        raise BuildError(f"{' '.join(argv[:3])} ... exited {done.returncode}: " + " | ".join(tail))
    return done.stdout
