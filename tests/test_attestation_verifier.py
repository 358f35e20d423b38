"""The quote verifier against quotes made by a real TPM (swtpm through tpm2-pytss): a good
quote passes, and every forgery, mix-up or tampered boot is refused with the check named."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from edgefleet.agent.hardware import swtpm
from edgefleet.attestation import eventlog
from edgefleet.attestation.structures import ClockInfo, parse_attest, parse_public
from edgefleet.attestation.verifier import (
    COMPARISONS,
    REPLAYS,
    Evidence,
    Policy,
    QuoteRequest,
    Verdict,
    verify_quote,
)
from edgefleet.errors import InvalidRequest
from tests.tpm_world import PCRS, boot_events, measured_boot, tpm2_or_skip


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
        computed (cold) or remembered from an earlier quote with this log (warm), and the
        same after the golden log's results were remembered: a remembered result can
        never turn a failing log into a passing one."""
        def run() -> Verdict:
            return verify_quote(self.ak, QuoteRequest(nonce or self.nonce, pcrs, bank),  # type: ignore[arg-type]
                                evidence or self.evidence, policy or Policy(), previous)

        REPLAYS.clear()
        COMPARISONS.clear()
        cold = run()
        assert REPLAYS.hits == 0
        warm = run()
        assert warm == cold
        assert REPLAYS.hits + COMPARISONS.hits >= (1 if cold.pcr_values else 0)  # the second was remembered
        verify_quote(self.ak, QuoteRequest(self.nonce, PCRS), self.evidence, Policy())  # type: ignore[arg-type]
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
