"""Operators limited to part of the fleet: a token scoped to ``site in (berlin-*)`` sees and
acts on Berlin's devices and the rollouts that keep to them, in the API, the CLI and the
dashboard alike; anything else is not found, and fleet-wide actions are refused."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.credentials import Role
from edgefleet.protocol.scope import ScopeError, parse_scope
from edgefleet.server.local import create_admin_token
from tests.cli_helpers import cli, keys_init, release
from tests.conftest import Device, Fleet, need, start_fleet

CHROMIUM = "/usr/bin/chromium"


def test_a_scope_admits_devices_and_covers_selectors_as_written() -> None:
    scope = parse_scope("site in (berlin-*, potsdam-01), ring=canary")
    assert str(scope) == "site in (berlin-*, potsdam-01), ring=canary"
    assert scope.admits("berlin-7", {"ring": "canary"})
    assert scope.admits("potsdam-01", {"ring": "canary", "other": "x"})
    assert not scope.admits("Berlin-7", {"ring": "canary"})  # case matters, as in the database
    assert not scope.admits("munich-1", {"ring": "canary"})
    assert not scope.admits("berlin-7", {})
    # A rollout's selector is covered only if it pins every scoped key inside the scope:
    # devices that join it later then cannot fall outside.
    assert scope.covers({"site": "berlin-2", "ring": "canary", "model": "pos"})
    assert not scope.covers({"ring": "canary"})
    assert not scope.covers({"site": "munich-1", "ring": "canary"})
    for bad in ("", "site", "site in (", "site=a,site=b", "site=a b", "site in (a,,b)", "site=%", "x" * 1001):
        with pytest.raises(ScopeError):
            parse_scope(bad)


@pytest.fixture(params=["sqlite", "postgresql"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A control plane with a database of its own: what a scope lists is all there is."""
    database = None if request.param == "sqlite" else request.getfixturevalue("own_postgres_url")
    fleet = start_fleet(tmp_path / "plane", database)
    yield fleet
    fleet.close()


def scoped_token(plane: Fleet, role: Role, scope: str) -> str:
    return asyncio.run(create_admin_token(plane.settings, name=f"berlin-{role}", role=role,
                                          now=plane.clock.now(), ttl=None, scope=parse_scope(scope)))


def enroll_sites(plane: Fleet) -> dict[str, Device]:
    return {site: plane.enroll(site=site, labels={"ring": "canary"})
            for site in ("berlin-1", "berlin-2", "munich-1")}


def test_a_scoped_operator_sees_and_acts_on_its_devices_only_through_the_api(
        plane: Fleet, tmp_path: Path) -> None:
    devices = enroll_sites(plane)
    berlin = plane.client(token=scoped_token(plane, Role.OPERATOR, "site in (berlin-*)"))
    listed = berlin.get("/api/v1/admin/devices").json()
    assert sorted(d["site"] for d in listed["devices"]) == ["berlin-1", "berlin-2"]
    assert listed["total"] == 2
    assert berlin.get("/api/v1/admin/devices", params={"site": "munich-1"}).json()["devices"] == []
    munich = devices["munich-1"].id
    for answer in (berlin.get(f"/api/v1/admin/devices/{munich}"),
                   berlin.get(f"/api/v1/admin/devices/{munich}/updates"),
                   berlin.get(f"/api/v1/admin/devices/{munich}/desired"),
                   berlin.get(f"/api/v1/admin/devices/{munich}/telemetry"),
                   berlin.put(f"/api/v1/admin/devices/{munich}/assignment", json={"release": "2026.12.0"})):
        assert answer.status_code == 404, answer.text  # as if it were not there
    assert berlin.get(f"/api/v1/admin/devices/{devices['berlin-1'].id}").status_code == 200
    # Enrolling: only devices that will be in its scope.
    refused = berlin.post("/api/v1/admin/bootstrap-tokens", json={"site": "munich-2", "ttl_seconds": 60})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "out_of_scope")
    assert berlin.post("/api/v1/admin/bootstrap-tokens", json={"site": "berlin-3", "ttl_seconds": 60}
                       ).status_code == 201
    # Fleet-wide things are not a scoped token's.
    for answer in (berlin.get("/api/v1/admin/bootstrap-tokens"), berlin.get("/api/v1/admin/alerts"),
                   berlin.post("/api/v1/admin/gitops/sync")):
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "fleet_wide_only"), answer.text
    # A scoped admin may revoke its own devices, not another site's.
    berlin_admin = plane.client(token=scoped_token(plane, Role.ADMIN, "site in (berlin-*)"))
    assert berlin_admin.post(f"/api/v1/admin/devices/{munich}/revoke", json={"reason": "test"}).status_code == 404
    assert berlin_admin.get("/api/v1/admin/audit").status_code == 403
    assert plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{munich}").json()["revoked"] is None

    # Rollouts: it starts only what keeps to its scope, and sees only those.
    keys, ws = keys_init(plane, tmp_path)
    image = tmp_path / "os.img"
    image.write_bytes(b"2026.12.0")
    release(ws, keys, image, "2026.12.0", 2, "hw-any", publish_to=plane)
    body = {"release": "2026.12.0", "waves": [{"size": "100%"}]}
    wide = berlin.post("/api/v1/admin/rollouts", json={**body, "selector": {"ring": "canary"}})
    assert (wide.status_code, wide.json()["error"]["code"]) == (403, "out_of_scope")
    mine = berlin.post("/api/v1/admin/rollouts", json={**body, "selector": {"site": "berlin-1"}})
    assert mine.status_code == 201, mine.text
    theirs = plane.client(role=Role.OPERATOR).post("/api/v1/admin/rollouts",
                                                   json={**body, "selector": {"site": "munich-1"}}).json()["id"]
    assert [r["id"] for r in berlin.get("/api/v1/admin/rollouts").json()["rollouts"]] == [mine.json()["id"]]
    assert berlin.get(f"/api/v1/admin/rollouts/{theirs}").status_code == 404
    assert berlin.post(f"/api/v1/admin/rollouts/{theirs}/pause").status_code == 404
    assert berlin.post(f"/api/v1/admin/rollouts/{theirs}/abort/now", json={"revert": False}).status_code == 404
    assert berlin.post(f"/api/v1/admin/rollouts/{mine.json()['id']}/pause").status_code == 200
    assert plane.client(role=Role.VIEWER).get(f"/api/v1/admin/rollouts/{theirs}").json()["status"] != "paused"


def test_the_cli_mints_a_scoped_token_and_lists_what_it_sees(plane: Fleet, tmp_path: Path) -> None:
    devices = enroll_sites(plane)
    printed = cli("tokens", "create-admin", "--data-dir", str(plane.settings.data_dir),
                  *(["--database-url", plane.settings.database_url] if plane.settings.database_url else []),
                  "--name", "berlin-ops", "--role", "operator", "--scope", "site in (berlin-*)")
    token = printed.strip().splitlines()[0]
    args = ["--server", plane.url, "--token", token, "--ca-file", str(plane.settings.pki.ca_cert)]
    shown = json.loads(cli("devices", "ls", *args, "-o", "json"))["devices"]
    assert sorted(d["id"] for d in shown) == sorted(devices[s].id for s in ("berlin-1", "berlin-2"))
    admin = ["--server", plane.url, "--token", plane.tokens[Role.ADMIN], "--ca-file", str(plane.settings.pki.ca_cert)]
    tokens = json.loads(cli("tokens", "list", "--admin", *admin, "-o", "json"))["tokens"]
    assert [t["scope"] for t in tokens if t["name"] == "berlin-ops"] == ["site in (berlin-*)"]
    refused = CliRunner().invoke(app, ["tokens", "create-admin", "--data-dir", str(plane.settings.data_dir),
                                       "--name", "x", "--scope", "site in ("])
    assert refused.exit_code != 0
    assert "--scope" in refused.output
    assert "Traceback" not in refused.output


def test_a_scoped_operators_dashboard_shows_and_opens_its_devices_only(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        need("chromium", "Debian's chromium is not installed")
    from playwright.async_api import async_playwright, expect

    plane = start_fleet(tmp_path / "plane", None)
    try:
        devices = enroll_sites(plane)
        token = scoped_token(plane, Role.OPERATOR, "site in (berlin-*)")
        base = plane.url

        async def steps() -> None:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
                page = await (await browser.new_context(ignore_https_errors=True)).new_page()
                await page.goto(f"{base}/ui/login")
                await page.fill("input[name=token]", token)
                await page.click("button[type=submit]")
                await expect(page.locator("#total")).to_have_text("2")  # its devices, not the fleet's 3
                await page.click("text=Devices")
                for site in ("berlin-1", "berlin-2"):
                    await expect(page.locator(f"text={devices[site].id}")).to_have_count(1)
                await expect(page.locator(f"text={devices['munich-1'].id}")).to_have_count(0)
                answer = await page.goto(f"{base}/ui/devices/{devices['munich-1'].id}")
                assert answer is not None
                assert answer.status == 404
                await expect(page.locator("body")).to_contain_text("not found")
                events = await page.goto(f"{base}/ui/events")
                assert events is not None
                assert events.status == 403
                await browser.close()

        asyncio.run(steps())
    finally:
        plane.close()
