"""The agent's view of its hardware (DESIGN.md, "Emulated hardware, real code paths").

The clock is ``edgefleet.clock.Clock`` and the network is ``web.device_client.DeviceTransport``.
The TPM interface is filled in by the attestation work (tpm2-pytss on /dev/tpmrm0 or
swtpm); slots, bootloader environment and reboot (``ABSystem``) by the A/B update work.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

SlotName = Literal["a", "b"]


class Platform(Protocol):
    """Identity and inventory of the machine the agent runs on."""

    def hardware_id(self) -> str: ...

    def hardware_type(self) -> str | None:
        """The model that releases name in their hardware ids (Uptane's hardware identifier)."""
        ...

    def os_version(self) -> str | None:
        """Version of the OS image that booted, if known."""
        ...

    def release_counter(self) -> int:
        """Release counter of the booted image (0 if unknown); updates may not go below it."""
        ...

    def hostname(self) -> str: ...

    def trust_dir(self) -> Path:
        """Where the OS image ships its TUF roots (image-root.json, director-root.json)."""
        ...

    def event_log(self) -> Path:
        """The firmware's TCG boot event log (binary_bios_measurements)."""
        ...

    def os_config_dir(self) -> Path:
        """Where the agent puts the rendered OS configuration (``agent/osconfig.py``)."""
        ...


class BootEnv(Protocol):
    """The bootloader's persistent variables (GRUB env block, U-Boot env)."""

    def read(self) -> dict[str, str]: ...

    def write(self, values: Mapping[str, str]) -> None:
        """Replace all variables at once; a torn write must leave a valid environment."""
        ...


class ABSystem(Protocol):
    """An A/B pair of OS image slots (partitions, or files in a vdevice), the bootloader
    environment that chooses between them, and the means to reboot."""

    @property
    def bootenv(self) -> BootEnv: ...

    def booted(self) -> SlotName: ...

    def slot_device(self, slot: SlotName) -> Path:
        """The block device (or file) holding ``slot``, to write it."""
        ...

    def slot_source(self, slot: SlotName) -> Path:
        """The block device (or file) holding ``slot``, only to read it (a delta's base)."""
        ...

    def slot_size(self, slot: SlotName) -> int: ...

    def stage_boot(self, slot: SlotName, length: int) -> None:
        """Make ``slot`` (just written, ``length`` bytes) bootable once a trial arms it: for
        systemd-boot, its release's UKI goes to the ESP. Nothing for bootloaders that load
        the kernel from the slot itself.

        Raises InstallError or PersistError.
        """
        ...

    def boot_id(self) -> str:
        """Different at every boot (``/proc/sys/kernel/random/boot_id``)."""
        ...

    def image_health_checks(self) -> list[dict[str, object]]:
        """Health checks the booted image ships (greenboot's check directories)."""
        ...

    def reboot(self, reason: str) -> None:
        """Ask for a reboot; the agent stops taking actions after this."""
        ...


class Tpm(Protocol):
    """A TPM 2.0: PCR reads and extends, and quotes signed by the attestation key."""

    def read_pcrs(self, bank: str, indices: list[int]) -> dict[int, bytes]: ...

    def extend_pcr(self, index: int, bank: str, digest: bytes) -> None: ...

    def quote(self, nonce: bytes, bank: str, indices: list[int]) -> tuple[bytes, bytes]:
        """Returns (marshalled TPMS_ATTEST, marshalled TPMT_SIGNATURE)."""
        ...
