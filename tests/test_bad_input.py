"""Malformed, oversized and wrongly typed bodies: a typed 4xx, a logged reason, no write."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import Fleet


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{not json", {"content-type": "application/json"}),
        (b'{"seq": "seven"}', {"content-type": "application/json"}),
        (b'{"seq": -1}', {"content-type": "application/json"}),
        (b'{"seq": 3, "health": "fine"}', {"content-type": "application/json"}),
        (b'{"seq": 3, "unknown_field": 1}', {"content-type": "application/json"}),
        (b"[1, 2, 3]", {"content-type": "application/json"}),
        (b"", {"content-type": "application/json"}),
    ],
    ids=["not-json", "string-seq", "negative-seq", "bad-enum", "extra-field", "array", "empty"],
)
def test_malformed_status_report_gets_typed_422_and_changes_nothing(
    fleet: Fleet, body: bytes, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    device = fleet.enroll()
    before = fleet.rows()
    with caplog.at_level(logging.WARNING, logger="edgefleet.server"):
        response = device.client.post(f"/api/v1/devices/{device.id}/status", content=body, headers=headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]
    assert fleet.rows() == before
    assert any("invalid_request" in r.getMessage() for r in caplog.records)


def test_oversized_body_with_content_length_gets_413_and_changes_nothing(fleet: Fleet, caplog) -> None:
    device = fleet.enroll()
    before = fleet.rows()
    big = b'{"seq": 1, "details": {"x": "' + b"a" * (fleet.settings.max_body_bytes + 1) + b'"}}'
    response = device.client.post(f"/api/v1/devices/{device.id}/status", content=big,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert fleet.rows() == before
    assert any("over" in r.getMessage() for r in caplog.records)


def test_oversized_chunked_body_gets_413_and_changes_nothing(fleet: Fleet) -> None:
    device = fleet.enroll()
    before = fleet.rows()

    def chunks():
        yield b'{"seq": 1, "details": {"x": "'
        for _ in range(fleet.settings.max_body_bytes // 1024 + 2):
            yield b"a" * 1024
        yield b'"}}'

    response = device.client.post(f"/api/v1/devices/{device.id}/status", content=chunks(),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert fleet.rows() == before


def test_enrollment_with_wrong_types_and_bad_labels_is_refused_without_spending_the_token(fleet: Fleet) -> None:
    token = fleet.bootstrap_token()
    before = fleet.rows()
    for inventory in [
        {"hardware_id": 12, "site": "store-1"},
        {"hardware_id": "hw ok?", "site": "store-1"},
        {"hardware_id": "hw-1", "site": "store-1", "labels": {"bad key!": "v"}},
        {"hardware_id": "hw-1", "site": "store-1", "labels": {f"k{i}": "v" for i in range(40)}},
        {"hardware_id": "hw-1"},
    ]:
        body = fleet.enroll_request(token)
        body["inventory"] = inventory
        response = fleet.client().post("/api/v1/enroll", json=body)
        assert response.status_code == 422, inventory
        assert response.json()["error"]["code"] == "invalid_request"
    assert fleet.rows() == before
    assert fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token)).status_code == 201


def test_out_of_range_query_parameters_are_refused(fleet: Fleet) -> None:
    device = fleet.enroll()
    for params in [{"known": "x"}, {"known": -5}, {"wait": -1}, {"wait": 10_000}]:
        response = device.client.get(f"/api/v1/devices/{device.id}/desired", params=params)
        assert response.status_code == 422, params


def test_unknown_route_and_wrong_method_get_typed_errors(fleet: Fleet) -> None:
    client = fleet.client()
    assert client.get("/api/v1/nope").json()["error"]["code"] == "not_found"
    response = client.delete("/healthz")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
