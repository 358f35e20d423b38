"""Operators sign in through a real OpenID Connect provider (panva's oidc-provider under
node, ``tests/oidc_world.py``): the dashboard with the authorization code flow and PKCE,
the CLI from a loopback redirect and a token exchange; the role and scope come from the
groups in the ID token, and a token for another client, an altered one, or one whose
groups have no role here gets nothing."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest

from edgefleet.credentials import Role, pkce_challenge
from edgefleet.protocol.v1 import ID_TOKEN_TYPE, TOKEN_EXCHANGE
from edgefleet.server.settings import OidcSettings
from edgefleet.util.ports import free_port
from tests.conftest import Device, Fleet, need, start_fleet
from tests.oidc_world import oidc_provider, sign_in_at_provider

CHROMIUM = "/usr/bin/chromium"
DASHBOARD_SECRET = "dashboard-client-secret-0123456789"
ACCOUNTS = {
    "alice": {"email": "alice@example.com", "groups": ["fleet-admins"]},
    "bob": {"email": "bob@example.com", "groups": ["berlin-ops", "staff"]},
    "mallory": {"email": "mallory@example.com", "groups": ["staff"]},
}


@dataclass
class World:
    plane: Fleet
    issuer: str
    devices: dict[str, Device]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    plane = start_fleet(tmp_path_factory.mktemp("oidc-plane"), None, oidc=OidcSettings(
        issuer=issuer, client_secret=DASHBOARD_SECRET,
        roles={"fleet-admins": "admin", "berlin-ops": "operator"}, scopes={"berlin-ops": "site in (berlin-*)"}))
    clients = [
        {"client_id": "edgefleet", "client_secret": DASHBOARD_SECRET,
         "redirect_uris": [f"{plane.url}/ui/oidc/callback"], "grant_types": ["authorization_code"],
         "response_types": ["code"]},
        {"client_id": "edgefleet-cli", "token_endpoint_auth_method": "none", "application_type": "native",
         "redirect_uris": ["http://127.0.0.1/callback"], "grant_types": ["authorization_code"],
         "response_types": ["code"]},
    ]
    try:
        with oidc_provider(port, clients, ACCOUNTS) as started:
            assert started == issuer
            devices = {site: plane.enroll(site=site) for site in ("berlin-1", "munich-1")}
            yield World(plane, issuer, devices)
    finally:
        plane.close()


def id_token_for(world: World, login: str, client_id: str, secret: str | None = None) -> str:
    """An ID token the provider issues to ``client_id`` after ``login`` signs in."""
    redirect = "http://127.0.0.1:9/callback" if secret is None else f"{world.plane.url}/ui/oidc/callback"
    verifier = secrets.token_urlsafe(48)
    url = f"{world.issuer}/auth?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect, "scope": "openid email groups",
        "state": "s", "nonce": "n", "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"})
    with httpx.Client() as browser:
        back = sign_in_at_provider(browser, url, login, redirect)
    code = parse_qs(urlparse(back).query)["code"][0]
    answer = httpx.post(f"{world.issuer}/token", auth=None if secret is None else (client_id, secret), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect, "code_verifier": verifier,
        "client_id": client_id})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["id_token"]
    return token


def exchange(world: World, token: str) -> httpx.Response:
    return world.plane.client().post("/api/v1/auth/oidc/token", data={
        "grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ID_TOKEN_TYPE})


def test_an_operator_signs_in_from_the_cli_and_gets_the_role_and_scope_of_their_group(
        world: World, tmp_path: Path) -> None:
    plane = world.plane
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
                   "EDGEFLEET_CONTEXTS": str(tmp_path / "contexts.json")}
    login = subprocess.Popen([sys.executable, "-m", "edgefleet", "login", plane.url, "--ca-file",
                              str(plane.settings.pki.ca_cert), "--oidc", "--no-browser", "--name", "fleet"],
                             env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert login.stderr is not None
        line = login.stderr.readline()
        assert line.startswith("sign in at: "), line
        url = line.removeprefix("sign in at: ").strip()
        loopback = parse_qs(urlparse(url).query)["redirect_uri"][0]  # where the CLI listens
        with httpx.Client() as browser:  # the operator's browser
            back = sign_in_at_provider(browser, url, "bob", loopback)
            assert browser.get(back).status_code == 200  # the CLI's loopback page
        out, err = login.communicate(timeout=60)
    finally:
        if login.poll() is None:
            login.kill()
            login.communicate()
    assert login.returncode == 0, err
    assert "signed in as operator within site in (berlin-*)" in out
    listed = subprocess.run([sys.executable, "-m", "edgefleet", "devices", "ls", "-o", "json"], env=environment,
                            capture_output=True, text=True, timeout=60, check=True)
    assert [d["id"] for d in json.loads(listed.stdout)["devices"]] == [world.devices["berlin-1"].id]
    tokens = plane.client(role=Role.ADMIN).get("/api/v1/admin/admin-tokens").json()["tokens"]
    mine = [t for t in tokens if t["name"] == "oidc:bob@example.com"]
    assert [(t["role"], t["scope"], t["state"]) for t in mine] == [("operator", "site in (berlin-*)", "active")]
    assert mine[0]["expires_at"] is not None  # a sign-in's token lives hours, not forever
    audited = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit").json()["entries"]
    assert any(e["action"] == "sign in" and e["actor"] == "oidc:bob@example.com" for e in audited)


def test_an_id_token_for_another_client_an_altered_one_a_spent_one_or_one_without_a_role_gets_nothing(
        world: World) -> None:
    for_the_dashboard = id_token_for(world, "alice", "edgefleet", DASHBOARD_SECRET)
    refused = exchange(world, for_the_dashboard)  # its audience is the dashboard, not the CLI
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "oidc_refused")
    good = id_token_for(world, "alice", "edgefleet-cli")
    head, body, signature = good.split(".")
    claims = json.loads(_unpad(body))
    forged_body = _pad_b64(json.dumps({**claims, "groups": ["fleet-admins", "root"]}).encode())
    for altered in (f"{head}.{forged_body}.{signature}", f"{head}.{body}.{signature[:-4]}AAAA", good[:-1]):
        answer = exchange(world, altered)
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, "oidc_refused"), altered
    no_role = exchange(world, id_token_for(world, "mallory", "edgefleet-cli"))
    assert (no_role.status_code, no_role.json()["error"]["code"]) == (403, "oidc_no_role")
    wrong_kind = world.plane.client().post("/api/v1/auth/oidc/token", data={
        "grant_type": "password", "subject_token": good, "subject_token_type": ID_TOKEN_TYPE})
    assert wrong_kind.status_code == 422
    admin = exchange(world, good)
    assert admin.status_code == 200, admin.text
    assert (admin.json()["role"], admin.json()["scope"]) == ("admin", None)
    again = exchange(world, good)  # a copy of it (a log, a shell history) signs nobody in
    assert (again.status_code, again.json()["error"]["code"]) == (401, "oidc_refused")
    assert world.plane.client(token=admin.json()["access_token"]).get("/api/v1/admin/audit").status_code == 200


def test_the_dashboard_signs_an_operator_in_through_the_provider(world: World) -> None:
    if shutil.which("chromium") is None:
        need("chromium", "Debian's chromium is not installed")
    from playwright.async_api import async_playwright, expect

    base = world.plane.url

    async def steps() -> None:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
            page = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await page.goto(f"{base}/ui/")
            await expect(page).to_have_url(f"{base}/ui/login")
            await page.click("#oidc")
            await page.fill("input[name=login]", "bob")  # the provider's own sign-in page
            await page.fill("input[name=password]", "anything")
            await page.click("button[type=submit]")
            await page.click("button[type=submit]")  # its consent page
            await expect(page.locator("h1")).to_contain_text("Fleet:")
            await expect(page.locator("#total")).to_have_text("1")  # bob's group sees Berlin only
            await expect(page.locator("header")).to_contain_text("oidc:bob@example.com")
            await browser.close()

    asyncio.run(steps())
    # A callback that did not start in this browser is refused, and starts no session.
    with httpx.Client(base_url=base, verify=world.plane.tls()) as stranger:
        answer = stranger.get("/ui/oidc/callback", params={"code": "stolen", "state": "guess"})
        assert answer.status_code == 401
        assert "edgefleet_session" not in answer.headers.get("set-cookie", "")
        stranger.cookies.set("edgefleet_oidc", "a.b.c", path="/ui/oidc")
        answer = stranger.get("/ui/oidc/callback", params={"code": "stolen", "state": "guess"})
        assert answer.status_code == 401
        assert "edgefleet_session" not in answer.headers.get("set-cookie", "")


def _unpad(part: str) -> bytes:
    import base64
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _pad_b64(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
