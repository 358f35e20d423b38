"""Real TPMs for tests: one swtpm per test (own state directory, always stopped) and a
measured boot that extends PCRs and writes the matching TCG event log."""

from __future__ import annotations

import hashlib

from edgefleet.agent.hardware import swtpm
from edgefleet.attestation import eventlog
from tests.conftest import need

PCRS = (0, 1, 4, 7)
APP = eventlog.EV_EFI_BOOT_SERVICES_APPLICATION


def tpm2_or_skip() -> type:
    try:
        from edgefleet.agent.hardware.tpm import Tpm2
    except ImportError as exc:
        need("tpm2-pytss", f"cannot import it ({exc})")
    if not swtpm.available():
        need("swtpm", "swtpm / swtpm_ioctl are not installed (Debian: swtpm swtpm-tools)")
    return Tpm2


def boot_events(kernel: bytes = b"vmlinuz 6.1 golden", extra: int = 0) -> list[eventlog.Event]:
    """What the emulated firmware measures: firmware, boot loader, the booted slot, separators."""
    events = [
        eventlog.measure(0, eventlog.EV_POST_CODE, b"edgefleet vdevice firmware 1.0"),
        eventlog.measure(1, eventlog.EV_POST_CODE, b"platform configuration"),
        eventlog.measure(4, APP, eventlog.uefi_image_load(16), b"grub 2.06 binary"),
        eventlog.measure(4, APP, eventlog.uefi_image_load(len(kernel)), kernel),
    ]
    events += [eventlog.measure(7, eventlog.EV_POST_CODE, f"policy {i}".encode()) for i in range(extra)]
    events += [eventlog.measure(pcr, eventlog.EV_SEPARATOR, b"\0\0\0\0") for pcr in (0, 1, 4, 7)]
    return events


def measured_boot(tpm: object, events: list[eventlog.Event]) -> bytes:
    """Extend every event into the TPM (both banks) and return the matching binary log."""
    for event in events:
        tpm.extend_pcr(event.pcr, "sha256", event.digests[eventlog.ALG_SHA256])  # type: ignore[attr-defined]
        tpm.extend_pcr(event.pcr, "sha1", event.digests[eventlog.ALG_SHA1])  # type: ignore[attr-defined]
    return eventlog.encode(events)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
