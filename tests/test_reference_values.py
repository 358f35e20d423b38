"""Reference values (edgefleet-reference-values/1): the published document reads back with
its JSON Schema and with our strict parser, refuses tampering, and the verifier checks a
real swtpm quote's event log against them event by event, naming the event that differs."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from edgefleet.agent.evidence import PREFIX
from edgefleet.agent.hardware import swtpm
from edgefleet.attestation import eventlog, reference
from edgefleet.attestation.reference import ReferenceEvent, ReferenceValues
from edgefleet.attestation.verifier import Policy
from edgefleet.cli import app
from edgefleet.errors import InvalidRequest
from edgefleet.releases.image import release_fields
from edgefleet.releases.keys import Keystore
from edgefleet.releases.workspace import Workspace
from edgefleet.server.repository import ensure_online_keys
from tests.cli_helpers import cli
from tests.test_attestation_verifier import boot_and_quote, failed
from tests.tpm_world import PCRS, boot_events


def golden_reference() -> ReferenceValues:
    log = eventlog.parse(eventlog.encode(boot_events()))
    return reference.from_log(log, PCRS)


def test_a_published_document_validates_against_the_schema_and_reads_back_equal() -> None:
    values = golden_reference()
    document = json.loads(json.dumps(values.to_document()))
    jsonschema.validate(document, reference.schema())  # a stock reader of the documented format
    assert reference.from_document(document) == values
    assert document["pcrs"] == {str(p): v.hex() for p, v in values.values().items()}


def test_the_stated_pcrs_must_equal_what_the_records_replay_to() -> None:
    document = golden_reference().to_document()
    document["pcrs"]["4"] = "00" * 32
    with pytest.raises(InvalidRequest, match="replay"):
        reference.from_document(document)


@pytest.mark.parametrize("damage", ["format", "bank", "digest", "pcr", "event_type", "records"])
def test_a_malformed_document_is_refused_with_a_typed_error(damage: str) -> None:
    document = copy.deepcopy(golden_reference().to_document())
    record = document["records"][0]
    if damage == "format":
        document["format"] = "keylime-mb-refstate"
    elif damage == "bank":
        document["bank"] = "md5"
    elif damage == "digest":
        record["digests"][0]["digest"] = "abcd"
    elif damage == "pcr":
        record["pcr"] = 24
    elif damage == "event_type":
        record["content"]["event_type"] = "EV_NOT_A_TYPE"
    else:
        document["records"] = {}
    document.pop("pcrs")
    with pytest.raises(InvalidRequest) as raised:
        reference.from_document(document)
    assert raised.value.code == "invalid_reference_values"


def test_compare_names_the_first_event_that_differs_and_what_was_expected() -> None:
    expected = golden_reference()
    booted = eventlog.parse(eventlog.encode(boot_events(kernel=b"vmlinuz 6.1 golden + rootkit")))
    mismatches = reference.compare(booted, expected)
    assert [m.pcr for m in mismatches] == [4]
    assert "PCR 4 event 1 " in mismatches[0].message
    assert "EV_EFI_BOOT_SERVICES_APPLICATION" in mismatches[0].message


def test_compare_notices_a_missing_and_an_extra_event() -> None:
    expected = golden_reference()
    events = boot_events()
    shorter = eventlog.parse(eventlog.encode([e for e in events if not (e.pcr == 4 and e.data[:1] == b"\0")]))
    assert "lacks event" in reference.compare(shorter, expected)[0].message
    extra = eventlog.parse(eventlog.encode([*events, eventlog.measure(4, eventlog.EV_POST_CODE, b"late driver")]))
    assert "unexpected event" in reference.compare(extra, expected)[0].message


def test_merged_takes_the_release_events_and_the_baseline_for_the_other_pcrs() -> None:
    release = ReferenceValues((ReferenceEvent(4, eventlog.EV_SEPARATOR, b"\1" * 32, "release", "uki"),))
    merged = release.merged(golden_reference())
    assert [e.description for e in merged.events if e.pcr == 4] == ["release"]
    assert {0, 1, 7} <= set(merged.pcrs)


def test_a_real_quote_passes_event_by_event_reference_values(emulator: swtpm.Swtpm) -> None:
    verdict = boot_and_quote(emulator).verify(policy=Policy(events=golden_reference()))
    assert verdict.passed, verdict.failures


def test_a_real_quote_of_another_kernel_fails_naming_the_event(emulator: swtpm.Swtpm) -> None:
    booted = boot_and_quote(emulator, kernel=b"vmlinuz 6.1 golden + rootkit")
    expected = golden_reference()
    verdict = booted.verify(policy=Policy(expected.values(), expected))
    assert failed(verdict) == {"policy"}
    assert len(verdict.failures) == 1  # the event is named once, not again as a bare PCR value
    assert "PCR 4 event 1" in verdict.failures[0]


def test_reference_values_of_a_pcr_that_is_not_quoted_fail(emulator: swtpm.Swtpm) -> None:
    extra = golden_reference().merged(ReferenceValues((ReferenceEvent(11, eventlog.EV_IPL, b"\2" * 32),)))
    verdict = boot_and_quote(emulator).verify(policy=Policy(events=extra))
    assert any("not quoted" in f for f in verdict.failures)


def test_baseline_cli_records_a_golden_devices_firmware_pcrs_from_its_evidence(tmp_path: Path) -> None:
    log = eventlog.encode(boot_events())
    evidence = tmp_path / "evidence.json"
    document = {"bank": "sha256", "pcrs": {}, "event_log": base64.b64encode(log).decode()}
    evidence.write_text(PREFIX + json.dumps(document))
    out = tmp_path / "hw.json"
    cli("image", "baseline", str(evidence), "--out", str(out), "--pcrs", "0,1")
    recorded = reference.loads(out.read_bytes())
    assert recorded.pcrs == (0, 1)
    assert {e.source for e in recorded.events} == {"golden"}
    raw = tmp_path / "binary_bios_measurements"
    raw.write_bytes(log)
    cli("image", "baseline", str(raw), "--out", str(out), "--pcrs", "0,1")
    assert reference.loads(out.read_bytes()) == recorded


def test_a_release_signs_its_reference_values_into_its_target(tmp_path: Path) -> None:
    keys, ws = str(tmp_path / "keys"), str(tmp_path / "ws")
    ensure_online_keys(Keystore(tmp_path / "server-keys"))  # what `server init` makes
    online = tmp_path / "server-keys" / "online-keys.json"
    cli("keys", "init", "--keys-dir", keys, "--workspace", ws, "--online-keys", str(online))
    image = tmp_path / "root.erofs"
    image.write_bytes(b"\0" * 8192)
    values = tmp_path / "reference-values.json"
    values.write_text(json.dumps(golden_reference().to_document()))
    cli("release", "create", "-w", ws, "--version", "2026.12.0", "--image", str(image), "--counter", "1",
        "--hardware-id", "qemu-q35", "--reference-values", str(values), "--no-index", "--deltas", "0")
    (target,) = Workspace(Path(ws)).releases()
    fields = release_fields(target)
    assert reference.from_document(fields["reference_values"]) == golden_reference()
    assert fields["measurements"] == {str(p): v.hex() for p, v in golden_reference().values().items()}
    typed = CliRunner().invoke(app, ["release", "create", "-w", ws, "--version", "2026.12.1", "--image", str(image),
                                     "--counter", "2", "--hardware-id", "qemu-q35", "--reference-values",
                                     str(values), "--measurement", f"4={'a' * 64}"])
    assert typed.exit_code != 0
    assert "come from --reference-values" in typed.output
