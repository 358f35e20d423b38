"""Predict what the firmware, systemd-boot, systemd-stub and the kernel measure when a
device boots an image, from the artifacts alone (no device, no TPM). Checked event by
event against OVMF + swtpm boots (tests/test_real_boot.py):

- PCR 4: the firmware's "Calling EFI Application from Boot Option" action and separator
  (TCG PC Client PFP 3.3.4.5), then the Authenticode digest of each EFI binary loaded:
  systemd-boot, the UKI, and the kernel the stub hands to LoadImage;
- PCR 5: separator, the GPT (UEFI_GPT_DATA: header and the used entries), and the two
  ExitBootServices actions;
- PCR 7: the Secure Boot state with no keys enrolled (SecureBoot=0, empty PK, KEK, db,
  dbx as UEFI_VARIABLE_DATA) and the separator;
- PCR 9: what the kernel's EFI stub measures: its load options and the initramfs
  (tagged events "LOADED_IMAGE::LoadOptions", "Linux initrd");
- PCR 11: each UKI section the stub measures, its name then its contents, in the stub's
  order (UAPI Group, "TPM PCR Measurements"); systemd-pcrphase is masked in the image;
- PCR 12: the command line as load options, measured by systemd-boot and by the stub.

PCRs 0-3 and 6 depend on the firmware build and the machine: they come from a golden
device (``reference.from_log``).
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path

import pefile

from edgefleet.attestation import eventlog
from edgefleet.attestation.reference import ReferenceEvent, ReferenceValues
from edgefleet.errors import BuildError
from edgefleet.image.uki import UkiParts

PREDICTED_PCRS = (4, 5, 7, 9, 11, 12)
GOLDEN_PCRS = (0, 1, 2, 3, 6)
# systemd-stub 252's unified sections, in the order it measures them (src/fundamental/tpm-pcr.c).
STUB_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
EV_EVENT_TAG, EV_EFI_ACTION = 0x00000006, 0x80000007
EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_GPT_EVENT = 0x80000001, 0x80000006
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
SECTOR = 512


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def authenticode(path: Path) -> bytes:
    """The PE image's Authenticode SHA-256 digest, as UEFI LoadImage measures it (EDK2
    ``Tcg2MeasurePeImage``): the headers without the checksum and the certificate-table
    entry, the sections in file order, then any data after them up to the certificates.
    Written here because virt-firmware's ``pe_authenticode_hash`` leaves out the data
    after the sections (objcopy's symbol table in systemd-boot and the UKI)."""
    try:
        pe = pefile.PE(str(path), fast_load=True)
    except pefile.PEFormatError as exc:
        raise BuildError(f"{path} is not a PE image: {exc}") from exc
    try:
        blob = pe.__data__
        checksum = pe.OPTIONAL_HEADER.get_file_offset() + 0x40
        headers = pe.OPTIONAL_HEADER.SizeOfHeaders
        digest = hashlib.sha256(blob[:checksum])
        if pe.OPTIONAL_HEADER.NumberOfRvaAndSizes > 4:
            security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[4]
            entry = security.get_file_offset()
            digest.update(blob[checksum + 4:entry])
            digest.update(blob[entry + 8:headers])
            certificates = security.Size
        else:
            digest.update(blob[checksum + 4:headers])
            certificates = 0
        hashed = headers
        for section in sorted(pe.sections, key=lambda s: s.PointerToRawData):
            if section.SizeOfRawData:
                start = section.PointerToRawData
                digest.update(blob[start:start + section.SizeOfRawData])
                hashed = max(hashed, start + section.SizeOfRawData)
        if len(blob) > hashed + certificates:
            digest.update(blob[hashed:len(blob) - certificates])
        return digest.digest()
    finally:
        pe.close()


def sections(uki: Path) -> list[tuple[str, bytes]]:
    """The UKI's unified sections as the stub measures them (VirtualSize bytes each)."""
    pe = pefile.PE(str(uki), fast_load=True)
    try:
        found = {}
        for section in pe.sections:
            name = section.Name.rstrip(b"\0").decode(errors="replace")
            data = section.get_data()[:section.Misc_VirtualSize]
            found[name] = data + b"\0" * (section.Misc_VirtualSize - len(data))
    finally:
        pe.close()
    return [(name, found[name]) for name in STUB_SECTIONS if found.get(name)]


def gpt_data(disk: Path) -> bytes:
    """UEFI_GPT_DATA (TCG PC Client PFP 10.4.5): the GPT header, the count of used entries
    and those entries, as the firmware measures the boot disk."""
    with open(disk, "rb") as handle:
        handle.seek(SECTOR)
        header = handle.read(SECTOR)
        if header[:8] != b"EFI PART":
            raise BuildError(f"{disk} has no GPT header")
        size, = struct.unpack_from("<I", header, 12)
        entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
        handle.seek(entries_lba * SECTOR)
        table = handle.read(count * entry_size)
    used = [table[i:i + entry_size] for i in range(0, len(table), entry_size) if table[i:i + 16] != b"\0" * 16]
    return header[:size] + struct.pack("<Q", len(used)) + b"".join(used)


def _variable(guid: uuid.UUID, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: GUID, name length (characters), data length, name, data."""
    encoded = name.encode("utf-16-le")
    return guid.bytes_le + struct.pack("<QQ", len(encoded) // 2, len(data)) + encoded + data


def load_options(cmdline: str) -> bytes:
    return cmdline.encode("utf-16-le") + b"\0\0"


def predict(*, bootloader: Path, uki: Path, parts: UkiParts, disk: Path) -> ReferenceValues:
    """Reference values of PREDICTED_PCRS for a boot of ``uki`` through ``bootloader``
    from ``disk``, on firmware with Secure Boot off and no keys enrolled."""
    separator = _sha(b"\0" * 4)
    app, ipl, sep = eventlog.EV_EFI_BOOT_SERVICES_APPLICATION, eventlog.EV_IPL, eventlog.EV_SEPARATOR
    options = _sha(load_options(parts.cmdline))
    events = [
        ReferenceEvent(4, EV_EFI_ACTION, _sha(b"Calling EFI Application from Boot Option"),
                       "Calling EFI Application from Boot Option", "firmware"),
        ReferenceEvent(4, sep, separator, "separator", "firmware"),
        ReferenceEvent(4, app, authenticode(bootloader), "systemd-boot EFI/BOOT/BOOTX64.EFI", "bootloader"),
        ReferenceEvent(4, app, authenticode(uki), f"UKI {uki.name}", "uki"),
        ReferenceEvent(4, app, authenticode(parts.linux), "kernel (the UKI's .linux)", "kernel"),
        ReferenceEvent(5, sep, separator, "separator", "firmware"),
        ReferenceEvent(5, EV_EFI_GPT_EVENT, _sha(gpt_data(disk)), "GPT of the boot disk", "firmware"),
        ReferenceEvent(5, EV_EFI_ACTION, _sha(b"Exit Boot Services Invocation"), "Exit Boot Services Invocation",
                       "firmware"),
        ReferenceEvent(5, EV_EFI_ACTION, _sha(b"Exit Boot Services Returned with Success"),
                       "Exit Boot Services Returned with Success", "firmware"),
        ReferenceEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, _sha(_variable(EFI_GLOBAL_VARIABLE, "SecureBoot", b"\0")),
                       "SecureBoot = 0", "secureboot"),
    ]
    for guid, name in ((EFI_GLOBAL_VARIABLE, "PK"), (EFI_GLOBAL_VARIABLE, "KEK"),
                       (EFI_IMAGE_SECURITY_DATABASE, "db"), (EFI_IMAGE_SECURITY_DATABASE, "dbx")):
        events.append(ReferenceEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, _sha(_variable(guid, name, b"")),
                                     f"{name} (empty)", "secureboot"))
    events += [
        ReferenceEvent(7, sep, separator, "separator", "firmware"),
        ReferenceEvent(9, EV_EVENT_TAG, options, "LOADED_IMAGE::LoadOptions", "kernel"),
        ReferenceEvent(9, EV_EVENT_TAG, _sha(parts.initrd.read_bytes()), "Linux initrd", "initrd"),
        ReferenceEvent(12, ipl, options, "command line (systemd-boot)", "bootloader"),
    ]
    for name, data in sections(uki):
        events.append(ReferenceEvent(11, ipl, _sha(name.encode() + b"\0"), f"{name} (name)", "uki"))
        events.append(ReferenceEvent(11, ipl, _sha(data), f"{name} (contents)", "uki"))
    events.append(ReferenceEvent(12, ipl, options, "command line (systemd-stub)", "uki"))
    return ReferenceValues(tuple(events), "sha256")
