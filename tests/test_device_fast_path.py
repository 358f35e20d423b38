"""A device update's requests skip FastAPI's stack (server/fastpath.py) and answer exactly
as FastAPI does: the same bodies, the same refusals for bad input, the same metrics.
The same requests through a trusted proxy's header go through FastAPI: both are compared."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Device, Fleet, start_fleet


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path_factory.mktemp("fastpath"), None, trusted_proxies=["127.0.0.1"])
    yield fleet
    fleet.close()


def both(fleet: Fleet, device: Device, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
    """The answer over the device's own mTLS connection (the fast path) and through the
    proxy header (FastAPI)."""
    url = f"/api/v1/devices/{device.id}/{path}"
    fast = device.client.request(method, url, **kwargs)
    header = {fleet.settings.client_cert_header: urllib.parse.quote((device.directory / "cert.pem").read_text())}
    slow = fleet.client().request(method, url, headers={**kwargs.pop("headers", {}), **header}, **kwargs)
    return fast, slow


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "desired?known=abc", None),
    ("GET", "desired?wait=99999", None),
    ("GET", "desired?known=-2", None),
    ("POST", "status", {"seq": 0}),
    ("POST", "status", {"seq": 1, "unknown_field": True}),
    ("GET", "director/no_underscores", None),
    ("GET", "director", None),  # a bundle says which root the device trusts
    ("GET", "director?root=0", None),
    ("GET", "director?root=1&snapshot=x", None),
    ("GET", "director?root=1&more=1", None),
    ("GET", "workload-token", None),  # a token names its workload and its audience
    ("GET", "workload-token?workload=../meter&audience=billing", None),
    ("GET", "workload-token?workload=meter&audience=two%20words", None),
])
def test_bad_input_is_refused_the_same_way_on_both_paths(proxied: Fleet, method: str, path: str,
                                                         body: dict[str, Any] | None) -> None:
    device = proxied.enroll()
    fast, slow = both(proxied, device, method, path, json=body)
    assert fast.status_code == slow.status_code == 422
    assert fast.json() == slow.json()
    assert fast.json()["error"]["code"] == "invalid_request"


def test_answers_and_refusals_are_the_same_on_both_paths(proxied: Fleet) -> None:
    device = proxied.enroll()
    fast, slow = both(proxied, device, "GET", "desired")
    assert fast.status_code == slow.status_code == 200
    assert fast.json() == slow.json()
    fast, slow = both(proxied, device, "POST", "status", json={"seq": 5, "running_version": "1.0"})
    assert fast.json() == {"accepted": True, "seq": 5, "attestation_expires_in_seconds": None,
                           "challenge": None}
    # the same report again: stale
    assert slow.json() == {"accepted": False, "seq": 5, "attestation_expires_in_seconds": None,
                           "challenge": None}
    fast, slow = both(proxied, device, "GET", "director?root=1&snapshot=0")
    assert fast.status_code == slow.status_code
    assert fast.json() == slow.json()
    fast, slow = both(proxied, device, "POST", "attestation/nonce")
    assert fast.status_code == slow.status_code == 409  # no TPM identity yet
    assert fast.json() == slow.json()
    fast, slow = both(proxied, device, "GET", "workload-token?workload=meter&audience=billing")
    assert fast.status_code == slow.status_code == 403
    assert fast.json() == slow.json()
    other = proxied.enroll()  # a device may only touch its own records
    refused = device.client.get(f"/api/v1/devices/{other.id}/desired")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_your_device"


def test_fast_path_requests_are_counted_by_route_like_any_other(proxied: Fleet) -> None:
    device = proxied.enroll()
    metrics = proxied.client().get("/metrics").text
    line = 'edgefleet_http_requests_total{method="GET",route="/api/v1/devices/{device_id}/desired",status="200"}'
    before = next((float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines() if x.startswith(line)), 0.0)
    assert device.client.get(f"/api/v1/devices/{device.id}/desired").status_code == 200
    metrics = proxied.client().get("/metrics").text
    assert next(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines() if x.startswith(line)) == before + 1
