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
the log's exact content (``LogMemo``), failures as well as successes, so a device's log is
parsed and replayed once per content, not once per quote. The comparison of the replayed
values with the values this quote reports still runs every time.

Steps 3 to 6 first try ``match_quote``: the server knows the nonce, the selection and (from
the reported values) the digest a good quote must carry, so a good quote is recognised in a
few byte comparisons; anything else is parsed in full and every difference named.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Generic, NamedTuple, TypeVar, cast

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
    match_quote,
    parse_attest,
    parse_signature,
    quote_tail,
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
    hardware model's baseline (e.g. firmware PCRs). Build one per release and hardware
    model and reuse it: what every quote compares against is prepared once."""

    expected: Mapping[int, bytes] = field(default_factory=dict)
    events: reference.ReferenceValues | None = None  # the expected events of some PCRs

    @cached_property
    def expected_in_order(self) -> tuple[tuple[int, bytes], ...]:
        return tuple(sorted(self.expected.items()))

    @cached_property
    def _expected_columns(self) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
        return tuple(i for i, _ in self.expected_in_order), tuple(v for _, v in self.expected_in_order)

    def all_expected(self, reported: Mapping[int, bytes]) -> bool:
        """Whether ``reported`` shows every expected value (one comparison)."""
        indices, values = self._expected_columns
        return tuple(map(reported.get, indices)) == values


@dataclass(frozen=True)
class Verdict:
    failures: tuple[str, ...]
    clock: ClockInfo | None = None
    pcr_values: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


T = TypeVar("T")


class LogMemo(Generic[T]):
    """Results of a pure function of an event log (and a small key), remembered by the
    log's exact bytes: a sample of the log (its length and three 32-byte windows) finds a
    bucket, and only a byte-for-byte equal log hits, so no collision of a digest or a
    sample can hand one log another's verdict. Bounded in entries and in bytes held (the
    oldest use goes first), a bucket in entries too (logs made to share a sample only
    evict each other); safe across threads. A result is computed outside the lock; two
    threads that miss together both compute it, and get equal results."""

    BUCKET = 4

    def __init__(self, entries: int, max_bytes: int) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._buckets: OrderedDict[Hashable, list[tuple[bytes, T]]] = OrderedDict()
        self._lock = threading.Lock()
        self._count = self._bytes = 0
        self.hits = self.misses = 0

    def get(self, log: bytes, key: Hashable, compute: Callable[[], T]) -> T:
        size, middle = len(log), len(log) // 2
        probe = (size, log[:32], log[middle:middle + 32], log[-32:], key)
        with self._lock:
            bucket = self._buckets.get(probe)
            if bucket is not None:
                for stored, value in bucket:
                    if stored == log:
                        self._buckets.move_to_end(probe)
                        self.hits += 1
                        return value
            self.misses += 1
        value = compute()
        if size > self.max_bytes:
            return value
        with self._lock:
            bucket = self._buckets.setdefault(probe, [])
            self._buckets.move_to_end(probe)
            bucket.append((log, value))
            self._count += 1
            self._bytes += size
            if len(bucket) > self.BUCKET:
                self._forget(bucket.pop(0))
            while self._count > self.entries or self._bytes > self.max_bytes:
                _, oldest = self._buckets.popitem(last=False)
                for entry in oldest:
                    self._forget(entry)
        return value

    def __len__(self) -> int:
        return self._count

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def _forget(self, entry: tuple[bytes, T]) -> None:
        self._count -= 1
        self._bytes -= len(entry[0])

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._count = self._bytes = self.hits = self.misses = 0


class _LogOutcome(NamedTuple):
    """What a log shows for the quoted PCRs of one bank, against one set of reference
    values: computed once per log content, never per quote."""

    replayed: Mapping[int, bytes] | None  # the quoted PCRs' values
    unreadable: str | None              # why the log does not replay
    mismatches: tuple[str, ...]         # differences from the reference events
    named: frozenset[int]               # the PCRs those differences name
    incomparable: str | None            # why the log could not be compared with them


# A fleet has a few logs per release and firmware; an entry is the log (a few KB, held by
# reference) and a few hundred bytes of outcome.
LOGS: LogMemo[_LogOutcome] = LogMemo(4096, 64 * 1024 * 1024)


def _examine(log: bytes, bank: str, pcrs: tuple[int, ...], events: reference.ReferenceValues | None) -> _LogOutcome:
    """Steps 8 and 9 for one log content: its replay, and its comparison with ``events``."""
    def compute() -> _LogOutcome:
        if events is None:
            try:
                return _LogOutcome(eventlog.replay_bytes(log, bank, pcrs), None, (), frozenset(), None)
            except InvalidRequest as exc:
                return _LogOutcome(None, exc.message, (), frozenset(), None)
        try:  # parsed once for both steps (replay_bytes reads with the same scanner)
            parsed = eventlog.parse(log)
        except InvalidRequest as exc:
            return _LogOutcome(None, exc.message, (), frozenset(), exc.message)
        replayed: Mapping[int, bytes] | None = None
        unreadable = None
        try:
            replayed = eventlog.replay(parsed, bank, pcrs)
        except InvalidRequest as exc:
            unreadable = exc.message
        try:
            found = reference.compare(parsed, events.only(pcrs))
        except InvalidRequest as exc:
            return _LogOutcome(replayed, unreadable, (), frozenset(), exc.message)
        return _LogOutcome(replayed, unreadable, tuple(m.message for m in found),
                           frozenset(m.pcr for m in found), None)

    return LOGS.get(log, (bank, pcrs, None if events is None else events.digest), compute)


def check_attestation_key(ak: PublicKey) -> list[str]:
    failures = []
    if not ak.has(AK_ATTRIBUTES):
        failures.append("ak_attributes: not a restricted, fixedTPM, fixedParent signing key created in the TPM")
    if ak.has(DECRYPT):
        failures.append("ak_attributes: a restricted signing key must not also decrypt")
    return failures


@lru_cache(maxsize=16)
def _scheme(algorithm: int, hash_alg: int) -> tuple[padding.AsymmetricPadding | ec.ECDSA, hashes.HashAlgorithm]:
    """The padding (or ECDSA scheme) and hash a TPM signature names, built once."""
    digest = _HASHES[hash_alg]()
    if algorithm == TPM_ALG_RSASSA:
        return padding.PKCS1v15(), digest
    if algorithm == TPM_ALG_RSAPSS:
        return padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO), digest
    return ec.ECDSA(digest), digest


@lru_cache(maxsize=8)
def _is_rsa(key_type: type) -> bool:
    """An RSA key (else an EC key: a PublicKey holds one of the two); asked of the key's
    class once, not of every key (an ABC check costs a microsecond)."""
    return issubclass(key_type, rsa.RSAPublicKey)


def _signature_ok(ak: PublicKey, attest: bytes, signature: bytes) -> str | None:
    return _signature_check(ak, attest, signature)[0]


def _signature_check(ak: PublicKey, attest: bytes, signature: bytes) -> tuple[str | None, Signature | None]:
    """(why the signature fails, or None; the parsed signature when it parsed)."""
    try:
        sig = parse_signature(signature)
    except InvalidRequest as exc:
        return f"signature_format: {exc.message}", None
    if sig.hash_alg not in _HASHES:
        return f"signature_hash: {sig.hash_alg:#06x} is not accepted (sha256 or stronger)", sig
    scheme, digest = _scheme(sig.algorithm, sig.hash_alg)
    is_rsa = _is_rsa(type(ak.key))
    try:
        if sig.algorithm != TPM_ALG_ECDSA and is_rsa:
            cast(rsa.RSAPublicKey, ak.key).verify(sig.rsa, attest, cast(padding.AsymmetricPadding, scheme), digest)
        elif sig.algorithm == TPM_ALG_ECDSA and not is_rsa:
            der = encode_dss_signature(int.from_bytes(sig.ecc_r, "big"), int.from_bytes(sig.ecc_s, "big"))
            cast(ec.EllipticCurvePublicKey, ak.key).verify(der, attest, cast(ec.ECDSA, scheme))
        else:
            return "signature_algorithm: does not match the attestation key's type", sig
    except InvalidSignature:
        return "signature: does not verify with the enrolled attestation key", sig
    return None, sig


def _pcr_digest(values: Mapping[int, bytes], pcrs: tuple[int, ...], hash_alg: int) -> bytes:
    digest: bytes = eventlog.HASH_FUNCTIONS[hash_alg](b"".join(map(values.__getitem__, pcrs))).digest()
    return digest


class _Selection(NamedTuple):
    """A request's PCR selection, prepared once per bank and PCR list."""

    pcrs: tuple[int, ...]  # sorted
    wanted: tuple[PcrSelection, ...]
    pcr_set: frozenset[int]
    digest_sizes: set[int]  # what the reported values' lengths must be, as a set
    distinct: bool  # no PCR asked for twice (a quote never selects one twice)


@lru_cache(maxsize=64)
def _selection(bank_name: str, pcrs: tuple[int, ...]) -> _Selection:
    bank = eventlog.BANKS[bank_name]
    ordered = tuple(sorted(pcrs))
    size = eventlog.DIGEST_SIZES[bank]
    return _Selection(ordered, (PcrSelection(bank, ordered),), frozenset(pcrs), {size} if pcrs else set(),
                      len(set(pcrs)) == len(pcrs))


def _exactly_requested(reported: Mapping[int, bytes], selection: _Selection) -> bool:
    """The reported values are exactly the requested PCRs, each a digest of the requested bank."""
    return reported.keys() == selection.pcr_set and set(map(len, reported.values())) == selection.digest_sizes


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
    failures, clock, reported = _check(ak, request, evidence, previous)
    if not reported:
        return Verdict(tuple(failures), clock)  # not authentic, or not the PCRs asked for: nothing further
    pcrs = _selection(request.bank, request.pcrs).pcrs
    outcome = _examine(evidence.event_log, request.bank, pcrs, policy.events)        # step 8
    if not evidence.event_log:
        failures.append("event_log: none sent (the device found no boot event log): what booted cannot be checked")
    elif outcome.replayed is None:
        failures.append(f"event_log: {outcome.unreadable}")
    elif outcome.replayed != reported:
        mismatched = [i for i in pcrs if outcome.replayed[i] != reported[i]]
        failures.append(f"event_log: does not replay to the quoted values of PCR {mismatched}")
    named: frozenset[int] = frozenset()
    if policy.events is not None and not failures:                                    # step 9
        missing = _unquoted(policy.events.pcrs, pcrs)
        if missing:
            failures.append(f"policy: PCR {list(missing)} have reference values but were not quoted")
        named = outcome.named
        if outcome.incomparable is not None:
            failures.append(f"event_log: {outcome.incomparable}")
        failures += outcome.mismatches
    if not policy.all_expected(reported):
        for index, value in policy.expected_in_order:
            if index not in named and reported.get(index) != value:
                failures.append(f"policy: PCR {index} is {reported.get(index, b'').hex() or 'not quoted'}, "
                                f"expected {value.hex()}")
    return Verdict(tuple(failures), clock, reported)


@lru_cache(maxsize=64)
def _unquoted(referenced: tuple[int, ...], quoted: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(referenced) - set(quoted)))


def check_quote(ak: PublicKey, request: QuoteRequest, evidence: Evidence,
                previous: ClockInfo | None = None) -> Verdict:
    """Steps 1 to 7: is this an authentic, fresh quote of exactly the requested PCRs?
    ``pcr_values`` in the verdict is set once the reported values could be examined."""
    failures, clock, reported = _check(ak, request, evidence, previous)
    return Verdict(tuple(failures), clock, reported or {})


def _check(ak: PublicKey, request: QuoteRequest, evidence: Evidence,
           previous: ClockInfo | None) -> tuple[list[str], ClockInfo | None, dict[int, bytes] | None]:
    """(failures, the quote's clock, the reported values once they could be examined)."""
    failures = check_attestation_key(ak)                                        # step 1
    problem, signature = _signature_check(ak, evidence.attest, evidence.signature)  # step 2
    if problem:
        failures.append(problem)
    if failures or signature is None:
        return failures, None, None
    selection = _selection(request.bank, request.pcrs)
    reported = {i: bytes(v) for i, v in evidence.pcr_values.items()}
    if selection.distinct and _exactly_requested(reported, selection):
        tail = quote_tail(selection.wanted[0].bank, selection.pcrs,
                          _pcr_digest(reported, selection.pcrs, signature.hash_alg))
        clock = None if tail is None else match_quote(evidence.attest, request.nonce, tail)
        if clock is not None:  # steps 3 to 6 hold, as parse_attest would find
            return (_counters(clock, previous) if previous is not None else []), clock, reported
    try:
        quote = parse_attest(evidence.attest)                                   # step 3
    except InvalidRequest as exc:
        return [f"attest_format: {exc.message}"], None, None
    if quote.magic != TPM_GENERATED_VALUE:
        return ["attest_magic: not TPM_GENERATED_VALUE (not produced by a TPM)"], None, None
    if quote.type != TPM_ST_ATTEST_QUOTE:
        return ["attest_type: not a quote"], None, None
    if quote.extra_data != request.nonce:                                       # step 4
        failures.append("nonce: the quote does not carry the nonce that was issued")
    if quote.selections != selection.wanted:                                    # step 5
        failures.append(f"pcr_selection: quoted {quote.selections}, requested {selection.wanted}")
    if not _exactly_requested(reported, selection):
        failures.append("pcr_values: not exactly the requested PCRs of the requested bank")
        return failures, quote.clock_info, None
    if _pcr_digest(reported, selection.pcrs, signature.hash_alg) != quote.pcr_digest:   # step 6
        failures.append("pcr_digest: the reported PCR values do not hash to the quoted digest")
    failures += _counters(quote.clock_info, previous)                           # step 7
    return failures, quote.clock_info, reported
