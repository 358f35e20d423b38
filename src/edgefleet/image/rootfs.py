"""The root filesystem: Debian packages by mmdebstrap (cached as a tarball with the kernel
package fetched from the same mirror), the agent as Python wheels (cached), and the files
that make it an edgefleet device (units, health checks, trust roots, agent settings)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tarfile
from pathlib import Path

from packaging.requirements import Requirement

from edgefleet.image import _tools
from edgefleet.image.cache import cached, digest_of, file_digest
from edgefleet.image.spec import ImageSpec

ROOTFS_TAR = "rootfs.tar"
KERNEL_DEB = "kernel.deb"
PACKAGE_LIST = "packages.tsv"  # name, version, architecture: what the SBOM describes
AGENT_LIB = "opt/edgefleet/lib"

_KERNEL_HOOK = (
    'chroot "$1" sh -c \'cd /var/cache/apt/archives && pkg=$(apt-cache depends {meta} '
    '| awk "/Depends: linux-image-/{{print \\$2; exit}}") && apt-get download -q "$pkg" '
    '&& mv linux-image-*.deb /edgefleet-kernel.deb\''
)


def debian_stage(spec: ImageSpec, cache: Path | None = None) -> tuple[Path, bool]:
    """mmdebstrap's tarball of the spec's packages, the kernel package and the package list."""
    inputs = {"suite": spec.suite, "mirror": spec.mirror, "packages": spec.all_packages(),
              "kernel": spec.kernel_package, "stage": 1}

    def build(work: Path) -> None:
        _tools.require(["mmdebstrap"])
        command: list[str | Path] = [
            "mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", "--format=tar",
            f"--include={','.join(spec.all_packages())}",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
            "--customize-hook=" + _KERNEL_HOOK.format(meta=spec.kernel_package),
            f"--customize-hook=download /edgefleet-kernel.deb {work / KERNEL_DEB}",
            "--customize-hook=rm -f \"$1/edgefleet-kernel.deb\"",
            "--customize-hook=chroot \"$1\" dpkg-query -W -f '${Package}\\t${Version}\\t${Architecture}\\n' "
            f"> {work / PACKAGE_LIST}",
            spec.suite, work / ROOTFS_TAR,
        ]
        if spec.mirror:
            command.append(spec.mirror)
        _tools.run(command)

    return cached("debian", digest_of(inputs), build, cache)


# Needed where images are built and vulnerabilities matched, never on a device (the
# import-linter contract "the agent runs on a device" keeps edgefleet.vuln off it).
HOST_ONLY = ("cyclonedx-python-lib", "python-debian", "packaging")


def agent_requirements() -> list[str]:
    """What the installed edgefleet needs at run time on a device (its tpm extra included)."""
    requirements = []
    for requirement in importlib.metadata.requires("edgefleet") or []:
        name, _, marker = requirement.partition(";")
        if "extra" in marker and "'tpm'" not in marker and '"tpm"' not in marker:
            continue
        if Requirement(name).name in HOST_ONLY:
            continue
        requirements.append(name.strip())
    return sorted(requirements)


def wheel_stage(cache: Path | None = None) -> tuple[Path, bool]:
    """Wheels of the agent's dependencies for the image's Python (CPython 3.11, glibc)."""
    requirements = agent_requirements()
    inputs = {"requirements": requirements, "python": list(sys.version_info[:2]), "stage": 1}

    def build(work: Path) -> None:
        _tools.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                    "--wheel-dir", work, *requirements], timeout=3600)

    return cached("wheels", digest_of(inputs), build, cache)


def source_tree() -> Path:
    """The edgefleet package this builder runs from: the device runs the same code."""
    import edgefleet

    return Path(edgefleet.__file__).resolve().parent


def install_agent(root: Path, wheels: Path, files: list[Path]) -> None:
    """Install the wheels and edgefleet's device ``files`` (``closure.closure_files``, relative to
    ``source_tree()``) under /opt/edgefleet/lib with compiled bytecode (the root is
    read-only on the device, so nothing can be compiled there)."""
    target = root / AGENT_LIB
    _tools.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                "--no-compile", "--find-links", wheels, "--target", target, *agent_requirements()], timeout=1800)
    _drop_console_scripts(target)
    for relative in files:
        (target / "edgefleet" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_tree() / relative, target / "edgefleet" / relative)
    # The image's python3 finds the agent's packages through a .pth file (python3 -m edgefleet.agent).
    (root / "usr/lib/python3/dist-packages/edgefleet.pth").write_text(f"/{AGENT_LIB}\n")
    # Unchecked-hash bytecode does not depend on file times: the same tree gives the same
    # bytes (reproducible slots), and the interpreter never re-checks a read-only file. A
    # fixed hash seed: marshal writes a constant set in its iteration order, which string
    # hash randomisation changes from one process to the next.
    _tools.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                "-d", f"/{AGENT_LIB}", target], env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=1800)


def _drop_console_scripts(target: Path) -> None:
    """Remove the console scripts pip wrote under ``target/bin`` and their RECORD lines.
    Their first line is the builder's own interpreter (a path on the build host, useless on
    the device), so they made the slot depend on where the
    builder's virtualenv lives: two clones built different root hashes from one source.
    The device's units run ``python3 -m edgefleet.agent``."""
    shutil.rmtree(target / "bin", ignore_errors=True)
    for record in sorted(target.glob("*.dist-info/RECORD")):
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(line for line in lines if not line.startswith("../../bin/")))


def unpack(tarball: Path, root: Path) -> None:
    """Extract mmdebstrap's tarball with ownership and device nodes as they are."""
    with tarfile.open(tarball) as archive:
        archive.extractall(root, filter="fully_trusted")  # noqa: S202 - our own mmdebstrap output


def package_list(debian: Path) -> list[tuple[str, str, str]]:
    rows = []
    for line in (debian / PACKAGE_LIST).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def inputs_digest(spec_dir: Path, spec: ImageSpec) -> dict[str, str]:
    """Digests of the fleet files the spec names (part of the image's cache key)."""
    files: dict[str, str] = {}
    if spec.fleet is not None:
        files["ca"] = file_digest(spec_dir / spec.fleet.ca_file)
        if spec.fleet.trust_dir is not None:
            for name in ("image-root.json", "director-root.json"):
                path = spec_dir / spec.fleet.trust_dir / name
                if path.exists():
                    files[name] = file_digest(path)
    return files
