"""Quote verification: bytes, policy and time in, a verdict out. No I/O.

The steps, each recorded by name when it fails (the operator's log and event record get all
of them; the device learns only pass or fail):

1. the attestation key is a restricted signing key that never leaves its TPM
   (restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin; not decrypt), so its
   quotes can only cover structures the TPM itself produced;
2. the signature, parsed strictly, verifies over the attest bytes with that key;
3. the attest structure, parsed strictly (no trailing bytes, bounded sizes), is a quote
   (magic TPM_GENERATED_VALUE, type TPM_ST_ATTEST_QUOTE);
4. it carries exactly the single-use nonce the server issued;
5. it selects exactly the requested PCRs of the requested bank;
6. the reported PCR values hash to the quoted PCR digest;
7. reset and restart counters and the clock never go back;
8. the boot event log replays to exactly the reported PCR values;
9. the values satisfy the policy (reference measurements of the release the device should
   run, plus the hardware model's baseline); where the policy has reference values event
   by event, the log's events of those PCRs must be exactly the expected ones, and the
   first that differs is named.

Steps 1 to 3 gate the rest: evidence that is not authentic is not examined further.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edgefleet.attestation import eventlog, reference
from edgefleet.attestation.structures import (
    DECRYPT,
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SENSITIVE_DATA_ORIGIN,
    SIGN,
    TPM_ALG_ECDSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    ClockInfo,
    PcrSelection,
    PublicKey,
    parse_attest,
    parse_signature,
)
from edgefleet.errors import InvalidRequest

_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    eventlog.ALG_SHA256: hashes.SHA256, eventlog.ALG_SHA384: hashes.SHA384, eventlog.ALG_SHA512: hashes.SHA512,
}
AK_ATTRIBUTES = RESTRICTED | SIGN | FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN


@dataclass(frozen=True)
class QuoteRequest:
    """What the server asked the device to quote."""

    nonce: bytes
    pcrs: tuple[int, ...]
    bank: str = "sha256"


@dataclass(frozen=True)
class Evidence:
    """What the device sent back."""

    attest: bytes
    signature: bytes
    pcr_values: Mapping[int, bytes]
    event_log: bytes


@dataclass(frozen=True)
class Policy:
    """PCR values the device must show: the release's reference measurements plus the
    hardware model's baseline (e.g. firmware PCRs)."""

    expected: Mapping[int, bytes] = field(default_factory=dict)
    events: reference.ReferenceValues | None = None  # the expected events of some PCRs


@dataclass(frozen=True)
class Verdict:
    failures: tuple[str, ...]
    clock: ClockInfo | None = None
    pcr_values: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_attestation_key(ak: PublicKey) -> list[str]:
    failures = []
    if not ak.has(AK_ATTRIBUTES):
        failures.append("ak_attributes: not a restricted, fixedTPM, fixedParent signing key created in the TPM")
    if ak.has(DECRYPT):
        failures.append("ak_attributes: a restricted signing key must not also decrypt")
    return failures


def _signature_ok(ak: PublicKey, attest: bytes, signature: bytes) -> str | None:
    try:
        sig = parse_signature(signature)
    except InvalidRequest as exc:
        return f"signature_format: {exc.message}"
    algorithm = _HASHES.get(sig.hash_alg)
    if algorithm is None:
        return f"signature_hash: {sig.hash_alg:#06x} is not accepted (sha256 or stronger)"
    try:
        if sig.algorithm in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS) and isinstance(ak.key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = padding.PKCS1v15() if sig.algorithm == TPM_ALG_RSASSA else \
                padding.PSS(mgf=padding.MGF1(algorithm()), salt_length=padding.PSS.AUTO)
            ak.key.verify(sig.rsa, attest, pad, algorithm())
        elif sig.algorithm == TPM_ALG_ECDSA and isinstance(ak.key, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(int.from_bytes(sig.ecc_r, "big"), int.from_bytes(sig.ecc_s, "big"))
            ak.key.verify(der, attest, ec.ECDSA(algorithm()))
        else:
            return "signature_algorithm: does not match the attestation key's type"
    except InvalidSignature:
        return "signature: does not verify with the enrolled attestation key"
    return None


def _pcr_digest(values: Mapping[int, bytes], pcrs: tuple[int, ...], hash_alg: int) -> bytes:
    return hashlib.new(eventlog.HASH_NAMES[hash_alg], b"".join(values[i] for i in pcrs)).digest()


def _counters(clock: ClockInfo, previous: ClockInfo | None) -> list[str]:
    if previous is None:
        return []
    if clock.reset_count < previous.reset_count:
        return [f"counters: reset count went back ({previous.reset_count} -> {clock.reset_count})"]
    if clock.reset_count == previous.reset_count:
        if clock.restart_count < previous.restart_count:
            return [f"counters: restart count went back ({previous.restart_count} -> {clock.restart_count})"]
        if clock.restart_count == previous.restart_count and clock.clock < previous.clock:
            return [f"counters: clock went back ({previous.clock} -> {clock.clock})"]
    return []


def verify_quote(ak: PublicKey, request: QuoteRequest, evidence: Evidence, policy: Policy,
                 previous: ClockInfo | None = None) -> Verdict:
    """Check a quote, its event log and the policy; the verdict lists every failed check
    (empty means pass)."""
    verdict = check_quote(ak, request, evidence, previous)
    if not verdict.pcr_values:
        return verdict  # not authentic, or not the PCRs asked for: nothing further to examine
    failures = list(verdict.failures)
    reported = verdict.pcr_values
    try:                                                                        # step 8
        replayed = eventlog.replay_bytes(evidence.event_log, request.bank, request.pcrs)
        mismatched = [i for i in sorted(request.pcrs) if replayed[i] != reported[i]]
        if mismatched:
            failures.append(f"event_log: does not replay to the quoted values of PCR {mismatched}")
    except InvalidRequest as exc:
        failures.append(f"event_log: {exc.message}")
    named: set[int] = set()
    if policy.events is not None and not failures:                              # step 9
        missing = sorted(set(policy.events.pcrs) - set(request.pcrs))
        if missing:
            failures.append(f"policy: PCR {missing} have reference values but were not quoted")
        try:
            found = reference.compare(eventlog.parse(evidence.event_log), policy.events.only(request.pcrs))
        except InvalidRequest as exc:
            failures.append(f"event_log: {exc.message}")
        else:
            failures += [m.message for m in found]
            named = {m.pcr for m in found}
    for index, value in sorted(policy.expected.items()):
        if index not in named and reported.get(index) != value:
            failures.append(f"policy: PCR {index} is {reported.get(index, b'').hex() or 'not quoted'}, "
                            f"expected {value.hex()}")
    return Verdict(tuple(failures), verdict.clock, reported)


def check_quote(ak: PublicKey, request: QuoteRequest, evidence: Evidence,
                previous: ClockInfo | None = None) -> Verdict:
    """Steps 1 to 7: is this an authentic, fresh quote of exactly the requested PCRs?
    ``pcr_values`` in the verdict is set once the reported values could be examined."""
    failures = check_attestation_key(ak)                                        # step 1
    problem = _signature_ok(ak, evidence.attest, evidence.signature)            # step 2
    if problem:
        failures.append(problem)
    if failures:
        return Verdict(tuple(failures))
    try:
        quote = parse_attest(evidence.attest)                                   # step 3
    except InvalidRequest as exc:
        return Verdict((f"attest_format: {exc.message}",))
    if quote.magic != TPM_GENERATED_VALUE:
        return Verdict(("attest_magic: not TPM_GENERATED_VALUE (not produced by a TPM)",))
    if quote.type != TPM_ST_ATTEST_QUOTE:
        return Verdict(("attest_type: not a quote",))
    if quote.extra_data != request.nonce:                                       # step 4
        failures.append("nonce: the quote does not carry the nonce that was issued")
    bank = eventlog.BANKS[request.bank]
    wanted = (PcrSelection(bank, tuple(sorted(request.pcrs))),)
    if quote.selections != wanted:                                              # step 5
        failures.append(f"pcr_selection: quoted {quote.selections}, requested {wanted}")
    reported = {i: bytes(v) for i, v in evidence.pcr_values.items()}
    size = eventlog.DIGEST_SIZES[bank]
    if set(reported) != set(request.pcrs) or any(len(v) != size for v in reported.values()):
        failures.append("pcr_values: not exactly the requested PCRs of the requested bank")
        return Verdict(tuple(failures), quote.clock_info)
    sig_hash = parse_signature(evidence.signature).hash_alg
    if _pcr_digest(reported, tuple(sorted(request.pcrs)), sig_hash) != quote.pcr_digest:   # step 6
        failures.append("pcr_digest: the reported PCR values do not hash to the quoted digest")
    failures += _counters(quote.clock_info, previous)                           # step 7
    return Verdict(tuple(failures), quote.clock_info, reported)
