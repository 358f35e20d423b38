"""Enrollment: single-use, expiring bootstrap tokens traded with a CSR for a device certificate."""

from __future__ import annotations

import threading

from cryptography import x509

from tests.conftest import Fleet


def test_device_enrolls_and_receives_a_certificate_naming_it_signed_by_the_fleet_ca(fleet: Fleet) -> None:
    token = fleet.bootstrap_token("store-7", labels={"ring": "canary"})
    body = fleet.enroll_request(token, site="store-7", labels={"ring": "main", "model": "nuc"})
    response = fleet.client().post("/api/v1/enroll", json=body)
    assert response.status_code == 201
    answer = response.json()
    cert = x509.load_pem_x509_certificate(answer["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(fleet.settings.pki.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [  # who it is, and where (signed)
        f"urn:edgefleet:device:{answer['device_id']}", "urn:edgefleet:site:store-7"]
    record = fleet.client(role="viewer").get(f"/api/v1/admin/devices/{answer['device_id']}").json()
    # The operator's labels (on the token) select; what the device says of itself is kept apart.
    assert record["labels"] == {"ring": "canary", "device.ring": "main", "device.model": "nuc"}
    assert record["site"] == "store-7"


def test_a_device_cannot_label_itself_into_a_ring_or_a_site(fleet: Fleet) -> None:
    body = fleet.enroll_request(fleet.bootstrap_token("store-7"), site="store-7",
                                labels={"ring": "canary", "site": "factory-lyon"})
    device_id = fleet.client().post("/api/v1/enroll", json=body).json()["device_id"]
    viewer = fleet.client(role="viewer")
    assert viewer.get(f"/api/v1/admin/devices/{device_id}").json()["labels"] == {
        "device.ring": "canary", "device.site": "factory-lyon"}
    too_long = fleet.enroll_request(fleet.bootstrap_token("store-7"), site="store-7", labels={"k" * 60: "v"})
    assert fleet.client().post("/api/v1/enroll", json=too_long).status_code == 422  # no room for its namespace


def test_replayed_bootstrap_token_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    token = fleet.bootstrap_token()
    assert fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token)).status_code == 201
    before = fleet.rows()
    replay = fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token))
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "invalid_bootstrap_token"
    assert fleet.rows() == before


def test_expired_bootstrap_token_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    token = fleet.bootstrap_token(ttl=60)
    fleet.clock.advance(61)
    before = fleet.rows()
    response = fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token))
    assert response.status_code == 401
    assert fleet.rows() == before


def test_forged_token_secret_is_refused(fleet: Fleet) -> None:
    token = fleet.bootstrap_token()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    before = fleet.rows()
    assert fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(forged)).status_code == 401
    assert fleet.rows() == before
    # the genuine token still works afterwards
    assert fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token)).status_code == 201


def test_refusal_reason_is_logged_for_the_operator_but_not_told_to_the_caller(fleet: Fleet, caplog) -> None:
    token = fleet.bootstrap_token()
    fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token))
    response = fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token))
    assert response.json()["error"]["message"] == "authentication failed"
    assert any("already used" in r.getMessage() for r in caplog.records)


def test_token_for_another_site_is_refused_and_stays_unused(fleet: Fleet) -> None:
    token = fleet.bootstrap_token("store-1")
    before = fleet.rows()
    wrong = fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token, site="store-2"))
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "site_mismatch"
    assert fleet.rows() == before
    assert fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token, site="store-1")).status_code == 201


def test_malformed_csr_is_refused_without_spending_the_token(fleet: Fleet) -> None:
    token = fleet.bootstrap_token()
    body = fleet.enroll_request(token)
    body["csr_pem"] = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    before = fleet.rows()
    response = fleet.client().post("/api/v1/enroll", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_csr"
    assert fleet.rows() == before
    assert fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token)).status_code == 201


def test_same_hardware_id_cannot_enroll_twice(fleet: Fleet) -> None:
    first = fleet.enroll_request(fleet.bootstrap_token(), hardware_id="hw-twin")
    assert fleet.client().post("/api/v1/enroll", json=first).status_code == 201
    second_token = fleet.bootstrap_token()
    before = fleet.rows()
    second = fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(second_token, hardware_id="hw-twin"))
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "already_enrolled"
    assert fleet.rows() == before


def test_one_token_raced_by_many_devices_enrolls_exactly_one(fleet: Fleet) -> None:
    token = fleet.bootstrap_token()
    bodies = [fleet.enroll_request(token) for _ in range(8)]
    clients = [fleet.client() for _ in bodies]
    statuses: list[int] = []
    barrier = threading.Barrier(len(bodies))

    def attempt(i: int) -> None:
        barrier.wait()
        statuses.append(clients[i].post("/api/v1/enroll", json=bodies[i]).status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [401] * 7
