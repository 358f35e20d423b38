"""The emulated device's platform firmware and boot loader, as far as measured boot goes:
at power-on it resets the TPM, measures what it runs into the PCRs (sha1 and sha256 banks)
and writes the TCG PC Client event log where the OS reads it
(``/sys/kernel/security/tpm0/binary_bios_measurements`` on a real device).

The same definitions give a release its reference measurement (``reference_pcrs``), so
what a device must show and what the firmware measures cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edgefleet.attestation import eventlog
from edgefleet.util.atomic import atomic_write_bytes

FIRMWARE = b"edgefleet vdevice firmware 1.0"
BOOTLOADER = b"edgefleet vdevice boot loader (grub 2.06 compatible)"
MEASURED_PCRS = (0, 1, 2, 3, 4, 5, 6, 7)
CHUNK = 1 << 20


class MeasuringTpm(Protocol):
    def extend_pcr(self, index: int, bank: str, digest: bytes) -> None: ...

    def startup(self) -> None: ...


def image_digests(path: Path) -> tuple[bytes, bytes, int]:
    """(sha1, sha256, length) of a slot image, streamed."""
    sha1, sha256, length = hashlib.sha1(), hashlib.sha256(), 0  # noqa: S324 - the TPM's sha1 bank
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha1.update(chunk)
            sha256.update(chunk)
            length += len(chunk)
    return sha1.digest(), sha256.digest(), length


def boot_events(image: tuple[bytes, bytes, int]) -> list[eventlog.Event]:
    sha1, sha256, length = image
    kernel = eventlog.Event(4, eventlog.EV_EFI_BOOT_SERVICES_APPLICATION,
                            {eventlog.ALG_SHA1: sha1, eventlog.ALG_SHA256: sha256}, eventlog.uefi_image_load(length))
    return [
        eventlog.measure(0, eventlog.EV_POST_CODE, FIRMWARE),
        eventlog.measure(4, eventlog.EV_EFI_BOOT_SERVICES_APPLICATION, eventlog.uefi_image_load(len(BOOTLOADER)),
                         BOOTLOADER),
        kernel,
        *(eventlog.measure(pcr, eventlog.EV_SEPARATOR, b"\0\0\0\0") for pcr in MEASURED_PCRS),
    ]


def reference_pcrs(image_path: Path) -> dict[int, bytes]:
    """The sha256 PCR values a vdevice shows after booting ``image_path``: PCR 4 is the
    release's reference measurement, PCR 0 the hardware model's firmware baseline."""
    log = eventlog.parse(eventlog.encode(boot_events(image_digests(image_path))))
    return eventlog.replay(log, "sha256", MEASURED_PCRS)


def measured_boot(tpm: MeasuringTpm, image_path: Path, event_log_path: Path,
                  power_cycle: Callable[[], None] | None = None) -> bytes:
    """Power on: reset the TPM, measure the booted slot, write the event log; returns it."""
    if power_cycle is not None:
        power_cycle()
        tpm.startup()
    events = boot_events(image_digests(image_path))
    for event in events:
        tpm.extend_pcr(event.pcr, "sha256", event.digests[eventlog.ALG_SHA256])
        tpm.extend_pcr(event.pcr, "sha1", event.digests[eventlog.ALG_SHA1])
    log = eventlog.encode(events)
    atomic_write_bytes(event_log_path, log, mode=0o444)
    return log
