"""The fleet dashboard in Debian's Chromium, driven by Playwright, against a real control
plane and emulated devices: log in, see the fleet, open a device, watch a rollout advance
to its approval gate, approve the next wave, see it halt on a tampered device's failed
attestation with the reason and the alert it raised; a viewer sees no operator buttons and
cannot use the verbs.
The technician's page, served by the agent, works with the control plane stopped.
Screenshots go to .cache/screenshots/."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.agent import Agent, AgentSettings
from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.credentials import Role
from tests.ab_world import RUNNING, SLOT_BYTES, AbWorld, until
from tests.conftest import need, start_fleet
from tests.test_rollouts import CHECKS, enrolled, fleet_of, rollout, run_fleet, status
from tests.test_telemetry_hub import free_port

SCREENSHOTS = Path(__file__).resolve().parent.parent / ".cache" / "screenshots"
CHROMIUM = "/usr/bin/chromium"


async def sign_in(page: Any, world: AbWorld, role: Role) -> None:
    """Through the login form, as a person would: the fleet's overview follows."""
    from playwright.async_api import expect

    base = world.plane.url
    await page.goto(f"{base}/ui/")
    await expect(page).to_have_url(f"{base}/ui/login")
    await page.fill("input[name=token]", world.plane.tokens[role])
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_contain_text("Fleet:")


async def signed_in_page(playwright: Any, world: AbWorld, role: Role) -> tuple[Any, Any]:
    """Debian's Chromium, and a page of it signed in to the dashboard as ``role``."""
    browser = await playwright.chromium.launch(
        executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
    page = await (await browser.new_context(ignore_https_errors=True)).new_page()
    await sign_in(page, world, role)
    return browser, page


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AbWorld]:
    if shutil.which("chromium") is None:
        need("chromium", "Debian's chromium is not installed")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        need("playwright", "the playwright package is not installed")
    plane = start_fleet(tmp_path_factory.mktemp("ui-plane"), None, rollout_tick_seconds=0.2)
    world = AbWorld(plane, tmp_path_factory.mktemp("ui"))
    factory = world.tmp / "factory.img"
    factory.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES))
    update = world.tmp / "2026.12.0.img"
    update.write_bytes(vimage.build("2026.12.0", 12, size=SLOT_BYTES, health_checks=CHECKS, filler=b"2026.12.0"))
    for version, counter, image in ((RUNNING, 1, factory), ("2026.12.0", 12, update)):
        pcrs = reference_pcrs(image)
        world.publish(version, counter, image=image, measurements={0: pcrs[0].hex(), 4: pcrs[4].hex()})
    yield world
    time.sleep(3)  # the devices' last long polls end before the server stops
    plane.close()


def test_an_operator_watches_approves_and_sees_a_halt_and_a_viewer_gets_no_buttons(world: AbWorld) -> None:
    from playwright.async_api import Page, async_playwright, expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    devices = fleet_of(world, "ui", 4, tampered=3)  # the tampered device is in the second wave
    base = world.plane.url

    async def login(page: Page, role: Role) -> None:
        await sign_in(page, world, role)

    async def steps() -> None:
        await enrolled(devices)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
            operator = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await login(operator, Role.OPERATOR)
            await expect(operator.locator("#total")).to_have_text("4")
            await operator.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)
            await operator.click("text=Devices")
            await operator.click(f"text={devices[0].agent.device_id}")  # type: ignore[union-attr]
            await expect(operator.locator("#device-id")).to_have_text(str(devices[0].agent.device_id))  # type: ignore[union-attr]
            await expect(operator.locator("#attestation")).to_contain_text("passed")
            await operator.screenshot(path=SCREENSHOTS / "device.png", full_page=True)

            rollout_id = rollout(world, "ui", "2026.12.0", [{"size": "1", "selector": {"ring": "canary"}},
                                                            {"size": "100%"}], approval_between_waves=True)
            await operator.goto(f"{base}/ui/rollouts/{rollout_id}")
            status_text = operator.locator("#rollout-status")
            await expect(status_text).to_have_text("awaiting_approval", timeout=60_000)  # it advanced, by itself
            await expect(operator.locator("svg.chart")).to_contain_text("succeeded: 1")
            await operator.screenshot(path=SCREENSHOTS / "rollout-awaiting-approval.png", full_page=True)

            viewer = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await login(viewer, Role.VIEWER)
            await viewer.goto(f"{base}/ui/rollouts/{rollout_id}")
            await expect(viewer.locator("#rollout-status")).to_have_text("awaiting_approval")
            assert await viewer.locator(".verbs button").count() == 0
            refused = await viewer.request.post(f"{base}/ui/rollouts/{rollout_id}/approve")
            assert refused.status == 403
            await viewer.screenshot(path=SCREENSHOTS / "rollout-viewer.png", full_page=True)

            await operator.click("#approve")
            await expect(status_text).to_have_text("halted", timeout=90_000)
            await expect(operator.locator("#rollout-reason")).to_contain_text("attestation failed on")
            await operator.screenshot(path=SCREENSHOTS / "rollout-halted.png", full_page=True)
            # The device that halted it: red, quarantined, with the failing check and the way out.
            await operator.goto(f"{base}/ui/devices/{devices[3].agent.device_id}")  # type: ignore[union-attr]
            await expect(operator.locator("#attestation")).to_have_class("att-quarantined")
            await expect(operator.locator("#attestation")).to_have_css("color", "rgb(192, 57, 43)")
            await expect(operator.locator("#attestation-reason")).to_contain_text("PCR")
            await expect(operator.locator("#attestation-reason")).to_contain_text("release-quarantine")
            await operator.screenshot(path=SCREENSHOTS / "device-quarantined.png", full_page=True)
            assert await operator.locator("#release-quarantine").count() == 0  # an admin's verb

            asked: list[str] = []

            def answer(accept: bool) -> Any:
                async def handler(dialog: Any) -> None:
                    asked.append(dialog.message)
                    await (dialog.accept() if accept else dialog.dismiss())
                return handler

            # An admin releases it, after saying yes; it attests afresh (it runs the good slot again).
            admin = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await login(admin, Role.ADMIN)
            await admin.goto(f"{base}/ui/devices/{devices[3].agent.device_id}")  # type: ignore[union-attr]
            admin.once("dialog", answer(True))
            await admin.click("#release-quarantine")
            await expect(admin.locator("#attestation")).not_to_have_class("att-quarantined", timeout=30_000)

            # Abort asks first: saying no changes nothing; yes aborts; then its devices can be reverted.
            await operator.goto(f"{base}/ui/rollouts/{rollout_id}")
            operator.once("dialog", answer(False))
            await operator.click("#abort")
            await operator.wait_for_timeout(500)
            assert "Abort rollout" in asked[-1]
            assert status(world, rollout_id)["status"] == "halted"
            operator.once("dialog", answer(True))
            await operator.click("#abort")
            await expect(status_text).to_have_text("aborted", timeout=30_000)
            operator.once("dialog", answer(True))
            await operator.click("#revert")
            await expect(operator.locator("table.events")).to_contain_text("revert", timeout=30_000)
            await operator.screenshot(path=SCREENSHOTS / "rollout-reverted.png", full_page=True)
            await operator.click("header >> text=Events")
            await expect(operator.locator("#alerts")).to_contain_text("rollout_halted")
            await expect(operator.locator("#trail")).to_contain_text("attestation failed on")
            await operator.click("header >> text=Releases")
            await expect(operator.locator("#releases")).to_contain_text("2026.12.0")
            assert await operator.locator("#releases tr.release").count() == 2  # releases only: no delta or index rows
            await operator.screenshot(path=SCREENSHOTS / "releases.png", full_page=True)
            await browser.close()
        assert status(world, rollout_id)["status"] == "aborted"
        # The canary the rollout updated goes back to the release it ran before.
        await until(lambda: devices[0].device.os_version() == RUNNING, timeout=60, what="the revert")

    run_fleet(devices, steps, timeout=300)


def test_an_operator_previews_a_rollout_in_the_dashboard_then_starts_it(world: AbWorld) -> None:
    from playwright.async_api import async_playwright, expect

    devices = fleet_of(world, "ui-start", 3)
    base = world.plane.url

    async def steps() -> None:
        await enrolled(devices)
        async with async_playwright() as playwright:
            browser, page = await signed_in_page(playwright, world, Role.OPERATOR)
            await page.goto(f"{base}/ui/rollouts")
            await page.click("#new-rollout")
            await page.select_option("#release", "2026.12.0")
            await page.fill("#selector", "fleet=nobody-here")
            await page.click("#preview")
            await expect(page.locator("#form-error")).to_contain_text("matches no device")
            assert await page.locator("#start").count() == 0  # nothing to start without a preview
            await page.fill("#selector", "fleet=ui-start")
            await page.fill("#waves", "1/0, 100%")
            await page.click("#preview")
            await expect(page.locator("h2")).to_contain_text("3 devices match")
            rows = page.locator("#preview-waves tr")
            await expect(rows).to_have_count(3)  # the header and two waves
            await expect(rows.nth(1)).to_contain_text("1")
            await expect(rows.nth(2)).to_contain_text("2")
            await page.screenshot(path=SCREENSHOTS / "rollout-start.png", full_page=True)
            await page.click("#start")
            await expect(page.locator("#rollout-status")).to_have_text("completed", timeout=60_000)
            await browser.close()

    run_fleet(devices, steps, timeout=180)
    assert all(d.device.os_version() == "2026.12.0" for d in devices)


def test_pages_without_a_session_send_the_browser_to_the_login_form(world: AbWorld) -> None:
    with httpx.Client(base_url=world.plane.url, verify=world.plane.tls()) as client:
        for path in ("/ui/", "/ui/devices", "/ui/rollouts"):
            answer = client.get(path)
            assert answer.status_code == 303
            assert answer.headers["location"] == "/ui/login"
        refused = client.post("/ui/login", data={"token": "efa_0123456789abcdef_" + "x" * 43})
        assert refused.status_code == 401
        assert "not valid" in refused.text
        client.cookies.set("edgefleet_session", "forged", path="/ui")
        assert client.get("/ui/").status_code == 303


def test_a_session_sees_the_pages_and_a_device_that_does_not_exist_is_404(world: AbWorld) -> None:
    with httpx.Client(base_url=world.plane.url, verify=world.plane.tls()) as client:
        answer = client.post("/ui/login", data={"token": world.plane.tokens[Role.VIEWER]})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "secure" in cookie
        for path in ("/ui/", "/ui/devices?site=nowhere", "/ui/rollouts", "/ui/events"):
            assert client.get(path).status_code == 200, path
        assert "2026.12.0" in client.get("/ui/releases").text
        missing = client.get("/ui/devices/dev-missing")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("text/html")  # a page with the reason, not raw JSON
        assert "device dev-missing not found" in missing.text
        assert client.get("/api/v1/admin/devices/dev-missing").headers["content-type"] == "application/json"



def test_the_technician_page_works_with_the_control_plane_stopped(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        need("chromium", "Debian's chromium is not installed")
    from playwright.async_api import async_playwright, expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    plane = start_fleet(tmp_path / "plane", None)
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id="hw-technician-1", site="store-7",
                                  os_version="2026.11.1")
    (tmp_path / "technician").write_text("open-sesame-42\n")
    port = free_port()
    settings = AgentSettings(server_url=plane.url, ca_file=plane.settings.pki.ca_cert, state_dir=device.agent_dir,
                             bootstrap_token=plane.bootstrap_token("store-7"), checkin_interval_seconds=0.2,
                             backoff_initial_seconds=0.05, backoff_max_seconds=0.3, status_interval_seconds=0.5,
                             local_ui=f"127.0.0.1:{port}", local_ui_token_file=tmp_path / "technician")
    agent = Agent(settings, device, site="store-7", capture_logs=True)
    page_url = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            while agent.reports < 1:
                assert not task.done(), task
                await asyncio.sleep(0.05)
            await asyncio.to_thread(plane.server.stop)  # the uplink is gone
            while agent.last_error is None:  # noqa: ASYNC110 - the agent's own attribute, polled
                await asyncio.sleep(0.05)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
                page = await browser.new_page()
                await page.goto(page_url)
                await expect(page).to_have_url(f"{page_url}/login")
                await page.fill("input[name=credential]", "wrong-credential")
                await page.click("button[type=submit]")
                await expect(page.locator(".error")).to_contain_text("not valid")
                await page.fill("input[name=credential]", "open-sesame-42")
                await page.click("button[type=submit]")
                await expect(page.locator("#device-id")).to_have_text(str(agent.device_id))
                await expect(page.locator("#os-version")).to_have_text("2026.11.1")
                await expect(page.locator("#uplink")).to_contain_text("unreachable")
                await expect(page.locator("#logs")).to_contain_text("edgefleet.agent")  # its own warnings
                assert int(await page.locator("#queued").inner_text()) >= 0
                await page.screenshot(path=SCREENSHOTS / "technician.png", full_page=True)
                await browser.close()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    try:
        asyncio.run(scenario())
    finally:
        plane.close()
    with httpx.Client() as client, pytest.raises(httpx.TransportError):  # the page is gone with the agent
        client.get(page_url)
