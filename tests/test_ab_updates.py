"""A/B updates on emulated devices against a real control plane: commit, automatic
rollback on a failed health check, on a boot that never reaches the agent, and at the
trial deadline; failed releases are not retried unless the operator asks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.enrollment import https_transport
from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.slotenv import TRIAL_TRIES, SlotEnv
from edgefleet.agent.state import StateDir
from edgefleet.credentials import Role
from edgefleet.protocol.v1 import AttestationResult, NonceIssuedView, QuoteSubmission, StatusAck, StatusReport
from edgefleet.web.device_client import DeviceTransport
from tests.ab_world import (
    RUNNING,
    SLOT_BYTES,
    AbWorld,
    OffsetClock,
    assign_until,
    enrolled,
    run,
    sqlite_plane,
    until,
)
from tests.cli_helpers import cli
from tests.conftest import Fleet

FAILING = [{"name": "app-ready", "kind": "command", "command": ["sh", "-c", "echo 'port 8443 in use' >&2; exit 3"],
            "timeout_seconds": 5}]
PASSING = [{"name": "app-ready", "kind": "command", "command": ["true"], "timeout_seconds": 5},
           {"name": "metrics-exporter", "kind": "command", "command": ["false"], "required": False}]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from sqlite_plane(tmp_path_factory, "ab-plane")


@pytest.fixture(scope="module")
def world(plane: Fleet, tmp_path_factory: pytest.TempPathFactory) -> AbWorld:
    world = AbWorld(plane, tmp_path_factory.mktemp("ab"))
    factory = world.tmp / "factory.img"  # what VirtualDevice.create flashes into slot A
    factory.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES))
    running = reference_pcrs(factory)
    world.publish(RUNNING, 1, image=factory, measurements={0: running[0].hex(), 4: running[4].hex()})
    world.publish("2026.12.0", 12, health_checks=PASSING)
    world.publish("2026.12.1", 13, health_checks=FAILING)
    world.publish("2026.12.2", 14, boots=False)
    world.publish("2026.12.3", 15, health_checks=[
        {"name": "stuck", "kind": "command", "command": ["sleep", "60"], "timeout_seconds": 120}])
    return world


def phases(world: AbWorld, device: object) -> list[str]:
    return [e["phase"] for e in world.history(device)]  # type: ignore[arg-type]


@pytest.mark.parametrize("bootloader", ["grub", "uboot"])
def test_device_updates_a_to_b_commits_and_keeps_a_as_fallback(world: AbWorld, bootloader: str) -> None:
    device = world.device(f"commit-{bootloader}", bootloader=bootloader)  # type: ignore[arg-type]

    async def steps() -> None:
        await assign_until(world, device, "2026.12.0", "committed")

    run(world, device, steps)
    record = world.record(device)
    assert record.running_version == "2026.12.0"
    assert device.device.booted() == "b"
    env = SlotEnv.parse(device.device.bootenv.read())
    assert (env.order, env.good) == (("b", "a"), frozenset({"a", "b"}))
    assert phases(world, device) == ["downloading", "downloaded", "installing", "installed", "rebooting",
                                     "trial_boot", "health_checking", "attesting", "committed"]
    assert record.update is not None
    checks = {c["name"]: c["passed"] for c in record.update["health_checks"]}
    assert checks == {"app-ready": True, "metrics-exporter": False}  # a wanted check may fail
    assert device.boots == 2
    assert device.agent is not None
    assert device.agent.device_id is not None
    shown = cli("devices", "updates", device.agent.device_id, *world.server)
    assert "committed" in shown
    assert "running 2026.12.0" in shown


def test_failed_required_health_check_rolls_back_by_itself_and_is_not_retried(world: AbWorld) -> None:
    device = world.device("unhealthy")

    async def steps() -> None:
        await assign_until(world, device, "2026.12.1", "rolled_back")
        boots = device.boots
        await asyncio.sleep(1.0)  # the director still assigns it: the device must not try again
        assert device.boots == boots
        await until(lambda: (world.record(device).update or {}).get("refused") is not None, what="refusal")
        await asyncio.to_thread(world.assign, device, "2026.12.1", retry_failed=True)
        await until(lambda: phases(world, device).count("rolled_back") == 2, what="second attempt")

    run(world, device, steps, timeout=90)
    record = world.record(device)
    assert record.running_version == "2026.11.0"
    assert device.device.booted() == "a"
    assert record.update is not None
    assert "app-ready" in record.update["reason"]
    assert "port 8443 in use" in record.update["reason"]
    assert record.update["failed_releases"] == ["2026.12.1"]
    history = world.history(device)
    assert [e["phase"] for e in history[:10]] == ["downloading", "downloaded", "installing", "installed",
                                                   "rebooting", "trial_boot", "health_checking", "rolling_back",
                                                   "rolled_back", "downloading"]
    env = SlotEnv.parse(device.device.bootenv.read())
    assert (env.order, env.good) == (("a",), frozenset({"a"}))


def test_release_that_never_boots_rolls_back_when_its_try_is_used_up(world: AbWorld) -> None:
    device = world.device("panics", bootloader="uboot")

    async def steps() -> None:
        await assign_until(world, device, "2026.12.2", "rolled_back")

    run(world, device, steps)
    record = world.record(device)
    assert record.update is not None
    assert "tries exhausted" in record.update["reason"]
    assert record.running_version == "2026.11.0"
    assert device.boots == 2 + TRIAL_TRIES  # factory boot, every try of B (none reached the agent), back on A
    assert phases(world, device)[-2:] == ["rebooting", "rolled_back"]


def test_power_cut_during_the_download_resumes_it_after_the_boot(world: AbWorld,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent that starts with a download in progress verifies the assignment again and
    resumes; it once tried the download first, failed for want of the verified plan, and
    retried that forever without ever checking the assignment again."""
    from edgefleet.agent import delivery
    from edgefleet.errors import TransportError

    link = {"up": False, "tries": 0}
    real_fetch = delivery.fetch_target

    def fetch(*args: object, **kwargs: object) -> object:
        if not link["up"]:
            link["tries"] += 1
            raise TransportError("the link dropped mid-download (test)")
        return real_fetch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(delivery, "fetch_target", fetch)
    device = world.device("cut-downloading")

    async def downloading() -> None:
        await assign_until(world, device, "2026.12.0", "downloading")
        await until(lambda: link["tries"] >= 1, what="a download attempt")

    run(world, device, downloading)  # then the power goes

    async def resumed() -> None:
        link["up"] = True
        await until(lambda: world.record(device).update_state == "committed", what="the commit")

    run(world, device, resumed)
    assert world.record(device).running_version == "2026.12.0"


def test_hung_trial_is_rolled_back_by_the_watchdog_at_its_deadline(world: AbWorld) -> None:
    device = world.device("hung", trial_deadline_seconds=2)

    async def steps() -> None:
        await assign_until(world, device, "2026.12.3", "rolled_back", timeout=40)

    run(world, device, steps)
    record = world.record(device)
    assert record.update is not None
    assert "deadline" in record.update["reason"]
    assert device.device.booted() == "a"


def test_an_agent_stopped_mid_trial_leaves_no_task_behind(world: AbWorld, caplog: pytest.LogCaptureFixture) -> None:
    """Its trial watchdog once outlived the agent (the check-in loop ended by an exception
    and skipped cancelling it) and died on the closed telemetry database at Ctrl-C; and a
    hung health check held the process up until the check's own timeout."""
    device = world.device("stopped-mid-trial")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(device.run(stop))
        await assign_until(world, device, "2026.12.3", "health_checking", timeout=40)
        stop.set()
        await asyncio.wait_for(task, 20)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # The check the shutdown killed is not a verdict on the release: the trial resumes at the next start.
    assert world.record(device).update_state == "health_checking"
    assert "rolling_back" not in phases(world, device)


def test_trial_that_fails_attestation_against_the_new_release_rolls_back(world: AbWorld, tmp_path: Path) -> None:
    tpm = InsecureSoftwareTpm(tmp_path / "tpm")
    device = world.device("attested", tpm=tpm)
    # The new release's signed reference measurement is not what its image measures.
    world.publish("2026.12.4", 16, health_checks=PASSING, measurements={4: "ab" * 32})

    async def steps() -> None:
        await until(lambda: device.agent is not None and device.agent.attested is True, what="first attestation")
        await assign_until(world, device, "2026.12.4", "rolled_back")

    run(world, device, steps)
    record = world.record(device)
    assert record.update is not None
    assert record.update["reason"] == "attestation against the new release failed"
    assert record.running_version == "2026.11.0"
    assert record.attestation is not None
    assert record.attestation["quarantined"]  # an operator looks before it gets configuration again
    assert phases(world, device)[-4:] == ["health_checking", "attesting", "rolling_back", "rolled_back"]


class AttestationCalls:
    """The real transport, its reports and attestation requests noted in order."""

    def __init__(self, inner: DeviceTransport, calls: list[str]) -> None:
        self.inner, self.calls = inner, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def report_status(self, device_id: str, report: StatusReport) -> StatusAck:
        ack = await self.inner.report_status(device_id, report)
        if report.challenge:
            self.calls.append("report+challenge" if ack.challenge is not None else "report, no challenge")
        return ack

    async def attestation_nonce(self, device_id: str) -> NonceIssuedView:
        self.calls.append("nonce")
        return await self.inner.attestation_nonce(device_id)

    async def submit_quote(self, device_id: str, quote: QuoteSubmission) -> AttestationResult:
        self.calls.append("quote")
        return await self.inner.submit_quote(device_id, quote)


def test_an_updates_quote_takes_the_nonce_that_came_with_the_report_before_it(world: AbWorld,
                                                                               tmp_path: Path) -> None:
    calls: list[str] = []

    def transport(settings: AgentSettings, state_dir: StateDir, enrolled: bool) -> DeviceTransport:
        inner = https_transport(settings, state_dir, enrolled)
        return AttestationCalls(inner, calls) if enrolled else inner

    device = world.device("challenged", tpm=InsecureSoftwareTpm(tmp_path / "tpm"),
                          agent_options={"transport_factory": transport})
    image = world.tmp / "2026.12.5.img"
    image.write_bytes(vimage.build("2026.12.5", 17, size=SLOT_BYTES, health_checks=PASSING))
    measured = reference_pcrs(image)  # what its boot measures: the quote passes
    world.publish("2026.12.5", 17, image=image, measurements={0: measured[0].hex(), 4: measured[4].hex()})

    async def steps() -> None:
        await until(lambda: device.agent is not None and device.agent.attested is True, what="first attestation")
        await assign_until(world, device, "2026.12.5", "committed")

    run(world, device, steps)
    assert phases(world, device)[-2:] == ["attesting", "committed"]
    # Each start quotes on a nonce it asks for; the update's quote on the one its report brought.
    assert calls[:4] == ["nonce", "quote", "nonce", "quote"]
    update = calls[4:]  # the trial's: its reports in the attesting phase ask for the challenge
    assert update[-1] == "quote"
    assert set(update[:-1]) == {"report+challenge"}


def test_the_release_downloads_before_the_install_window_and_the_slot_switches_only_inside_it(
        world: AbWorld) -> None:
    """A group's install window (02:00-03:00 UTC): the bytes arrive at noon, when the
    assignment comes (downloads have their own window, open by default); the slot is
    written, and the device reboots into it, only once the window opens."""
    noon = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    clock = OffsetClock(noon)
    device = world.device("windowed", update_check_seconds=0.5, status_interval_seconds=0.3,
                          agent_options={"clock": clock})
    window = {"cron": "0 2 * * *", "timezone": "UTC", "duration_minutes": 60}

    async def steps() -> None:
        await enrolled(device)
        url = f"/api/v1/admin/devices/{world.device_id(device)}/desired"
        operator = world.plane.client(role=Role.OPERATOR)
        # The windows travel in the configuration, which the director signs.
        document = {"config": {"group": "windowed", "maintenance": {"install": [window]}}}
        answer = await asyncio.to_thread(operator.put, url, json={"document": document})
        assert answer.status_code == 200, answer.text
        version = answer.json()["version"]
        # The device knows its windows before it is told the release (an update check that
        # came first would see no windows, which means always open).
        await until(lambda: world.record(device).desired_version_applied == version, what="the windows")
        await asyncio.to_thread(world.assign, device, "2026.12.0")
        await until(lambda: world.record(device).update_state == "downloaded", what="the download")
        await asyncio.sleep(2.0)  # several update checks: none may install outside the window
        assert world.record(device).update_state == "downloaded"
        assert (vimage.read_header(device.device.slot_image("b")) or {}).get("version") != "2026.12.0"  # not written
        assert device.boots == 1
        assert any((device.device.agent_dir / "downloads").iterdir())  # the bytes are here, verified
        clock.set(datetime(2026, 12, 8, 2, 0, 30, tzinfo=UTC))  # the window opens
        await until(lambda: world.record(device).update_state == "committed", timeout=40, what="the commit")

    run(world, device, steps, timeout=90)
    events = {e["phase"]: datetime.fromisoformat(e["at"]) for e in world.history(device)}
    assert events["downloaded"] < datetime(2026, 12, 8, 2, 0, tzinfo=UTC)
    for phase in ("installing", "installed", "rebooting", "committed"):
        assert datetime(2026, 12, 8, 2, 0, tzinfo=UTC) <= events[phase] < datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
    assert device.device.booted() == "b"
