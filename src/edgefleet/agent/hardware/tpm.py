"""A real TPM 2.0 through tpm2-pytss (the tpm2-tss ESAPI), on any TCTI: ``device:/dev/tpmrm0``
on hardware, ``swtpm:host=...,port=...`` for the emulator. tpm2-pytss errors are translated
here and never leak past this module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HT, TPM2_RH, TPM2_SE, TPM2_SU, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2_HANDLE,
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMU_HA,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from edgefleet.errors import ConfigError

AkAlgorithm = Literal["ecc", "rsa"]
# noDA: the AK has no secret (empty auth), so dictionary-attack protection guards nothing,
# while a TPM counts every non-orderly shutdown (a power cut) as a failed try and, after
# maxTries of them (3 on swtpm), refuses DA-protected keys for recoveryTime per try: the
# VM power-cut rounds locked a device out of attestation that way.
AK_ATTRIBUTES = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
                 | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
                 | TPMA_OBJECT.NODA)
AK_TEMPLATES = {"ecc": "ecc256:ecdsa-sha256:null", "rsa": "rsa2048:rsassa-sha256:null"}
EK_CERT_NV_INDEX = 0x01C00002
NV_CHUNK = 512


class TpmError(ConfigError):
    code = "tpm_error"


def _selection(bank: str, pcrs: list[int]) -> TPML_PCR_SELECTION:
    return TPML_PCR_SELECTION.parse(f"{bank}:{','.join(str(i) for i in sorted(pcrs))}")


class Tpm2:
    """One TPM. The attestation key is a primary key in the endorsement hierarchy: the TPM
    derives the same key from its seed and the template every time, so nothing needs to be
    stored, and it can never exist outside this TPM (fixedTPM)."""

    def __init__(self, tcti: str, ak_algorithm: AkAlgorithm = "ecc") -> None:
        name, _, config = tcti.partition(":")
        self._tcti = (name, config or None)
        self.ak_algorithm = ak_algorithm
        self._ak_public = b""
        self._ek_public = b""

    @contextmanager
    def _esapi(self) -> Iterator[ESAPI]:
        try:
            with ESAPI(TCTILdr(*self._tcti)) as ectx:
                yield ectx
        except TSS2_Exception as exc:
            raise TpmError(f"TPM command failed: {exc}") from exc

    def _load_ak(self, ectx: ESAPI) -> ESYS_TR:
        template = TPM2B_PUBLIC.parse(AK_TEMPLATES[self.ak_algorithm], objectAttributes=AK_ATTRIBUTES)
        handle, public, _, _, _ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
        self._ak_public = public.publicArea.marshal()
        return handle

    def attestation_key(self) -> bytes:
        """The AK as a marshalled TPMT_PUBLIC."""
        with self._esapi() as ectx:
            handle = self._load_ak(ectx)
            ectx.flush_context(handle)
        return self._ak_public

    def quote(self, nonce: bytes, bank: str, pcrs: list[int]) -> tuple[bytes, bytes, dict[int, bytes]]:
        """(TPMS_ATTEST, TPMT_SIGNATURE, PCR values) for a quote over ``pcrs`` of ``bank``."""
        with self._esapi() as ectx:
            handle = self._load_ak(ectx)
            try:
                attest, signature = ectx.quote(handle, _selection(bank, pcrs), TPM2B_DATA(nonce),
                                               TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
            finally:
                ectx.flush_context(handle)
            values = self._read(ectx, bank, pcrs)
        return bytes(attest), signature.marshal(), values

    @staticmethod
    def _read(ectx: ESAPI, bank: str, pcrs: list[int]) -> dict[int, bytes]:
        values: dict[int, bytes] = {}
        remaining = sorted(pcrs)
        while remaining:  # TPM2_PCR_Read returns at most 8 digests per call
            _, selection, digests = ectx.pcr_read(_selection(bank, remaining))
            got = [i for s in selection for i in range(s.sizeofSelect * 8) if s.pcrSelect[i // 8] & (1 << i % 8)]
            values.update(zip(got, (bytes(d) for d in digests), strict=True))
            remaining = [i for i in remaining if i not in values]
        return values

    def read_pcrs(self, bank: str, pcrs: list[int]) -> dict[int, bytes]:
        with self._esapi() as ectx:
            return self._read(ectx, bank, pcrs)

    def _load_ek(self, ectx: ESAPI) -> ESYS_TR:
        # The TCG default EK template (or the one the manufacturer left in NV), so the key
        # matches the EK certificate; it is re-derived from the endorsement seed each time.
        _, template = create_ek_template("EK-RSA2048", _PresentOnly(ectx))
        handle, public, _, _, _ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
        self._ek_public = public.publicArea.marshal()
        return handle

    def endorsement_key(self) -> bytes:
        """The EK as a marshalled TPMT_PUBLIC."""
        with self._esapi() as ectx:
            ectx.flush_context(self._load_ek(ectx))
        return self._ek_public

    def ek_certificate(self) -> bytes | None:
        """The manufacturer's EK certificate from NV index 0x01C00002 (TCG EK Credential
        Profile, RSA 2048 EK), or None when the TPM has none."""
        with self._esapi() as ectx:
            if EK_CERT_NV_INDEX not in _nv_indexes(ectx):  # the TPM carries no EK certificate
                return None
            index = ectx.tr_from_tpmpublic(TPM2_HANDLE(EK_CERT_NV_INDEX))
            public, _ = ectx.nv_read_public(index)
            size = public.nvPublic.dataSize
            data = b""
            while len(data) < size:  # NV reads are limited to TPM2_MAX_NV_BUFFER_SIZE
                chunk = min(NV_CHUNK, size - len(data))
                data += bytes(ectx.nv_read(index, chunk, len(data), auth_handle=index))
            return data

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with this TPM's AK and EK: returns the credential only if
        the server made it for this EK *and* this AK's name.

        Raises:
            TpmError: the TPM refused (another AK's name, another TPM's EK, tampered blob).
        """
        with self._esapi() as ectx:
            ak, ek = self._load_ak(ectx), self._load_ek(ectx)
            session = ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                              TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
            try:
                # The EK's policy: PolicySecret(TPM_RH_ENDORSEMENT) (TCG EK Credential Profile).
                ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
                credential = ectx.activate_credential(
                    ak, ek, TPM2B_ID_OBJECT.unmarshal(id_object)[0],
                    TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)[0],
                    session1=ESYS_TR.PASSWORD, session2=session,
                )
            finally:
                ectx.flush_context(session)
                ectx.flush_context(ek)
                ectx.flush_context(ak)
        return bytes(credential)

    def startup(self) -> None:
        """TPM2_Startup(CLEAR): what platform firmware sends after power-on (the emulated
        device's firmware step does it after power-cycling swtpm; the agent never does)."""
        with self._esapi() as ectx:
            ectx.startup(TPM2_SU.CLEAR)

    def extend_pcr(self, index: int, bank: str, digest: bytes) -> None:
        alg = {"sha1": TPM2_ALG.SHA1, "sha256": TPM2_ALG.SHA256}[bank]
        with self._esapi() as ectx:
            ectx.pcr_extend(ESYS_TR.parse(f"pcr{index}"), TPML_DIGEST_VALUES(
                [TPMT_HA(hashAlg=alg, digest=TPMU_HA(**{bank: digest}))]))


def _nv_indexes(ectx: ESAPI) -> set[int]:
    """The NV indexes the TPM defines. Asked first, so that an absent one (a TPM without an
    EK certificate or template, as swtpm) is not an error tpm2-tss logs on every attempt."""
    found: set[int] = set()
    start, more = TPM2_HT.NV_INDEX << 24, True
    while more:
        more, data = ectx.get_capability(TPM2_CAP.HANDLES, start, 256)
        handles = [int(h) for h in data.data.handles]
        found.update(handles)
        if not handles:
            break
        start = max(handles) + 1
    return found


class _PresentOnly:
    """tpm2-pytss's NV reader for the EK template, asking only for indexes that exist."""

    def __init__(self, ectx: ESAPI) -> None:
        self._read, self._present = NVReadEK(ectx), _nv_indexes(ectx)

    def __call__(self, index: int | TPM2_RH) -> bytes:
        if int(index) not in self._present:
            raise NoSuchIndex(index)
        data: bytes = self._read(index)
        return data
