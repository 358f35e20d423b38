"""The insecure software TPM produces what a TPM produces: the real verifier, credential
activation and the emulated firmware work with it unchanged (for simulators and demos)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edgefleet.agent.hardware.firmware import measured_boot, reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.hardware.vdevice import VirtualDevice
from edgefleet.attestation.credential import make_credential
from edgefleet.attestation.structures import parse_attest, parse_public
from edgefleet.attestation.verifier import Evidence, Policy, QuoteRequest, verify_quote
from edgefleet.errors import ConfigError

PCRS = (0, 1, 2, 3, 4, 5, 6, 7)


def test_software_tpm_announces_that_it_is_insecure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        InsecureSoftwareTpm(tmp_path / "tpm")
    assert "INSECURE" in caplog.text


def test_software_tpm_quote_after_measured_boot_verifies_against_the_release(tmp_path: Path) -> None:
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id="hw-1", site="s", os_version="2026.11.0")
    tpm = InsecureSoftwareTpm(tmp_path / "tpm")
    log = measured_boot(tpm, device.slot_image("a"), device.event_log(), power_cycle=lambda: None)
    nonce = os.urandom(32)
    attest, signature, values = tpm.quote(nonce, "sha256", list(PCRS))
    reference = reference_pcrs(device.slot_image("a"))
    verdict = verify_quote(parse_public(tpm.attestation_key()), QuoteRequest(nonce, PCRS),
                           Evidence(attest, signature, values, log), Policy({0: reference[0], 4: reference[4]}))
    assert verdict.passed, verdict.failures


def test_software_tpm_activates_only_credentials_made_for_its_keys(tmp_path: Path) -> None:
    tpm, other = InsecureSoftwareTpm(tmp_path / "a"), InsecureSoftwareTpm(tmp_path / "b")
    ek, ak = parse_public(tpm.endorsement_key()), parse_public(tpm.attestation_key())
    secret = os.urandom(32)
    assert tpm.activate_credential(*make_credential(ek, secret, ak.name)) == secret
    with pytest.raises(ConfigError):
        tpm.activate_credential(*make_credential(ek, secret, parse_public(other.attestation_key()).name))


def test_software_tpm_keys_and_reset_count_survive_a_restart(tmp_path: Path) -> None:
    first = InsecureSoftwareTpm(tmp_path / "tpm")
    first.startup()
    ak = first.attestation_key()
    again = InsecureSoftwareTpm(tmp_path / "tpm")
    again.startup()
    assert again.attestation_key() == ak
    attest, _, _ = again.quote(b"n", "sha256", [0])
    assert parse_attest(attest).clock_info.reset_count == 2
