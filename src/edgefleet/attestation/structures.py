"""TPM 2.0 wire structures (TPM 2.0 Library, Part 2), parsed strictly: big-endian, every
size checked against what remains, no trailing bytes, bounded lengths. Only what
attestation needs: TPMS_ATTEST (quote), TPMT_SIGNATURE (RSASSA, RSAPSS, ECDSA) and
TPMT_PUBLIC (RSA and ECC keys)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgefleet.attestation._wire import MAX_STRUCTURE, Reader
from edgefleet.attestation.eventlog import DIGEST_SIZES, HASH_NAMES
from edgefleet.errors import InvalidRequest

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_RSA, TPM_ALG_ECC, TPM_ALG_NULL = 0x0001, 0x0023, 0x0010
TPM_ALG_RSASSA, TPM_ALG_RSAPSS, TPM_ALG_ECDSA = 0x0014, 0x0016, 0x0018
TPM_ECC_NIST_P256, TPM_ECC_NIST_P384 = 0x0003, 0x0004
CURVES: dict[int, ec.EllipticCurve] = {TPM_ECC_NIST_P256: ec.SECP256R1(), TPM_ECC_NIST_P384: ec.SECP384R1()}

# TPMA_OBJECT bits (Part 2, 8.3)
FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN = 0x00000002, 0x00000010, 0x00000020
USER_WITH_AUTH, RESTRICTED, DECRYPT, SIGN = 0x00000040, 0x00010000, 0x00020000, 0x00040000



@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class PcrSelection:
    bank: int  # hash algorithm id
    pcrs: tuple[int, ...]


@dataclass(frozen=True)
class Quote:
    """A parsed TPMS_ATTEST of type quote."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


_U16 = struct.Struct(">H")
_CLOCK_INFO = struct.Struct(">QIIBQ")  # clock, resetCount, restartCount, safe; then firmwareVersion
_SELECTION = struct.Struct(">HB")  # hash algorithm, size of the select bitmap


def _attest_error(message: str) -> InvalidRequest:
    return InvalidRequest(f"Attest: {message}", code="bad_attest")


def _sized(data: bytes, at: int, limit: int, error: Callable[[str], InvalidRequest]) -> tuple[bytes, int]:
    """A TPM2B at ``at`` (a big-endian size, then that many bytes) and where it ends,
    refused like ``Reader.tpm2b``."""
    if at + 2 > len(data):
        raise error(f"truncated at byte {at} (wanted 2 more)")
    (size,) = _U16.unpack_from(data, at)
    if size > limit:
        raise error(f"a {size}-byte field is over its {limit}-byte bound")
    if at + 2 + size > len(data):
        raise error(f"truncated at byte {at + 2} (wanted {size} more)")
    return data[at + 2:at + 2 + size], at + 2 + size


def parse_attest(data: bytes) -> Quote:
    """Parse a TPMS_ATTEST; refuses anything but a well-formed quote. Read with offsets
    and ``unpack_from`` (every quote of every check-in passes here), bounded like
    ``Reader``: nothing is read past the end, and trailing bytes are refused."""
    end = len(data)
    if end > MAX_STRUCTURE:
        raise _attest_error(f"{end} bytes is over the {MAX_STRUCTURE} byte bound")

    if end < 6:
        raise _attest_error("truncated at byte 0 (wanted 6 more)")
    magic, kind = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:6], "big")
    signer, at = _sized(data, 6, 1024, _attest_error)
    extra, at = _sized(data, at, 64, _attest_error)
    if at + _CLOCK_INFO.size > end:
        raise _attest_error(f"truncated at byte {at} (wanted {_CLOCK_INFO.size} more)")
    ticks, resets, restarts, safe, firmware = _CLOCK_INFO.unpack_from(data, at)
    at += _CLOCK_INFO.size
    if kind != TPM_ST_ATTEST_QUOTE:
        # Other attestation types (certify, time, ...) have another layout: a signed
        # structure that is not a quote must never be read as one.
        raise _attest_error(f"type {kind:#06x} is not a quote")
    if at + 4 > end:
        raise _attest_error(f"truncated at byte {at} (wanted 4 more)")
    count = int.from_bytes(data[at:at + 4], "big")
    at += 4
    if count > 16:
        raise _attest_error(f"{count} PCR selections")
    selections = []
    for _ in range(count):
        if at + _SELECTION.size > end:
            raise _attest_error(f"truncated at byte {at} (wanted {_SELECTION.size} more)")
        bank, size = _SELECTION.unpack_from(data, at)
        at += _SELECTION.size
        if size > 4:
            raise _attest_error(f"PCR select of {size} bytes")
        if at + size > end:
            raise _attest_error(f"truncated at byte {at} (wanted {size} more)")
        bits = int.from_bytes(data[at:at + size], "little")
        at += size
        selections.append(PcrSelection(bank, tuple(i for i in range(size * 8) if bits >> i & 1)))
    digest, at = _sized(data, at, 64, _attest_error)
    if at != end:
        raise _attest_error(f"{end - at} trailing bytes")
    return Quote(magic, kind, signer, extra, ClockInfo(ticks, resets, restarts, bool(safe)), firmware,
                 tuple(selections), digest)


_QUOTE_HEADER = struct.Struct(">IH").pack(TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE)


@lru_cache(maxsize=64)
def _selection_bytes(bank: int, pcrs: tuple[int, ...]) -> bytes | None:
    if pcrs and max(pcrs) > 31:
        return None
    size = max(3, (max(pcrs, default=0) + 8) // 8)
    bits = sum(1 << i for i in set(pcrs))
    return struct.pack(">IHB", 1, bank, size) + bits.to_bytes(size, "little")


def quote_tail(bank: int, pcrs: tuple[int, ...], pcr_digest: bytes) -> bytes | None:
    """The bytes a quote of exactly these PCRs (one selection, the TPM's usual 3-byte
    bitmap or wider) over values hashing to ``pcr_digest`` ends with; None where no such
    quote parses (PCR past 31, or a digest over its bound)."""
    selection = _selection_bytes(bank, pcrs)
    if selection is None or len(pcr_digest) > 64:
        return None
    return selection + _U16.pack(len(pcr_digest)) + pcr_digest


def match_quote(data: bytes, nonce: bytes, tail: bytes) -> ClockInfo | None:
    """The clock of ``data`` when it is exactly a quote carrying ``nonce`` and ending with
    ``tail`` (``quote_tail``), read in a few comparisons; None otherwise. What it
    accepts, ``parse_attest`` accepts with that nonce, selection and digest; anything else
    goes to ``parse_attest``, which says precisely what is wrong."""
    end = len(data)
    if end > MAX_STRUCTURE or end < 8 or not data.startswith(_QUOTE_HEADER) or len(nonce) > 64:
        return None
    (signer,) = _U16.unpack_from(data, 6)
    at = 8 + signer
    if signer > 1024 or not data.startswith(_U16.pack(len(nonce)) + nonce, at):
        return None
    at += 2 + len(nonce)
    if at + _CLOCK_INFO.size + len(tail) != end or not data.endswith(tail):
        return None
    ticks, resets, restarts, safe, _ = _CLOCK_INFO.unpack_from(data, at)
    return ClockInfo(ticks, resets, restarts, bool(safe))


@dataclass(frozen=True)
class Signature:
    algorithm: int
    hash_alg: int
    rsa: bytes = b""
    ecc_r: bytes = b""
    ecc_s: bytes = b""


def _signature_error(message: str) -> InvalidRequest:
    return InvalidRequest(f"Signature: {message}", code="bad_signature")


_SIGNATURE_BOUNDS = {TPM_ALG_RSASSA: 512, TPM_ALG_RSAPSS: 512, TPM_ALG_ECDSA: 66}


def parse_signature(data: bytes) -> Signature:
    """Parse a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA), with offsets like
    ``parse_attest``: bounded, nothing read past the end, trailing bytes refused."""
    end = len(data)
    if end > MAX_STRUCTURE:
        raise _signature_error(f"{end} bytes is over the {MAX_STRUCTURE} byte bound")
    if end < 2:
        raise _signature_error("truncated at byte 0 (wanted 2 more)")
    (alg,) = _U16.unpack_from(data, 0)
    limit = _SIGNATURE_BOUNDS.get(alg)
    if limit is None:
        raise _signature_error(f"signature algorithm {alg:#06x} is not supported")
    if end < 4:
        raise _signature_error("truncated at byte 2 (wanted 2 more)")
    (hash_alg,) = _U16.unpack_from(data, 2)
    first, at = _sized(data, 4, limit, _signature_error)
    if alg == TPM_ALG_ECDSA:
        second, at = _sized(data, at, limit, _signature_error)
        sig = Signature(alg, hash_alg, ecc_r=first, ecc_s=second)
    else:
        sig = Signature(alg, hash_alg, rsa=first)
    if at != end:
        raise _signature_error(f"{end - at} trailing bytes")
    if hash_alg not in DIGEST_SIZES:
        raise _signature_error(f"hash algorithm {hash_alg:#06x}")
    return sig


@dataclass(frozen=True)
class PublicKey:
    """A parsed TPMT_PUBLIC (the AK or EK as the TPM describes it)."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    scheme: int
    scheme_hash: int
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    raw: bytes
    symmetric_bits: int = 0  # AES key bits of a storage key (the EK), 0 if none

    @property
    def name(self) -> bytes:
        """The TPM object name: nameAlg || H_nameAlg(TPMT_PUBLIC)."""
        return struct.pack(">H", self.name_alg) + hashlib.new(HASH_NAMES[self.name_alg], self.raw).digest()

    def has(self, attributes: int) -> bool:
        return self.attributes & attributes == attributes


def _symmetric(r: Reader) -> int:
    """Read a TPMT_SYM_DEF_OBJECT; returns its key bits (0 for TPM_ALG_NULL)."""
    if r.u16() == TPM_ALG_NULL:
        return 0
    bits = r.u16()
    r.u16()  # mode
    return bits


def parse_public(data: bytes) -> PublicKey:
    """Parse a TPMT_PUBLIC (or a TPM2B_PUBLIC: a size prefix is accepted and checked)."""
    if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == len(data) - 2:
        data = data[2:]
    r = Reader(data, "Public")
    kind, name_alg, attributes = r.u16(), r.u16(), r.u32()
    if name_alg not in DIGEST_SIZES:
        raise r.error(f"name algorithm {name_alg:#06x}")
    policy = r.tpm2b(64)
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if kind == TPM_ALG_RSA:
        symmetric = _symmetric(r)
        scheme = r.u16()
        scheme_hash = r.u16() if scheme != TPM_ALG_NULL else TPM_ALG_NULL
        bits, exponent = r.u16(), r.u32()
        modulus = r.tpm2b(512)
        if bits < 2048 or len(modulus) * 8 != bits:
            raise r.error(f"RSA key of {bits} bits")
        key = rsa.RSAPublicNumbers(exponent or 65537, int.from_bytes(modulus, "big")).public_key()
    elif kind == TPM_ALG_ECC:
        symmetric = _symmetric(r)
        scheme = r.u16()
        scheme_hash = r.u16() if scheme != TPM_ALG_NULL else TPM_ALG_NULL
        curve_id = r.u16()
        if r.u16() != TPM_ALG_NULL:  # KDF scheme
            r.u16()
        x, y = r.tpm2b(66), r.tpm2b(66)
        curve = CURVES.get(curve_id)
        if curve is None:
            raise r.error(f"curve {curve_id:#06x}")
        try:
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve).public_key()
        except ValueError as exc:
            raise r.error("point not on the curve") from exc
    else:
        raise r.error(f"key type {kind:#06x}")
    r.end()
    return PublicKey(kind, name_alg, attributes, policy, scheme, scheme_hash, key, data, symmetric)
