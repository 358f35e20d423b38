"""TPM2_MakeCredential on the server, in software (TPM 2.0 Library Part 1, 24 "Credential
Protection"): a secret that only a TPM holding *both* the endorsement key and an object of
the given name can recover with TPM2_ActivateCredential. Enrollment uses it to prove that
the attestation key lives in the same TPM as the EK.

1. seed = random; encrypted with the EK (RSA-OAEP, label "IDENTITY");
2. symmetric key = KDFa(nameAlg, seed, "STORAGE", name); the credential, as a TPM2B, is
   encrypted with AES-CFB (zero IV) under it;
3. HMAC key = KDFa(nameAlg, seed, "INTEGRITY"); the outer HMAC covers encIdentity || name,
   so the TPM refuses to release it for an object of any other name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # CFB lives among the "decrepit" modes since cryptography 47; the TPM spec requires it
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from edgefleet.attestation.eventlog import DIGEST_SIZES, HASH_NAMES
from edgefleet.attestation.structures import DECRYPT, RESTRICTED, PublicKey
from edgefleet.errors import InvalidRequest

_OAEP_HASH: dict[int, type[hashes.HashAlgorithm]] = {0x000B: hashes.SHA256, 0x000C: hashes.SHA384}


def kdfa(name_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (Part 1, 11.4.10.2): HMAC in counter mode; the label includes its terminating zero."""
    digest_name = HASH_NAMES[name_alg]
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        message = struct.pack(">I", counter) + label + b"\0" + context_u + context_v + struct.pack(">I", bits)
        out += hmac.new(key, message, digest_name).digest()
    return out[: bits // 8]


def aes_cfb(key: bytes) -> Cipher[CFB]:
    """AES in CFB mode with a zero IV, as TPM credential protection uses it."""
    return Cipher(algorithms.AES(key), CFB(b"\0" * 16))


def make_credential(ek: PublicKey, credential: bytes, name: bytes, seed: bytes | None = None) -> tuple[bytes, bytes]:
    """(TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), marshalled, for TPM2_ActivateCredential.

    Raises:
        InvalidRequest: the EK is not a restricted RSA decryption key with an AES symmetric
            definition, or the credential is too long.
    """
    if not (isinstance(ek.key, rsa.RSAPublicKey) and ek.has(RESTRICTED | DECRYPT)):
        raise InvalidRequest("endorsement key must be a restricted RSA decryption key (ECC EKs are not "
                             "supported yet)", code="unsupported_ek")
    if ek.symmetric_bits not in (128, 256) or len(credential) > DIGEST_SIZES[ek.name_alg]:
        raise InvalidRequest("unsupported EK symmetric definition or credential size", code="unsupported_ek")
    digest_size = DIGEST_SIZES[ek.name_alg]
    seed = seed or os.urandom(digest_size)
    oaep_hash = _OAEP_HASH[ek.name_alg]
    encrypted_seed = ek.key.encrypt(seed, padding.OAEP(mgf=padding.MGF1(oaep_hash()), algorithm=oaep_hash(),
                                                        label=b"IDENTITY\0"))
    sym_key = kdfa(ek.name_alg, seed, b"STORAGE", name, b"", ek.symmetric_bits)
    plaintext = struct.pack(">H", len(credential)) + credential
    encryptor = aes_cfb(sym_key).encryptor()
    enc_identity = encryptor.update(plaintext) + encryptor.finalize()
    hmac_key = kdfa(ek.name_alg, seed, b"INTEGRITY", b"", b"", digest_size * 8)
    outer = hmac.new(hmac_key, enc_identity + name, HASH_NAMES[ek.name_alg]).digest()
    id_object = struct.pack(">H", len(outer)) + outer + enc_identity
    return struct.pack(">H", len(id_object)) + id_object, struct.pack(">H", len(encrypted_seed)) + encrypted_seed


def credential_digest(credential: bytes) -> str:
    """What the server stores instead of the credential itself."""
    return hashlib.sha256(credential).hexdigest()
