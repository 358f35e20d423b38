"""A real TPM 2.0 through tpm2-pytss (the tpm2-tss ESAPI), on any TCTI: ``device:/dev/tpmrm0``
on hardware, ``swtpm:host=...,port=...`` for the emulator. tpm2-pytss errors are translated
here and never leak past this module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SU, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMU_HA,
)

from edgefleet.errors import ConfigError

AkAlgorithm = Literal["ecc", "rsa"]
AK_ATTRIBUTES = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
                 | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH)
AK_TEMPLATES = {"ecc": "ecc256:ecdsa-sha256:null", "rsa": "rsa2048:rsassa-sha256:null"}


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
        self._ak: ESYS_TR | None = None
        self._ak_public = b""

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
