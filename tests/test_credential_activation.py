"""Enrollment's proof that the attestation key lives in the same TPM as the endorsement key:
the server's MakeCredential (software) against the TPM's ActivateCredential (swtpm)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.hardware.swtpm import Swtpm
from edgefleet.attestation.credential import make_credential
from edgefleet.attestation.structures import DECRYPT, RESTRICTED, parse_public
from edgefleet.errors import ConfigError, InvalidRequest
from tests.tpm_world import tpm2_or_skip


def test_credential_made_for_this_ek_and_ak_is_activated_by_the_tpm(emulator: Any) -> None:
    tpm = tpm2_or_skip()(emulator.tcti)
    ek, ak = parse_public(tpm.endorsement_key()), parse_public(tpm.attestation_key())
    assert ek.has(RESTRICTED | DECRYPT)
    secret = os.urandom(32)
    assert tpm.activate_credential(*make_credential(ek, secret, ak.name)) == secret


def test_activation_with_the_wrong_ak_name_is_refused_by_the_tpm(emulator: Any, tmp_path: Path) -> None:
    tpm = tpm2_or_skip()(emulator.tcti)
    ek = parse_public(tpm.endorsement_key())
    with Swtpm(tmp_path / "other") as other:  # an AK that lives in another TPM
        foreign_ak = parse_public(tpm2_or_skip()(other.tcti).attestation_key())
    with pytest.raises(ConfigError):
        tpm.activate_credential(*make_credential(ek, os.urandom(32), foreign_ak.name))


def test_credential_encrypted_to_another_tpms_ek_cannot_be_activated(emulator: Any, tmp_path: Path) -> None:
    tpm = tpm2_or_skip()(emulator.tcti)
    ak = parse_public(tpm.attestation_key())
    with Swtpm(tmp_path / "other") as other:
        foreign_ek = parse_public(tpm2_or_skip()(other.tcti).endorsement_key())
    with pytest.raises(ConfigError):
        tpm.activate_credential(*make_credential(foreign_ek, os.urandom(32), ak.name))


def test_an_attestation_key_is_not_accepted_as_endorsement_key(emulator: Any) -> None:
    tpm = tpm2_or_skip()(emulator.tcti)
    ak = parse_public(tpm.attestation_key())
    with pytest.raises(InvalidRequest, match="restricted RSA decryption"):
        make_credential(ak, os.urandom(32), ak.name)
