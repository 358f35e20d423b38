"""The quote verifier against quotes made by a real TPM (swtpm through tpm2-pytss): a good
quote passes, and every forgery, mix-up or tampered boot is refused with the check named."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from edgefleet.agent.hardware import swtpm
from edgefleet.attestation import eventlog, reference, verifier
from edgefleet.attestation.structures import ClockInfo, match_quote, parse_attest, parse_public, quote_tail
from edgefleet.attestation.verifier import (
    LOGS,
    Evidence,
    Policy,
    QuoteRequest,
    Verdict,
    verify_quote,
)
from edgefleet.errors import InvalidRequest
from tests.tpm_world import PCRS, boot_events, measured_boot, sha256, tpm2_or_skip

REAL_LOGS = Path(__file__).parent / "data" / "eventlogs"


@dataclasses.dataclass
class Booted:
    tpm: object
    ak: object
    log: bytes
    nonce: bytes
    evidence: Evidence

    def verify(self, evidence: Evidence | None = None, *, nonce: bytes | None = None, pcrs: tuple[int, ...] = PCRS,
               bank: str = "sha256", policy: Policy | None = None, previous: ClockInfo | None = None) -> Verdict:
        """The verdict, checked to be the same whether the log's replay and comparison are
        computed (cold) or remembered from an earlier quote with this log (warm), the same
        after the golden log's results were remembered (a remembered result can never
        turn a failing log into a passing one), and the same when the quote is parsed in
        full instead of matched against what a good quote must carry."""
        def run() -> Verdict:
            return verify_quote(self.ak, QuoteRequest(nonce or self.nonce, pcrs, bank),  # type: ignore[arg-type]
                                evidence or self.evidence, policy or Policy(), previous)

        LOGS.clear()
        cold = run()
        assert LOGS.hits == 0
        warm = run()
        assert warm == cold
        assert LOGS.hits >= (1 if cold.pcr_values else 0)  # the second was remembered
        verify_quote(self.ak, QuoteRequest(self.nonce, pcrs, bank), self.evidence,  # type: ignore[arg-type]
                     policy or Policy())
        assert run() == cold
        with mock.patch.object(verifier, "match_quote", return_value=None):
            assert run() == cold
        return cold


def boot_and_quote(instance: swtpm.Swtpm, algorithm: str = "ecc", kernel: bytes = b"vmlinuz 6.1 golden") -> Booted:
    tpm = tpm2_or_skip()(instance.tcti, algorithm)
    ak = parse_public(tpm.attestation_key())
    log = measured_boot(tpm, boot_events(kernel))
    nonce = os.urandom(32)
    attest, signature, values = tpm.quote(nonce, "sha256", list(PCRS))
    return Booted(tpm, ak, log, nonce, Evidence(attest, signature, values, log))


def failed(verdict: Verdict) -> set[str]:
    assert not verdict.passed
    return {failure.split(":")[0] for failure in verdict.failures}


@pytest.mark.parametrize("algorithm", ["ecc", "rsa"])
def test_quote_from_the_tpm_with_a_replaying_event_log_passes(emulator: swtpm.Swtpm, algorithm: str) -> None:
    booted = boot_and_quote(emulator, algorithm)
    verdict = booted.verify()
    assert verdict.passed, verdict.failures
    assert verdict.clock is not None


def test_boot_of_a_tampered_slot_violates_the_release_policy(emulator: swtpm.Swtpm, tmp_path: Path) -> None:
    golden = eventlog.replay(eventlog.parse(eventlog.encode(boot_events())), "sha256", PCRS)
    policy = Policy(expected={4: golden[4], 0: golden[0]})
    booted = boot_and_quote(emulator, kernel=b"vmlinuz 6.1 golden + rootkit")
    verdict = booted.verify(policy=policy)
    assert failed(verdict) == {"policy"}  # authentic, fresh, replays: but not the release it should run
    assert "PCR 4" in verdict.failures[0]


def test_wrong_nonce_is_refused(emulator: swtpm.Swtpm) -> None:
    assert failed(boot_and_quote(emulator).verify(nonce=os.urandom(32))) == {"nonce"}


@pytest.mark.parametrize("field", ["attest", "signature"])
def test_one_flipped_byte_is_refused(emulator: swtpm.Swtpm, field: str) -> None:
    booted = boot_and_quote(emulator)
    for position in (0, 10, len(getattr(booted.evidence, field)) - 1):
        data = bytearray(getattr(booted.evidence, field))
        data[position] ^= 0x01
        verdict = booted.verify(dataclasses.replace(booted.evidence, **{field: bytes(data)}))
        assert failed(verdict) & {"signature", "signature_format", "signature_algorithm", "signature_hash"}


def test_quote_signed_by_a_software_key_is_refused(emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator)
    forger = ec.generate_private_key(ec.SECP256R1())
    r, s = decode_dss_signature(forger.sign(booted.evidence.attest, ec.ECDSA(hashes.SHA256())))
    fake = b"\x00\x18\x00\x0b" + b"".join(len(v.to_bytes(32, "big")).to_bytes(2, "big") + v.to_bytes(32, "big")
                                          for v in (r, s))
    assert failed(booted.verify(dataclasses.replace(booted.evidence, signature=fake))) == {"signature"}


def test_quote_from_another_tpms_attestation_key_is_refused(emulator: swtpm.Swtpm, tmp_path: Path) -> None:
    booted = boot_and_quote(emulator)
    with swtpm.Swtpm(tmp_path / "other") as other:
        stranger = boot_and_quote(other)
    forged = dataclasses.replace(stranger.evidence)
    assert failed(booted.verify(forged, nonce=stranger.nonce)) == {"signature"}


def test_key_without_restricted_and_fixed_tpm_is_not_an_attestation_key(emulator: swtpm.Swtpm) -> None:
    from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE

    tpm = tpm2_or_skip()(emulator.tcti)
    with tpm._esapi() as ectx:
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT
                                      | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SENSITIVEDATAORIGIN)
        handle, public, _, _, _ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)
        ectx.flush_context(handle)
    loose = parse_public(public.publicArea.marshal())
    booted = boot_and_quote(emulator)
    verdict = verify_quote(loose, QuoteRequest(booted.nonce, PCRS), booted.evidence, Policy())
    assert "ak_attributes" in failed(verdict)


@pytest.mark.parametrize("change", ["changed", "missing", "extra"])
def test_reported_pcr_values_that_do_not_match_the_quote_are_refused(emulator: swtpm.Swtpm, change: str) -> None:
    booted = boot_and_quote(emulator)
    values = dict(booted.evidence.pcr_values)
    if change == "changed":
        values[4] = bytes(32)
    elif change == "missing":
        del values[7]
    else:
        values[9] = bytes(32)
    verdict = booted.verify(dataclasses.replace(booted.evidence, pcr_values=values))
    assert failed(verdict) & {"pcr_digest", "pcr_values"}


def test_quote_of_another_bank_or_other_pcrs_than_requested_is_refused(emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator)
    assert "pcr_selection" in failed(booted.verify(pcrs=(0, 1, 4)))
    assert "pcr_selection" in failed(booted.verify(bank="sha1"))


def test_attest_structure_that_is_not_a_quote_is_refused_even_if_signed_by_the_ak(emulator: swtpm.Swtpm) -> None:
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.types import TPM2B_DATA, TPMT_SIG_SCHEME

    booted = boot_and_quote(emulator)
    tpm = booted.tpm
    with tpm._esapi() as ectx:  # type: ignore[attr-defined]
        ak = tpm._load_ak(ectx)  # type: ignore[attr-defined]
        # TPM2_Certify: the AK certifies itself, a TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY
        attest, signature = ectx.certify(ak, ak, TPM2B_DATA(booted.nonce), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        ectx.flush_context(ak)
    assert bytes(attest)[:6] == bytes.fromhex("ff544347" "8017")  # a genuine TPM_ST_ATTEST_CERTIFY
    evidence = dataclasses.replace(booted.evidence, attest=bytes(attest), signature=signature.marshal())
    assert failed(booted.verify(evidence)) == {"attest_format"}


def test_counters_or_clock_going_back_are_refused(emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator)
    clock = parse_attest(booted.evidence.attest).clock_info
    later = [dataclasses.replace(clock, reset_count=clock.reset_count + 1),
             dataclasses.replace(clock, restart_count=clock.restart_count + 1),
             dataclasses.replace(clock, clock=clock.clock + 10_000)]
    for previous in later:
        assert failed(booted.verify(previous=previous)) == {"counters"}
    assert booted.verify(previous=dataclasses.replace(clock, clock=clock.clock - 1)).passed


def test_reboot_increases_the_reset_count_and_clears_the_pcrs(emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator)
    before = parse_attest(booted.evidence.attest).clock_info
    emulator.power_cycle()
    booted.tpm.startup()  # type: ignore[attr-defined]
    assert set(booted.tpm.read_pcrs("sha256", [4]).values()) == {bytes(32)}  # type: ignore[attr-defined]
    after = boot_and_quote(emulator)
    assert after.verify(previous=before).passed
    assert parse_attest(after.evidence.attest).clock_info.reset_count > before.reset_count


def test_a_quote_without_an_event_log_is_refused_saying_no_log_was_sent(emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator)
    verdict = booted.verify(dataclasses.replace(booted.evidence, event_log=b""))
    assert failed(verdict) == {"event_log"}
    assert "none sent" in verdict.failures[0]


@pytest.mark.parametrize("damage", ["truncated", "reordered", "extra_event", "missing_event"])
def test_event_log_that_does_not_replay_is_refused(emulator: swtpm.Swtpm, damage: str) -> None:
    booted = boot_and_quote(emulator)
    events = list(eventlog.parse(booted.log).events)
    if damage == "truncated":
        log = booted.log[:-7]
    else:
        if damage == "reordered":
            events[2], events[3] = events[3], events[2]  # both PCR 4: same set, other order
        elif damage == "extra_event":
            events.append(eventlog.measure(4, eventlog.EV_IPL, b"something else"))
        else:
            del events[3]
        log = eventlog.encode(events)
    assert failed(booted.verify(dataclasses.replace(booted.evidence, event_log=log))) == {"event_log"}


def test_truncated_and_oversized_structures_are_refused_by_the_parsers(emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator)
    for parse, data in ((parse_attest, booted.evidence.attest), (parse_public, booted.ak.raw)):  # type: ignore[attr-defined]
        with pytest.raises(InvalidRequest):
            parse(data[:-1])
        with pytest.raises(InvalidRequest):
            parse(data + b"\0")
        with pytest.raises(InvalidRequest):
            parse(data + b"\0" * 5000)
    with pytest.raises(InvalidRequest, match="bound"):
        eventlog.parse(b"\0" * (eventlog.MAX_LOG_BYTES + 1))
    truncated_attest = dataclasses.replace(booted.evidence, attest=booted.evidence.attest[:40])
    assert failed(booted.verify(truncated_attest)) == {"signature"}


def test_a_quote_recognised_by_comparison_is_one_the_full_parse_accepts_with_that_nonce_selection_and_digest(
        emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator)
    values = booted.evidence.pcr_values
    tail = quote_tail(eventlog.ALG_SHA256, PCRS, sha256(b"".join(values[i] for i in PCRS)))
    assert tail is not None
    assert match_quote(booted.evidence.attest, booted.nonce, tail) == parse_attest(booted.evidence.attest).clock_info
    rng, recognised = random.Random(35), 0
    for _ in range(20_000):
        data = bytearray(booted.evidence.attest)
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(data))
            if rng.random() < 0.2:
                del data[where:where + rng.randint(1, 4)]
            elif rng.random() < 0.2:
                data[where:where] = rng.randbytes(rng.randint(1, 4))
            else:
                data[where] = rng.randrange(256)
        clock = match_quote(bytes(data), booted.nonce, tail)
        if clock is None:
            continue
        recognised += 1  # only bytes the comparison ignores changed (the signer's name, clock, firmware)
        quote = parse_attest(bytes(data))
        assert (quote.extra_data, quote.selections, quote.clock_info) == (
            booted.nonce, (verifier.PcrSelection(eventlog.ALG_SHA256, PCRS),), clock)
        assert quote.pcr_digest == tail[-32:]
    assert recognised > 0


def test_a_remembered_log_outcome_is_found_only_by_a_byte_for_byte_equal_log() -> None:
    memo: verifier.LogMemo[str] = verifier.LogMemo(entries=8, max_bytes=10_000)
    first = bytes(100) + b"A" + bytes(100)     # the same length and sampled windows ...
    second = bytes(100) + b"B" + bytes(100)    # ... but other content
    assert memo.get(first, "k", lambda: "first") == "first"
    assert memo.get(second, "k", lambda: "second") == "second"
    assert memo.get(bytes(bytearray(first)), "k", lambda: "recomputed") == "first"  # an equal copy hits
    assert memo.get(second, "other key", lambda: "other") == "other"
    assert (memo.hits, memo.misses) == (1, 3)
    for n in range(10):  # more logs sharing one sample than a bucket holds: the oldest go, nothing mixes
        log = bytes(100) + bytes([n + 10]) + bytes(100)
        assert memo.get(log, "k", lambda n=n: f"log {n}") == f"log {n}"  # type: ignore[misc]
    assert memo.get(first, "k", lambda: "recomputed") == "recomputed"
    big = verifier.LogMemo[str](entries=100, max_bytes=1_000)
    for n in range(5):
        big.get(bytes([n]) * 400, "k", lambda: "x")
    assert big.bytes_held <= 1_000  # bounded in bytes held
    assert len(big) == 2


def _real_boot(emulator: swtpm.Swtpm, algorithm: str) -> tuple[Booted, reference.ReferenceValues, tuple[int, ...]]:
    """A swtpm whose PCRs hold what the OVMF boot of the test image measured (its real
    event log, captured from the VM), quoted over the PCRs the server quotes."""
    log = (REAL_LOGS / "qemu-q35-ovmf-uki.bin").read_bytes()
    recorded = json.loads((REAL_LOGS / "qemu-q35-ovmf-uki.pcrs.json").read_text())["pcrs"]
    pcrs = (0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12)
    tpm = tpm2_or_skip()(emulator.tcti, algorithm)
    for event in eventlog.parse(log).events:
        if event.event_type != eventlog.EV_NO_ACTION:
            tpm.extend_pcr(event.pcr, "sha256", event.digests[eventlog.ALG_SHA256])
    nonce = os.urandom(32)
    attest, signature, values = tpm.quote(nonce, "sha256", list(pcrs))
    assert {i: v.hex() for i, v in values.items()} == {i: recorded[str(i)] for i in pcrs}  # as in the VM
    release = reference.loads((REAL_LOGS / "qemu-q35-ovmf-uki.reference-values.json").read_bytes())
    firmware = reference.from_log(eventlog.parse(log), (0, 1, 2, 3, 6))
    booted = Booted(tpm, parse_public(tpm.attestation_key()), log, nonce, Evidence(attest, signature, values, log))
    return booted, release.merged(firmware), pcrs


@pytest.mark.parametrize("algorithm", ["ecc", "rsa"])
def test_a_real_ovmf_boot_log_passes_against_its_release_and_a_tampered_copy_fails_cold_and_warm(
        emulator: swtpm.Swtpm, algorithm: str) -> None:
    booted, events, pcrs = _real_boot(emulator, algorithm)
    policy = Policy(events.values(), events)
    verdict = booted.verify(pcrs=pcrs, policy=policy)
    assert verdict.passed, verdict.failures
    parsed = eventlog.parse(booted.log)
    kernel = next(i for i, e in enumerate(parsed.events) if e.pcr == 11)
    for changed in ([eventlog.measure(11, parsed.events[kernel].event_type, b"another kernel")], []):
        events_now = list(parsed.events)
        events_now[kernel:kernel + 1] = changed  # another kernel measured, or none
        log = eventlog.encode(events_now, parsed.algorithms)
        assert not booted.verify(dataclasses.replace(booted.evidence, event_log=log), pcrs=pcrs,
                                 policy=policy).passed
    other_release = Policy(events.values(), dataclasses.replace(events, events=events.events[1:]))
    assert "PCR 4" in " ".join(booted.verify(pcrs=pcrs, policy=other_release).failures)  # the same log, other values
