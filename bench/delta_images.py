"""A realistic pair of Debian OS images for bench/delta.py, built once and cached.

v1: debootstrap bookworm (minbase) with systemd, python3 and openssh-server, from the
point release alone. v2: v1 after ``apt-get upgrade`` from bookworm-security and
bookworm-updates (the security fixes a month or more brings) plus three new packages.
Both are reproducible, uncompressed erofs images (``edgefleet.delta.erofs``).

Needs root, debootstrap, erofs-utils and a Debian mirror (``EDGEFLEET_DEBIAN_MIRROR``,
default http://deb.debian.org/debian).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgefleet.delta.erofs import build_erofs

MIRROR = os.environ.get("EDGEFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("EDGEFLEET_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
SUITE = "bookworm"
BASE_PACKAGES = "systemd,systemd-sysv,python3,openssh-server"
NEW_PACKAGES = ["curl", "less", "nano"]
CACHE = Path(os.environ.get("EDGEFLEET_BENCH_CACHE", Path.home() / ".cache" / "edgefleet-bench")) / "delta"


def _run(command: list[str], **kwargs: object) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def _tidy(rootfs: Path) -> None:
    """What an image build removes: caches, logs, the machine id (set on first boot)."""
    for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*",
                    "var/log/*.log", "var/log/apt/*", "tmp/*", "var/cache/debconf/*-old",
                    "var/lib/dpkg/*-old"):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "lock":
                path.unlink(missing_ok=True)
    (rootfs / "etc/machine-id").write_text("")


def _chroot(rootfs: Path, *command: str) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    _run(["mount", "-t", "proc", "proc", str(rootfs / "proc")])
    try:
        _run(["chroot", str(rootfs), *command], env=env)
    finally:
        subprocess.run(["umount", str(rootfs / "proc")], check=False)


def rootfs_v1(work: Path) -> Path:
    rootfs = work / "rootfs-v1"
    if not (rootfs / ".done").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        _run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs), MIRROR])
        _tidy(rootfs)
        (rootfs / ".done").touch()
    return rootfs


def rootfs_v2(work: Path, v1: Path) -> Path:
    rootfs = work / "rootfs-v2"
    if not (rootfs / ".done").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        _run(["cp", "-a", str(v1), str(rootfs)])
        (rootfs / ".done").unlink()
        sources = (f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
                   f"deb {SECURITY} {SUITE}-security main\n")
        (rootfs / "etc/apt/sources.list").write_text(sources)
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        _chroot(rootfs, "apt-get", "update", "-qq")
        _chroot(rootfs, "apt-get", "-y", "-qq", "upgrade")
        _chroot(rootfs, "apt-get", "-y", "-qq", "install", "--no-install-recommends", *NEW_PACKAGES)
        _chroot(rootfs, "apt-get", "clean")
        _tidy(rootfs)
        (rootfs / ".done").touch()
    return rootfs


def image_pair(work: Path = CACHE) -> tuple[Path, Path]:
    """(v1.img, v2.img), building what the cache lacks."""
    work.mkdir(parents=True, exist_ok=True)
    images = []
    v1 = rootfs_v1(work)
    for version, rootfs in (("v1", v1), ("v2", rootfs_v2(work, v1))):
        image = work / f"{version}.img"
        if not image.exists():
            partial = work / f"{version}.img.partial"
            build_erofs(rootfs, partial, name="bench-debian", epoch=1_700_000_000)
            partial.rename(image)
        images.append(image)
    return images[0], images[1]


if __name__ == "__main__":
    for image in image_pair():
        print(image, image.stat().st_size)
