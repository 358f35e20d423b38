"""What an image is built from: one TOML file (``edgefleet image build SPEC``).

Paths in the spec are relative to the spec file. The fleet part (trust roots, server URL,
CA) is optional: an image without it boots and attests nothing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.errors import ConfigError

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

# What every image needs, besides the spec's own packages: systemd as init, the boot chain
# (systemd-boot and its stub come from the image's own Debian packages), the initramfs'
# tools, Python for the agent and the TPM stack tpm2-pytss loads.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "kmod", "python3", "ca-certificates", "busybox-static",
    "cryptsetup-bin", "systemd-boot-efi", "libtss2-esys-3.0.2-0", "libtss2-fapi1", "libtss2-tctildr0",
    "libtss2-tcti-device0", "libtss2-mu0", "libtss2-rc0",
)


class FleetTrust(BaseModel):
    """What the image trusts and whom it calls: baked into the read-only root."""

    model_config = ConfigDict(extra="forbid")

    server_url: str = Field(description="the control plane, as the device reaches it")
    ca_file: Path = Field(description="fleet CA certificate the server's TLS certificate chains to")
    trust_dir: Path | None = Field(None, description="image-root.json and director-root.json (TUF roots)")
    hosts: dict[str, str] = Field({}, description="extra /etc/hosts entries, name -> address")
    agent: dict[str, Any] = Field({}, description="further agent settings (agent.toml)")


class HealthCheck(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("edgefleet-edge", description="product name; the erofs UUID derives from it")
    version: str
    release_counter: int = Field(0, ge=0)
    hardware_id: str = "qemu-q35"
    suite: str = "bookworm"
    mirror: str | None = Field(None, description="Debian mirror; default: mmdebstrap's")
    packages: list[str] = []
    kernel_package: str = "linux-image-amd64"
    kernel_cmdline: str = "console=ttyS0,115200 panic=10"
    slot_size_mib: int = Field(640, ge=64, le=65536)
    data_size_mib: int = Field(1024, ge=16, le=1 << 20, description="agent state, downloads (a full release)")
    esp_size_mib: int = Field(128, ge=34, le=4096, description="two UKIs and one staged beside them")
    fleet: FleetTrust | None = None
    health: list[HealthCheck] = []

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError("a version is 1-64 letters, digits and ._+-")
        return value

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        bad = [p for p in value if not _PACKAGE.match(p)]
        if bad:
            raise ValueError(f"not Debian package names: {bad}")
        return sorted(set(value))

    @field_validator("kernel_cmdline")
    @classmethod
    def _cmdline(cls, value: str) -> str:
        if any(word.startswith(("edgefleet.", "root=")) for word in value.split()):
            raise ValueError("edgefleet.* and root= are set by the builder")
        return " ".join(value.split())

    def all_packages(self) -> list[str]:
        return sorted({*BASE_PACKAGES, *self.packages})


def load_spec(path: Path) -> tuple[ImageSpec, Path]:
    """The spec and the directory its relative paths start from.

    Raises ConfigError for an unreadable or invalid spec.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"image spec {path}: {exc}") from exc
    try:
        spec = ImageSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"image spec {path}: {problems}") from exc
    return spec, path.resolve().parent
