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

Steps 8 and 9 are pure functions of the log's bytes (and the reference values), the same
for every device that booted one release on one firmware: their results are remembered by
the log's sha256 (``ContentMemo``), failures as well as successes, so a device's log is
parsed and replayed once per content, not once per quote. The comparison of the replayed
values with the values this quote reports still runs every time.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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
    Signature,
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


T = TypeVar("T")


class ContentMemo(Generic[T]):
    """Results of a pure function by a key made of content digests: bounded (the oldest
    use goes first), safe across threads. A result is computed outside the lock; two
    threads that miss together both compute it, and get equal results."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        value = compute()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


# A log's replay (or why it does not parse) and its comparison with reference values. An
# entry is a few hundred bytes; a fleet has a few logs per release and firmware.
_Outcome = tuple[Mapping[int, bytes] | None, str | None]
REPLAYS: ContentMemo[_Outcome] = ContentMemo(4096)
COMPARISONS: ContentMemo[tuple[tuple[str, ...], frozenset[int], str | None]] = ContentMemo(4096)


def _replay(log: bytes, digest: bytes, bank: str, pcrs: tuple[int, ...]) -> _Outcome:
    def compute() -> _Outcome:
        try:
            return eventlog.replay_bytes(log, bank, pcrs), None
        except InvalidRequest as exc:
            return None, exc.message

    return REPLAYS.get((digest, bank, pcrs), compute)


def _compare(log: bytes, digest: bytes, events: reference.ReferenceValues,
             pcrs: tuple[int, ...]) -> tuple[tuple[str, ...], frozenset[int], str | None]:
    """(mismatch messages, the PCRs they name, why the log does not parse)."""
    def compute() -> tuple[tuple[str, ...], frozenset[int], str | None]:
        try:
            found = reference.compare(eventlog.parse(log), events.only(pcrs))
        except InvalidRequest as exc:
            return (), frozenset(), exc.message
        return tuple(m.message for m in found), frozenset(m.pcr for m in found), None

    return COMPARISONS.get((digest, events, pcrs), compute)


def check_attestation_key(ak: PublicKey) -> list[str]:
    failures = []
    if not ak.has(AK_ATTRIBUTES):
        failures.append("ak_attributes: not a restricted, fixedTPM, fixedParent signing key created in the TPM")
    if ak.has(DECRYPT):
        failures.append("ak_attributes: a restricted signing key must not also decrypt")
    return failures


def _signature_ok(ak: PublicKey, attest: bytes, signature: bytes) -> str | None:
    return _signature_check(ak, attest, signature)[0]


def _signature_check(ak: PublicKey, attest: bytes, signature: bytes) -> tuple[str | None, Signature | None]:
    """(why the signature fails, or None; the parsed signature when it parsed)."""
    try:
        sig = parse_signature(signature)
    except InvalidRequest as exc:
        return f"signature_format: {exc.message}", None
    algorithm = _HASHES.get(sig.hash_alg)
    if algorithm is None:
        return f"signature_hash: {sig.hash_alg:#06x} is not accepted (sha256 or stronger)", sig
    try:
        if sig.algorithm in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS) and isinstance(ak.key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = padding.PKCS1v15() if sig.algorithm == TPM_ALG_RSASSA else \
                padding.PSS(mgf=padding.MGF1(algorithm()), salt_length=padding.PSS.AUTO)
            ak.key.verify(sig.rsa, attest, pad, algorithm())
        elif sig.algorithm == TPM_ALG_ECDSA and isinstance(ak.key, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(int.from_bytes(sig.ecc_r, "big"), int.from_bytes(sig.ecc_s, "big"))
            ak.key.verify(der, attest, ec.ECDSA(algorithm()))
        else:
            return "signature_algorithm: does not match the attestation key's type", sig
    except InvalidSignature:
        return "signature: does not verify with the enrolled attestation key", sig
    return None, sig


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
    pcrs = tuple(sorted(request.pcrs))
    digest = hashlib.sha256(evidence.event_log).digest()
    replayed, unreadable = _replay(evidence.event_log, digest, request.bank, pcrs)  # step 8
    if replayed is None:
        failures.append(f"event_log: {unreadable}")
    else:
        mismatched = [i for i in pcrs if replayed[i] != reported[i]]
        if mismatched:
            failures.append(f"event_log: does not replay to the quoted values of PCR {mismatched}")
    named: frozenset[int] = frozenset()
    if policy.events is not None and not failures:                              # step 9
        missing = sorted(set(policy.events.pcrs) - set(request.pcrs))
        if missing:
            failures.append(f"policy: PCR {missing} have reference values but were not quoted")
        messages, named, unreadable = _compare(evidence.event_log, digest, policy.events, pcrs)
        if unreadable is not None:
            failures.append(f"event_log: {unreadable}")
        failures += messages
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
    problem, signature = _signature_check(ak, evidence.attest, evidence.signature)  # step 2
    if problem:
        failures.append(problem)
    if failures or signature is None:
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
    if _pcr_digest(reported, tuple(sorted(request.pcrs)), signature.hash_alg) != quote.pcr_digest:   # step 6
        failures.append("pcr_digest: the reported PCR values do not hash to the quoted digest")
    failures += _counters(quote.clock_info, previous)                           # step 7
    return Verdict(tuple(failures), quote.clock_info, reported)
