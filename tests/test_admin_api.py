"""Admin API: bearer tokens with roles viewer < operator < admin."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import yaml
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.credentials import Role
from edgefleet.server.local import create_admin_token
from tests.cli_helpers import cli, server_args
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


def test_bootstrap_tokens_are_listed_with_their_fate_and_a_revoked_one_enrolls_nothing(fleet: Fleet) -> None:
    operator = fleet.client(role=Role.OPERATOR)
    spent, spare = fleet.bootstrap_token("store-7"), fleet.bootstrap_token("store-7")
    enrolled = fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(spent, site="store-7"))
    assert enrolled.status_code == 201, enrolled.text
    spare_id = spare.split("_")[1]
    assert operator.delete(f"/api/v1/admin/bootstrap-tokens/{spare_id}").status_code == 204
    assert operator.delete(f"/api/v1/admin/bootstrap-tokens/{spare_id}").status_code == 204  # idempotent
    refused = fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(spare, site="store-7"))
    assert refused.status_code == 401
    listed = {t["id"]: t for t in operator.get("/api/v1/admin/bootstrap-tokens").json()["tokens"]}
    assert listed[spent.split("_")[1]]["state"] == "used"
    assert listed[spent.split("_")[1]]["device_id"] == enrolled.json()["device_id"]
    assert listed[spare_id]["state"] == "revoked"
    assert all("secret" not in key for token in listed.values() for key in token)
    assert operator.delete("/api/v1/admin/bootstrap-tokens/00000000000000ff").status_code == 404
    assert fleet.client(role=Role.VIEWER).get("/api/v1/admin/bootstrap-tokens").status_code == 403
    shown = cli("tokens", "list", *server_args(fleet))
    assert spare_id in shown
    assert "revoked" in shown


def test_an_admin_token_revoked_by_an_admin_is_refused_from_the_next_request(fleet: Fleet) -> None:
    token = asyncio.run(create_admin_token(fleet.settings, name="leaver", role=Role.OPERATOR, now=fleet.clock.now(),
                                           ttl=None))
    token_id = token.split("_")[1]
    assert fleet.client(token=token).get("/api/v1/admin/devices").status_code == 200
    assert fleet.client(token=token).delete(f"/api/v1/admin/admin-tokens/{token_id}").status_code == 403  # operator
    listed = {t["name"]: t for t in fleet.client(role=Role.ADMIN).get("/api/v1/admin/admin-tokens").json()["tokens"]}
    assert listed["leaver"]["state"] == "active"
    cli("tokens", "revoke", token_id, "--admin", *server_args(fleet))
    assert fleet.client(token=token).get("/api/v1/admin/devices").status_code == 401
    listed = {t["name"]: t for t in fleet.client(role=Role.ADMIN).get("/api/v1/admin/admin-tokens").json()["tokens"]}
    assert listed["leaver"]["state"] == "revoked"
    assert "leaver" in cli("tokens", "list", "--admin", *server_args(fleet))


def test_the_device_list_filters_by_labels_and_by_a_piece_of_the_id(fleet: Fleet) -> None:
    canary = fleet.enroll(site="store-f", labels={"ring": "canary-f", "fleet": "filter"})
    main = fleet.enroll(site="store-f", labels={"ring": "main-f", "fleet": "filter"})
    viewer = fleet.client(role=Role.VIEWER)

    def listed(**params: str) -> set[str]:
        answer = viewer.get("/api/v1/admin/devices", params={"limit": 1000, **params})
        assert answer.status_code == 200, answer.text
        return {d["id"] for d in answer.json()["devices"]}

    assert listed(selector="fleet=filter") == {canary.id, main.id}
    assert listed(selector="fleet=filter, ring=canary-f") == {canary.id}
    assert listed(selector="fleet=filter", q=main.id[-8:]) == {main.id}
    assert listed(q="%") == set()  # a pattern character is only itself
    shown = cli("devices", "ls", "-l", "fleet=filter", "-l", "ring=canary-f", "-o", "wide", *server_args(fleet))
    assert canary.id in shown
    assert main.id not in shown
    assert "ring=canary-f" in shown  # the labels column
    refused = viewer.get("/api/v1/admin/devices", params={"selector": "no-equals-sign"})
    assert refused.status_code == 422
    assert "selector" in refused.json()["error"]["message"]


def test_listing_and_showing_commands_print_the_same_data_as_json_or_yaml(fleet: Fleet) -> None:
    device = fleet.enroll(site="store-y", labels={"fleet": "yaml"})
    for words in (["devices", "ls", "-l", "fleet=yaml"], ["devices", "show", device.id],
                  ["devices", "updates", device.id], ["devices", "pending"], ["rollout", "ls"],
                  ["tokens", "list"], ["tokens", "list", "--admin"], ["audit", "list", "--limit", "5"]):
        as_json = json.loads(cli(*words, "-o", "json", *server_args(fleet)))
        as_yaml = yaml.safe_load(cli(*words, "-o", "yaml", *server_args(fleet)))
        assert as_yaml == as_json, words  # reading makes no audit row: both saw the same
    listed = yaml.safe_load(cli("devices", "ls", "-l", "fleet=yaml", "-o", "yaml", *server_args(fleet)))
    assert [d["id"] for d in listed["devices"]] == [device.id]
    wrong = CliRunner().invoke(app, ["devices", "ls", "-o", "xml", *server_args(fleet)])
    assert wrong.exit_code == 2
    assert "-o is one of table, wide, json, yaml" in wrong.output
