"""Malformed, oversized and wrongly typed bodies: a typed 4xx, a logged reason, no write."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

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


LONE_SURROGATE = b'"\\ud800"'  # a JSON escape that decodes to a string no response can encode


@pytest.mark.parametrize("who", ["operator", "device"])
def test_a_lone_surrogate_in_a_body_is_refused_before_any_write_and_everything_still_answers(
    fleet: Fleet, who: str, caplog: pytest.LogCaptureFixture
) -> None:
    device = fleet.enroll()
    operator = fleet.client(role="operator")
    json_headers = {"content-type": "application/json"}
    if who == "operator":
        url, body = f"/api/v1/admin/devices/{device.id}/desired", b'{"document": {"release": ' + LONE_SURROGATE + b"}}"
        client = operator
    else:
        url, body = f"/api/v1/devices/{device.id}/status", b'{"seq": 9, "details": {"note": ' + LONE_SURROGATE + b"}}"
        client = device.client
    before = fleet.rows()
    with caplog.at_level(logging.WARNING, logger="edgefleet.server"):
        response = client.request("PUT" if who == "operator" else "POST", url, content=body, headers=json_headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "surrogate" in response.json()["error"]["message"]
    assert any("lone UTF-16 surrogate" in r.getMessage() for r in caplog.records)
    assert fleet.rows() == before
    assert operator.get(f"/api/v1/admin/devices/{device.id}").status_code == 200
    assert device.client.get(f"/api/v1/devices/{device.id}/desired").status_code == 200


def test_a_surrogate_pair_is_a_character_and_is_stored(fleet: Fleet) -> None:
    device = fleet.enroll()
    operator = fleet.client(role="operator")
    body = (b'{"document": {"release": "open \\ud83d\\ude00", "config": {"group": "tills", '  # an emoji
            b'"os": {"cloud_init": "C:\\\\ud800"}}}}')  # an escaped backslash
    answer = operator.put(f"/api/v1/admin/devices/{device.id}/desired", content=body,
                          headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    checkin = device.client.get(f"/api/v1/devices/{device.id}/desired")
    assert checkin.json()["document"] == {"release": "open \U0001f600",
                                          "config": {"group": "tills", "os": {"cloud_init": "C:\\ud800"}}}


@pytest.mark.parametrize("document", [
    {"motd": "hi"},  # not a part of a desired state
    {"update": {"force_reboot": True}},  # an unsigned instruction: these travel signed, on the director's targets
    {"maintenance": {"install": []}},  # windows travel inside the signed configuration
    {"config": {"os": {}}},  # a configuration names its group
    {"config": {"group": "tills", "maintenance": {"install": [{"cron": "0 2 * * *", "duration_minutes": "60"}]}}},
    {"config": {"group": "tills", "maintenance": {"install": [{"cron": "0 2 * * *", "duration_minutes": 0}]}}},
    {"config": {"group": "tills", "os": {"cloud_init": 7}}},
], ids=["unknown", "update", "maintenance", "no-group", "string-duration", "zero-duration", "typed-os"])
def test_a_desired_state_outside_the_shared_model_is_refused_and_changes_nothing(
        fleet: Fleet, document: dict[str, object]) -> None:
    device = fleet.enroll()
    before = fleet.rows()
    answer = fleet.client(role="operator").put(f"/api/v1/admin/devices/{device.id}/desired",
                                               json={"document": document})
    assert answer.status_code == 422, answer.text
    assert fleet.rows() == before


def test_integers_past_what_the_stores_hold_are_refused_with_422_not_500(fleet: Fleet) -> None:
    device = fleet.enroll()
    viewer = fleet.client(role="viewer")
    huge = 2**63  # one past SQLite's and PostgreSQL's 64-bit integers
    for url, params in [("/api/v1/admin/devices", {"offset": huge}),
                        (f"/api/v1/admin/devices/{device.id}/telemetry", {"after": huge})]:
        assert viewer.get(url, params=params).status_code == 422, url
        at_bound = viewer.get(url, params={next(iter(params)): 2**62})
        assert at_bound.status_code in (200, 404), url  # answered (404: no telemetry stream yet), not a 500
    before = fleet.rows()
    for report in ({"seq": 5, "desired_version_applied": huge},
                   {"seq": 5, "update": {"phase": "downloading", "release": "1", "delivery": {
                       "method": "full", "downloaded_bytes": huge, "image_bytes": 1, "saved_bytes": 0}}}):
        answer = device.client.post(f"/api/v1/devices/{device.id}/status", json=report)
        assert answer.status_code == 422, answer.text
    assert fleet.rows() == before


def _body_routes(fleet: Fleet) -> list[tuple[str, str, str]]:
    """(method, path, a URL of it) for every route that takes a body, from the OpenAPI document."""
    paths = fleet.client().get("/openapi.json").json()["paths"]
    return [(method.upper(), path,
             re.sub(r"\{[^}]+\}", "x" * 8, path.replace("{namespace}", "raw").replace("{sha256}", "a" * 64)))
            for path, methods in paths.items() for method in methods if method.upper() in ("POST", "PUT", "PATCH")]


def test_every_route_refuses_an_oversized_body_without_credentials_before_reading_it(fleet: Fleet) -> None:
    """Every route that takes a body: 1 MiB and no credentials answers 401 (credentials
    first) or 413 (the global limit), never a parse of the body. (Enrollment is the one
    route without credentials: the global limit bounds it.)"""
    anonymous = fleet.client()
    # 1 MiB that does not parse: a route that parsed before checking credentials answers 422.
    body = b'{"ids": [' + b",".join([b'"' + b"0" * 32 + b'"'] * 31_000) + b"]} and more"
    tried = _body_routes(fleet)
    for method, path, url in tried:
        answer = anonymous.request(method, url, content=body, headers={"content-type": "application/json"})
        assert answer.status_code in (401, 413), (method, path, answer.status_code, answer.text[:200])
    assert ("POST", "/api/v1/admin/repository/pieces/{namespace}/missing") in [(m, p) for m, p, _ in tried]
    assert len(tried) > 20


def _peak_rss_mib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) // 1024  # type: ignore[union-attr]


def test_a_200_mib_stream_without_credentials_is_refused_without_the_server_holding_it(fleet: Fleet) -> None:
    """The audit's attack on every body route: 200 MiB sent chunked (no length to refuse
    up front) and no credentials. Each is refused, and the peak memory of this process,
    which runs the server, grows by far less than one such body."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
    before = _peak_rss_mib()

    def stream() -> Iterator[bytes]:
        block = b"0" * (1 << 20)
        for _ in range(200):
            yield block

    anonymous = fleet.client()
    for method, path, url in _body_routes(fleet):
        answer = anonymous.request(method, url, content=stream(), headers={"content-type": "application/json"})
        assert answer.status_code in (401, 413), (method, path, answer.status_code, answer.text[:200])
    grown = _peak_rss_mib() - before
    print(f"peak RSS of the server's process grew by {grown} MiB over {len(_body_routes(fleet))} routes")
    assert grown < 64
