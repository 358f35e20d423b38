"""EMULATION (demo, simulator, tests of the emulated device): not real UEFI firmware. The
real chain (OVMF, systemd-boot, a UKI, the kernel's event log) is built and predicted by
``edgefleet.image`` and booted by ``edgefleet.vm``; see docs/images.md.

The emulated device's platform firmware and boot loader: at power-on it picks the A/B
slot by the bootloader environment (``power_on``), then resets the TPM, measures what it
runs into the PCRs (sha1 and sha256 banks) and writes the TCG PC Client event log where the
OS reads it (``/sys/kernel/security/tpm0/binary_bios_measurements`` on a real device).

The same definitions give a release its reference measurement (``reference_pcrs``), so
what a device must show and what the firmware measures cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.interfaces import BootEnv, SlotName
from edgefleet.agent.slotenv import SlotEnv
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
    """(sha1, sha256, length) of a slot image, streamed; of the emulated image's own size
    when the slot is larger."""
    sha1, sha256, length = hashlib.sha1(), hashlib.sha256(), 0  # noqa: S324 - the TPM's sha1 bank
    size = (vimage.read_header(path) or {}).get("size")
    limit = size if isinstance(size, int) and size > 0 else None
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK if limit is None else min(CHUNK, limit - length)):
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


class EmulatedMachine(Protocol):
    """What the emulated firmware needs of a vdevice."""

    @property
    def bootenv(self) -> BootEnv: ...

    def slot_image(self, slot: SlotName) -> Path: ...

    def event_log(self) -> Path: ...

    def mark_booted(self, slot: SlotName) -> None: ...


def power_on(machine: EmulatedMachine, tpm: MeasuringTpm | None = None,
             power_cycle: Callable[[], None] | None = None) -> SlotName:
    """The emulated firmware and boot loader after power-on: choose the slot by the rules
    the shipped GRUB and U-Boot scripts implement (``slotenv``), save the used-up try
    before booting, measure the slot if there is a TPM, and boot it."""
    env = SlotEnv.parse(machine.bootenv.read())
    slot, after = env.select()
    if after != env:
        machine.bootenv.write(after.merged_into(machine.bootenv.read()))
    if tpm is not None:
        measured_boot(tpm, machine.slot_image(slot), machine.event_log(), power_cycle)
    machine.mark_booted(slot)
    return slot
