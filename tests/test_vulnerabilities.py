"""Vulnerabilities: OSV advisories evaluated in each ecosystem's own version order (Debian's
epochs and ``~``, PEP 440), imported incrementally, suppressed by VEX, and matched with the
SBOMs published with releases to name the devices that run an affected package."""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.credentials import Role
from edgefleet.image.sbom import Package, build_sbom
from edgefleet.vuln import osv
from tests.cli_helpers import cli, keys_init, release, server_args
from tests.conftest import Device, Fleet, start_fleet


def advisory(ident: str, ecosystem: str, name: str, events: list[dict[str, str]], *, modified: str = "2026-11-01",
             aliases: tuple[str, ...] = (), severity: str = "HIGH", versions: tuple[str, ...] = ()) -> dict[str, Any]:
    """An advisory shaped as the Debian and PyPI OSV exports shape them."""
    return {"schema_version": "1.6.0", "id": ident, "modified": f"{modified}T00:00:00Z", "aliases": list(aliases),
            "summary": f"{name}: test advisory {ident}", "database_specific": {"severity": severity},
            "affected": [{"package": {"ecosystem": ecosystem, "name": name},
                          "ranges": [{"type": "ECOSYSTEM", "events": events}], "versions": list(versions)}]}


def affects(document: dict[str, Any], version: str) -> bool:
    return osv.parse(document).affected[0].contains(version)


def test_debian_ranges_follow_debians_order_with_epochs_and_tildes() -> None:
    fixed = advisory("DSA-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.15-1~deb12u1"}])
    assert affects(fixed, "3.0.14-1~deb12u2")
    assert affects(fixed, "3.0.15-1~deb12u0")  # ~ sorts before anything, even the end
    assert not affects(fixed, "3.0.15-1~deb12u1")
    assert not affects(fixed, "3.0.15-1")  # 1~deb12u1 < 1
    assert not affects(fixed, "1:1.0-1")  # an epoch outranks any version without one
    assert osv.parse(fixed).affected[0].fixed_after("3.0.11-1~deb12u2") == "3.0.15-1~deb12u1"
    window = advisory("DSA-2", "Debian:12", "glibc", [{"introduced": "2.36-9"}, {"last_affected": "2.36-9+deb12u4"}])
    assert [affects(window, v) for v in ("2.36-8", "2.36-9", "2.36-9+deb12u4", "2.36-9+deb12u5")] == [
        False, True, True, False]
    epoch = advisory("DLA-3", "Debian:12", "pkg", [{"introduced": "1:2.0-1"}, {"fixed": "1:2.0-3"}])
    assert [affects(epoch, v) for v in ("9.9-1", "1:2.0-2", "1:2.0-3")] == [False, True, False]
    listed = advisory("DSA-4", "Debian:12", "pkg", [], versions=("1.0-1",))
    assert affects(listed, "1.0-1")
    assert not affects(listed, "1.0-2")


def test_pypi_ranges_follow_pep_440() -> None:
    doc = advisory("GHSA-1", "PyPI", "Cryptography", [{"introduced": "0"}, {"fixed": "42.0.0"}])
    parsed = osv.parse(doc)
    assert parsed.affected[0].name == "cryptography"  # the canonical name, as SBOM names are matched
    assert [affects(doc, v) for v in ("41.0.7", "42.0.0rc1", "42.0.0", "42.0.0.post1", "43.0")] == [
        True, True, False, False, False]
    reopened = advisory("PYSEC-2", "PyPI", "x", [{"introduced": "1.0"}, {"fixed": "1.2"}, {"introduced": "2.0"}])
    assert [affects(reopened, v) for v in ("0.9", "1.1", "1.5", "2.1")] == [False, True, False, True]


@pytest.mark.parametrize("bad", [
    {"id": "X"},  # no modified
    {"id": "X", "modified": "2026-01-01T00:00:00Z",
     "affected": [{"package": {"ecosystem": "PyPI", "name": "x"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"fixed": "not a version!"}]}]}]},
    {"id": "X", "modified": "2026-01-01T00:00:00Z",
     "affected": [{"package": {"ecosystem": "Debian", "name": "x"},
                   "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0", "fixed": "1"}]}]}]},
])
def test_a_malformed_advisory_is_refused_with_the_reason(bad: dict[str, Any]) -> None:
    with pytest.raises(osv.InvalidRequest):
        osv.parse(bad)


OLD, NEW = "2026.11.0", "2026.12.0"


def sbom(version: str, openssl: str, idna: str) -> bytes:
    packages = [Package("Debian", "libssl3", openssl, "amd64", "openssl", openssl),
                Package("Debian", "bash", "5.2.15-2+b7", "amd64", "bash", "5.2.15-2"),
                Package("PyPI", "idna", idna)]
    return build_sbom("edge", version, packages).encode()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


def publish_two_releases(plane: Fleet, tmp: Path) -> None:
    keys, ws = keys_init(plane, tmp)
    for counter, (version, openssl, idna) in enumerate(((OLD, "3.0.14-1~deb12u2", "3.6"),
                                                        (NEW, "3.0.15-1~deb12u1", "3.7")), start=1):
        image, document = tmp / f"{version}.img", tmp / f"sbom-{version}.cdx.json"
        image.write_bytes(version.encode())
        document.write_bytes(sbom(version, openssl, idna))
        release(ws, keys, image, version, counter, "hw-x86", "--sbom", str(document), publish_to=plane)


def reports(device: Device, version: str, seq: int) -> None:
    answer = device.client.post(f"/api/v1/devices/{device.id}/status", json={"seq": seq, "running_version": version})
    assert answer.status_code == 200, answer.text


def test_findings_name_the_devices_on_the_release_that_has_the_package_until_they_run_the_fixed_one(
        plane: Fleet, tmp_path: Path) -> None:
    publish_two_releases(plane, tmp_path)
    old = [plane.enroll(site="berlin-1"), plane.enroll(site="munich-1")]
    new = plane.enroll(site="berlin-2")
    for device in old:
        reports(device, OLD, 1)
    reports(new, NEW, 1)
    exports = tmp_path / "osv"
    exports.mkdir()
    for document in (
            advisory("DSA-5801-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.15-1~deb12u1"}],
                     aliases=("CVE-2026-0001",), severity="CRITICAL"),
            advisory("DSA-5000-1", "Debian:11", "openssl", [{"introduced": "0"}, {"fixed": "9.9"}]),  # bullseye only
            advisory("PYSEC-2026-1", "PyPI", "IDNA", [{"introduced": "0"}, {"fixed": "3.7"}],
                     aliases=("CVE-2026-0002",), severity="MEDIUM")):
        (exports / f"{document['id']}.json").write_text(json.dumps(document))
    with zipfile.ZipFile(tmp_path / "osv.zip", "w") as archive:  # the osv.dev exports are zip archives
        for file in exports.iterdir():
            archive.write(file, file.name)
    printed = cli("vuln", "import", str(tmp_path / "osv.zip"), *server_args(plane))
    assert "3 added, 0 updated, 0 unchanged, 0 refused" in printed
    assert "0 added, 0 updated, 3 unchanged" in cli("vuln", "import", str(exports), *server_args(plane))

    viewer = plane.client(role=Role.VIEWER)
    findings = viewer.get("/api/v1/admin/vulnerabilities", params={"release": OLD}).json()["findings"]
    assert [(f["advisory"], f["package"], f["fixed_in"]) for f in findings] == [
        ("DSA-5801-1", "libssl3", "3.0.15-1~deb12u1"), ("PYSEC-2026-1", "idna", "3.7")]
    assert viewer.get("/api/v1/admin/vulnerabilities", params={"release": NEW}).json()["findings"] == []
    affected = viewer.get("/api/v1/admin/vulnerabilities", params={"cve": "CVE-2026-0001"}).json()
    assert sorted(d["device_id"] for d in affected["devices"]) == sorted(d.id for d in old)
    assert {d["proven"] for d in affected["devices"]} == {False}  # reported, not attested
    shown = json.loads(cli("vuln", "list", "--device", old[0].id, *server_args(plane), "-o", "json"))
    assert shown["release"] == OLD
    assert len(shown["findings"]) == 2

    # VEX: the Python finding does not affect these devices (the code is not reached).
    statement = {"@context": "https://openvex.dev/ns/v0.2.0", "statements": [{
        "vulnerability": {"name": "CVE-2026-0002"}, "products": [{"@id": "pkg:pypi/idna"}],
        "status": "not_affected", "justification": "vulnerable_code_not_in_execute_path"}]}
    (tmp_path / "vex.json").write_text(json.dumps(statement))
    assert "1 statements stored" in cli("vuln", "vex", str(tmp_path / "vex.json"), *server_args(plane))
    findings = viewer.get("/api/v1/admin/vulnerabilities", params={"release": OLD}).json()["findings"]
    assert [f["suppressed"] for f in findings] == [None, "not_affected: vulnerable_code_not_in_execute_path"]
    assert viewer.get("/api/v1/admin/vulnerabilities", params={"cve": "CVE-2026-0002"}).json()["devices"] == []

    # The old release's devices now run the new one (as a finished rollout leaves them):
    # the advisory names nobody any more.
    for device in old:
        reports(device, NEW, 2)
    assert viewer.get("/api/v1/admin/vulnerabilities", params={"cve": "CVE-2026-0001"}).json()["devices"] == []

    # A newer export: the changed advisory is replaced (now fixed later), the others stay;
    # it names every device again, on the new release.
    changed = advisory("DSA-5801-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.16-1~deb12u1"}],
                       aliases=("CVE-2026-0001",), severity="CRITICAL", modified="2026-11-20")
    (exports / "DSA-5801-1.json").write_text(json.dumps(changed))
    assert "0 added, 1 updated, 2 unchanged" in cli("vuln", "import", str(exports), *server_args(plane))
    affected = viewer.get("/api/v1/admin/vulnerabilities", params={"cve": "CVE-2026-0001"}).json()
    assert sorted(d["device_id"] for d in affected["devices"]) == sorted([*(d.id for d in old), new.id])
    assert {(d["release"], d["fixed_in"]) for d in affected["devices"]} == {(NEW, "3.0.16-1~deb12u1")}


def test_a_bad_advisory_is_refused_by_name_while_the_rest_go_in(plane: Fleet) -> None:
    operator = plane.client(role=Role.OPERATOR)
    good = advisory("DSA-1", "Debian:12", "bash", [{"introduced": "0"}, {"fixed": "5.3"}])
    bad = {"id": "DSA-2", "modified": "yesterday"}
    answer = operator.post("/api/v1/admin/vulnerabilities/advisories", json=[good, bad])
    assert answer.status_code == 200, answer.text
    assert (answer.json()["added"], [r["id"] for r in answer.json()["refused"]]) == (1, ["DSA-2"])
    assert operator.post("/api/v1/admin/vulnerabilities/advisories", content=b"{not json").status_code == 422
    vex = operator.post("/api/v1/admin/vulnerabilities/vex", json={"statements": [{
        "vulnerability": "CVE-1", "products": ["pkg:pypi/x"], "status": "not_affected"}]})
    assert (vex.status_code, vex.json()["error"]["code"]) == (422, "invalid_vex")  # no justification
    viewer = plane.client(role=Role.VIEWER)
    assert viewer.get("/api/v1/admin/vulnerabilities", params={"release": "nope"}).status_code == 404
    naive = advisory("DSA-3", "Debian:12", "bash", [{"introduced": "0"}])
    naive["modified"] = "2026-11-01T00:00:00"  # no zone: read as UTC, not a server error
    assert operator.post("/api/v1/admin/vulnerabilities/advisories", json=[naive]).json()["added"] == 1
    for kev in ({"vulnerabilities": [{"dateAdded": "2026-12-01"}]}, {"catalogVersion": "1"}, [1, 2]):
        refused = operator.post("/api/v1/admin/vulnerabilities/exploited", json=kev)
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_kev")
    assert viewer.get("/api/v1/admin/vulnerabilities/report", params={"cve": "CVE-2099-1"}).status_code == 404
    for trick in ("../../etc/passwd", "CVE 1", "x" * 200):
        assert viewer.get("/api/v1/admin/vulnerabilities/report", params={"cve": trick}).status_code == 422
    assert viewer.post("/api/v1/admin/vulnerabilities/exploited", json={"vulnerabilities": []}).status_code == 403


def test_a_known_exploited_cve_is_alerted_once_when_a_device_starts_running_it(tmp_path: Path) -> None:
    plane = start_fleet(tmp_path / "plane", None, exploited_check_seconds=0.2)
    try:
        publish_two_releases(plane, tmp_path)
        device = plane.enroll(site="berlin-1")
        reports(device, NEW, 1)  # the fixed release: nothing runs the CVE yet
        operator, viewer = plane.client(role=Role.OPERATOR), plane.client(role=Role.VIEWER)
        fixed = advisory("DSA-5801-1", "Debian:12", "openssl", [{"introduced": "0"}, {"fixed": "3.0.15-1~deb12u1"}],
                         aliases=("CVE-2026-0001",), severity="CRITICAL")
        assert operator.post("/api/v1/admin/vulnerabilities/advisories", json=[fixed]).json()["added"] == 1
        kev = {"vulnerabilities": [{"cveID": "CVE-2026-0001", "dateAdded": "2026-12-01"}]}
        assert operator.post("/api/v1/admin/vulnerabilities/exploited", json=kev).json() == {"added": 1, "alerts": 0}

        def exploited_alerts() -> list[dict[str, Any]]:
            alerts: list[dict[str, Any]] = viewer.get("/api/v1/admin/alerts").json()["alerts"]
            return [a for a in alerts if a["kind"] == "vulnerability_exploited"]

        time.sleep(1)  # several checks pass: nothing runs it
        assert exploited_alerts() == []
        reports(device, OLD, 2)  # the device went back to the affected release
        deadline = time.monotonic() + 30
        while not exploited_alerts():
            assert time.monotonic() < deadline, "no alert for the device now running an exploited CVE"
            time.sleep(0.1)
        time.sleep(1)  # more checks pass: one alert, not one per check
        (alert,) = exploited_alerts()
        assert (alert["subject"], alert["details"]["affected_devices"], alert["details"]["releases"]) == (
            "CVE-2026-0001", 1, [OLD])
    finally:
        plane.close()
