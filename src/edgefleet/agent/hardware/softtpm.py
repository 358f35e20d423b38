"""An INSECURE software TPM for the simulator and the demo's large fleets.

It produces byte-for-byte the structures a TPM 2.0 produces (TPMT_PUBLIC, TPMS_ATTEST,
TPMT_SIGNATURE), implements TPM2_ActivateCredential, PCR extend/read and reset counting,
so the real verifier and the real server code run unchanged. Its keys are files: anyone
who reads them can impersonate the device, and it claims fixedTPM without being a TPM.
It is never the default; a real device uses ``Tpm2`` on /dev/tpmrm0, and a server with
``ek_trust = "vendor"`` refuses it (it has no EK certificate).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import struct
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from edgefleet.attestation.credential import aes_cfb, kdfa
from edgefleet.attestation.eventlog import BANKS, DIGEST_SIZES
from edgefleet.attestation.structures import (
    DECRYPT,
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SENSITIVE_DATA_ORIGIN,
    SIGN,
    TPM_ALG_ECC,
    TPM_ALG_ECDSA,
    TPM_ALG_NULL,
    TPM_ALG_RSA,
    TPM_ECC_NIST_P256,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    USER_WITH_AUTH,
)
from edgefleet.errors import ConfigError
from edgefleet.util.atomic import atomic_write_bytes, atomic_write_json

log = logging.getLogger("edgefleet.agent")

SHA256 = BANKS["sha256"]
ADMIN_WITH_POLICY = 0x00000080
TPM_ALG_AES, TPM_ALG_CFB = 0x0006, 0x0043
# TCG EK Credential Profile, policy A: PolicySecret(TPM_RH_ENDORSEMENT)
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


def _tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class InsecureSoftwareTpm:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        log.warning("INSECURE software TPM in %s: keys are plain files; for simulators and demos only", directory)
        self._ek = self._key("ek.key", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self._ak = self._key("ak.key", lambda: ec.generate_private_key(ec.SECP256R1()))
        state = self._load_state()
        self.reset_count, self.restart_count = state.get("reset_count", 0), 0
        self._epoch = state.get("clock_ms", 0)
        self._pcrs = {bank: {i: b"\0" * DIGEST_SIZES[BANKS[bank]] for i in range(24)} for bank in ("sha1", "sha256")}

    def _key(self, name: str, make: object) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        path = self.directory / name
        if not path.exists():
            key = make()  # type: ignore[operator]
            atomic_write_bytes(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()), mode=0o600)
        # The TPM made this key itself; checking an RSA key's mathematics again on every load
        # costs tens of milliseconds, which a fleet of thousands of emulated TPMs pays at start.
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None,
                                                    unsafe_skip_rsa_key_validation=True)
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{path} is not a TPM key")
        return loaded

    def _load_state(self) -> dict[str, int]:
        try:
            data = json.loads((self.directory / "state.json").read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: int(v) for k, v in data.items() if isinstance(v, int)}

    # keys, as the TPM describes them (TPMT_PUBLIC)
    def endorsement_key(self) -> bytes:
        assert isinstance(self._ek, rsa.RSAPrivateKey)
        modulus = self._ek.public_key().public_numbers().n.to_bytes(256, "big")
        attributes = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT
        return (struct.pack(">HHI", TPM_ALG_RSA, SHA256, attributes) + _tpm2b(EK_POLICY)
                + struct.pack(">HHH", TPM_ALG_AES, 128, TPM_ALG_CFB) + struct.pack(">HHI", TPM_ALG_NULL, 2048, 0)
                + _tpm2b(modulus))

    def attestation_key(self) -> bytes:
        assert isinstance(self._ak, ec.EllipticCurvePrivateKey)
        numbers = self._ak.public_key().public_numbers()
        attributes = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN
        return (struct.pack(">HHI", TPM_ALG_ECC, SHA256, attributes) + _tpm2b(b"")
                + struct.pack(">HHHHH", TPM_ALG_NULL, TPM_ALG_ECDSA, SHA256, TPM_ECC_NIST_P256, TPM_ALG_NULL)
                + _tpm2b(numbers.x.to_bytes(32, "big")) + _tpm2b(numbers.y.to_bytes(32, "big")))

    def ek_certificate(self) -> bytes | None:
        return None  # no manufacturer vouches for a software TPM

    def _ak_name(self) -> bytes:
        return struct.pack(">H", SHA256) + hashlib.sha256(self.attestation_key()).digest()

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential: recover the credential only if it was made for this EK
        and this AK's name (Part 1, 24). Raises ConfigError like a refusing TPM."""
        assert isinstance(self._ek, rsa.RSAPrivateKey)
        try:
            seed = self._ek.decrypt(encrypted_secret[2:], padding.OAEP(
                mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\0"))
        except ValueError as exc:
            raise ConfigError("TPM refused: secret not for this EK") from exc
        blob = id_object[2:]
        size = struct.unpack(">H", blob[:2])[0]
        outer, enc_identity = blob[2:2 + size], blob[2 + size:]
        name = self._ak_name()
        hmac_key = kdfa(SHA256, seed, b"INTEGRITY", b"", b"", 256)
        if not hmac.compare_digest(hmac.new(hmac_key, enc_identity + name, "sha256").digest(), outer):
            raise ConfigError("TPM refused: credential not for this AK (integrity check failed)")
        decryptor = aes_cfb(kdfa(SHA256, seed, b"STORAGE", name, b"", 128)).decryptor()
        plain = decryptor.update(enc_identity) + decryptor.finalize()
        return plain[2:2 + struct.unpack(">H", plain[:2])[0]]

    # PCRs
    def extend_pcr(self, index: int, bank: str, digest: bytes) -> None:
        self._pcrs[bank][index] = hashlib.new(bank, self._pcrs[bank][index] + digest).digest()

    def read_pcrs(self, bank: str, pcrs: list[int]) -> dict[int, bytes]:
        return {i: self._pcrs[bank][i] for i in pcrs}

    def startup(self) -> None:
        """Power-on: PCRs back to zero, reset count up (persisted, like the TPM's NV)."""
        for bank, values in self._pcrs.items():
            for i in values:
                values[i] = b"\0" * DIGEST_SIZES[BANKS[bank]]
        self.reset_count += 1
        self.restart_count = 0
        atomic_write_json(self.directory / "state.json", {"reset_count": self.reset_count, "clock_ms": self._clock()})

    def _clock(self) -> int:
        return int(self._epoch + time.monotonic() * 1000)

    def quote(self, nonce: bytes, bank: str, pcrs: list[int]) -> tuple[bytes, bytes, dict[int, bytes]]:
        """TPMS_ATTEST of a quote and its TPMT_SIGNATURE (ECDSA-SHA256), as TPM2_Quote makes."""
        assert isinstance(self._ak, ec.EllipticCurvePrivateKey)
        values = self.read_pcrs(bank, sorted(pcrs))
        bitmap = bytearray(3)
        for i in pcrs:
            bitmap[i // 8] |= 1 << (i % 8)
        digest = hashlib.sha256(b"".join(values[i] for i in sorted(pcrs))).digest()
        attest = (struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE) + _tpm2b(self._ak_name())
                  + _tpm2b(nonce) + struct.pack(">QIIB", self._clock(), self.reset_count, self.restart_count, 1)
                  + struct.pack(">Q", 0x20240125) + struct.pack(">I", 1)
                  + struct.pack(">HB", BANKS[bank], 3) + bytes(bitmap) + _tpm2b(digest))
        r, s = decode_dss_signature(self._ak.sign(attest, ec.ECDSA(hashes.SHA256())))
        signature = (struct.pack(">HH", TPM_ALG_ECDSA, SHA256) + _tpm2b(r.to_bytes(32, "big"))
                     + _tpm2b(s.to_bytes(32, "big")))
        return attest, signature, values

