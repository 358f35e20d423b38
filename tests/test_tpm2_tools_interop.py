"""Interoperability with tpm2-tools: our event log reading agrees with `tpm2_eventlog`, a
quote made by `tpm2_quote` (with an AK from `tpm2_createak`) verifies with our verifier,
and our AK still quotes while tpm2-tools' failed authorizations hold the TPM in lockout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.attestation import eventlog
from edgefleet.attestation.structures import parse_public
from edgefleet.attestation.verifier import Evidence, Policy, QuoteRequest, verify_quote
from tests.conftest import need
from tests.tpm_world import PCRS, boot_events, measured_boot, tpm2_or_skip

EVENT_TYPES = {"EV_POST_CODE": eventlog.EV_POST_CODE, "EV_SEPARATOR": eventlog.EV_SEPARATOR,
               "EV_EFI_BOOT_SERVICES_APPLICATION": eventlog.EV_EFI_BOOT_SERVICES_APPLICATION}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        need("tpm2-tools", f"{name} is not installed (Debian: tpm2-tools)")
    assert path is not None
    return path


def tpm2_tools(*args: str, tcti: str | None = None, cwd: Path | None = None) -> str:
    env = {**os.environ, **({"TPM2TOOLS_TCTI": tcti} if tcti else {})}
    result = subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, env=env, cwd=cwd,
                            timeout=60, check=False)
    assert result.returncode == 0, f"{args[0]}: {result.stderr}"
    return result.stdout


def test_our_event_log_reading_agrees_with_tpm2_eventlog(tmp_path: Path) -> None:
    data = eventlog.encode(boot_events(extra=20))
    (tmp_path / "log.bin").write_bytes(data)
    theirs: dict[str, Any] = yaml.safe_load(tpm2_tools("tpm2_eventlog", str(tmp_path / "log.bin")))
    ours = eventlog.parse(data)
    their_events = theirs["events"][1:]  # [0] is the Spec ID header
    assert len(their_events) == len(ours.events)
    for mine, their in zip(ours.events, their_events, strict=True):
        assert mine.pcr == their["PCRIndex"]
        assert mine.event_type == EVENT_TYPES[their["EventType"]]
        for digest in their.get("Digests", []):
            alg = eventlog.BANKS[digest["AlgorithmId"]]
            assert mine.digests[alg].hex() == digest["Digest"]
    for bank in ("sha1", "sha256"):
        replayed = eventlog.replay(ours, bank, PCRS)
        assert {i: f"0x{v.hex()}" for i, v in replayed.items()} == {
            int(i): str(v) if str(v).startswith("0x") else f"0x{int(v):0{2 * len(replayed[int(i)])}x}"
            for i, v in theirs["pcrs"][bank].items()
        }


@pytest.mark.parametrize(("key", "scheme"), [("ecc", "ecdsa"), ("rsa", "rsassa")])
def test_quote_made_by_tpm2_quote_verifies_with_our_verifier(emulator: Any, tmp_path: Path, key: str,
                                                             scheme: str) -> None:
    tcti = emulator.tcti
    log = measured_boot(tpm2_or_skip()(tcti), boot_events())
    # swtpm has no resource manager in front of it (on hardware: /dev/tpmrm0 or tpm2-abrmd),
    # so flush the transient objects the tools leave loaded, as a resource manager would.
    tpm2_tools("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", tcti=tcti, cwd=tmp_path)
    tpm2_tools("tpm2_flushcontext", "-t", tcti=tcti, cwd=tmp_path)
    tpm2_tools("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", key, "-g", "sha256", "-s", scheme,
               "-u", "ak.pub", "-f", "tss", "-n", "ak.name", tcti=tcti, cwd=tmp_path)
    tpm2_tools("tpm2_flushcontext", "-t", tcti=tcti, cwd=tmp_path)
    nonce = os.urandom(20)
    selection = "sha256:" + ",".join(str(i) for i in PCRS)
    tpm2_tools("tpm2_quote", "-c", "ak.ctx", "-l", selection, "-q", nonce.hex(), "-m", "quote.msg", "-s",
               "quote.sig", "-o", "quote.pcrs", "-F", "values", "-g", "sha256", tcti=tcti, cwd=tmp_path)
    raw = (tmp_path / "quote.pcrs").read_bytes()
    values = {pcr: raw[32 * n:32 * (n + 1)] for n, pcr in enumerate(sorted(PCRS))}
    ak = parse_public((tmp_path / "ak.pub").read_bytes())
    evidence = Evidence((tmp_path / "quote.msg").read_bytes(), (tmp_path / "quote.sig").read_bytes(), values, log)
    verdict = verify_quote(ak, QuoteRequest(nonce, PCRS), evidence, Policy())
    assert verdict.passed, verdict.failures
    assert ak.name == (tmp_path / "ak.name").read_bytes()  # our TPM object name computation agrees too


def test_the_attestation_key_still_quotes_while_the_tpm_is_in_dictionary_attack_lockout(
        emulator: Any, tmp_path: Path) -> None:
    """A power cut is a non-orderly shutdown, which a TPM counts as a failed try; after
    maxTries (3 on swtpm) it refuses every DA-protected key. Here three wrong passwords
    put it there; the AK (noDA: it has no secret to guard) quotes on."""
    tcti = emulator.tcti
    tpm = tpm2_or_skip()(tcti)
    log = measured_boot(tpm, boot_events())
    env = {**os.environ, "TPM2TOOLS_TCTI": tcti}
    tpm2_tools("tpm2_createprimary", "-C", "o", "-p", "secret", "-c", "guarded.ctx", tcti=tcti, cwd=tmp_path)
    for _ in range(3):
        tpm2_tools("tpm2_flushcontext", "-t", tcti=tcti, cwd=tmp_path)  # swtpm has no resource manager
        wrong = subprocess.run([tool("tpm2_create"), "-C", "guarded.ctx", "-P", "wrong", "-u", "k.pub", "-r", "k.priv"],
                               capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False)
        assert "DA counter incremented" in wrong.stderr, wrong.stderr
    tpm2_tools("tpm2_flushcontext", "-t", tcti=tcti, cwd=tmp_path)
    assert "inLockout:                 1" in tpm2_tools("tpm2_getcap", "properties-variable", tcti=tcti)
    nonce = os.urandom(20)
    attest, signature, values = tpm.quote(nonce, "sha256", PCRS)
    ak = parse_public(tpm.attestation_key())
    verdict = verify_quote(ak, QuoteRequest(nonce, PCRS), Evidence(attest, signature, values, log), Policy())
    assert verdict.passed, verdict.failures
