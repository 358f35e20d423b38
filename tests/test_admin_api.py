"""Admin API: bearer tokens with roles viewer < operator < admin."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from edgefleet.credentials import Role
from edgefleet.server.local import create_admin_token
from tests.conftest import Fleet


def test_admin_calls_without_a_valid_token_are_401_and_change_nothing(fleet: Fleet) -> None:
    before = fleet.rows()
    real = fleet.tokens[Role.ADMIN]
    for headers in [{}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer nonsense"},
                    {"authorization": f"Bearer {real[:-3]}xyz"},
                    {"authorization": "Bearer efa_0000000000000000_" + "A" * 43}]:
        client = fleet.client()
        assert client.get("/api/v1/admin/devices", headers=headers).status_code == 401
        response = client.post("/api/v1/admin/bootstrap-tokens", json={"site": "s"}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert fleet.rows() == before


def test_expired_admin_token_is_refused(fleet: Fleet) -> None:
    token = asyncio.run(create_admin_token(fleet.settings, name="temp", role=Role.ADMIN, now=fleet.clock.now(),
                                           ttl=timedelta(seconds=30)))
    assert fleet.client(token=token).get("/api/v1/admin/devices").status_code == 200
    fleet.clock.advance(31)
    assert fleet.client(token=token).get("/api/v1/admin/devices").status_code == 401


def test_viewer_may_read_but_not_create_tokens_or_change_desired_state(fleet: Fleet) -> None:
    device = fleet.enroll()
    viewer = fleet.client(role=Role.VIEWER)
    assert viewer.get("/api/v1/admin/devices").status_code == 200
    before = fleet.rows()
    refused = viewer.post("/api/v1/admin/bootstrap-tokens", json={"site": "s"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_role"
    assert viewer.put(f"/api/v1/admin/devices/{device.id}/desired", json={"document": {}}).status_code == 403
    assert fleet.rows() == before


def test_operator_may_not_decommission_but_admin_may(fleet: Fleet) -> None:
    device = fleet.enroll()
    assert fleet.client(role=Role.OPERATOR).delete(f"/api/v1/admin/devices/{device.id}").status_code == 403
    assert fleet.client(role=Role.ADMIN).delete(f"/api/v1/admin/devices/{device.id}").status_code == 204
    assert fleet.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{device.id}").status_code == 404


def test_device_list_filters_by_site_and_pages(fleet: Fleet) -> None:
    for _ in range(3):
        fleet.enroll(site="list-site")
    viewer = fleet.client(role=Role.VIEWER)
    page = viewer.get("/api/v1/admin/devices", params={"site": "list-site", "limit": 2}).json()
    assert len(page["devices"]) == 2
    assert page["total"] == 3
    assert {d["site"] for d in page["devices"]} == {"list-site"}
    rest = viewer.get("/api/v1/admin/devices", params={"site": "list-site", "limit": 2, "offset": 2}).json()
    assert len(rest["devices"]) == 1


def test_health_readiness_metrics_and_openapi(fleet: Fleet) -> None:
    client = fleet.client()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    fleet.enroll()
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'edgefleet_enrollments_total{result="enrolled"}' in metrics.text
    assert "edgefleet_devices " in metrics.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/enroll", "/api/v1/devices/{device_id}/desired", "/api/v1/devices/{device_id}/status",
            "/api/v1/admin/devices", "/api/v1/admin/bootstrap-tokens"} <= set(paths)
