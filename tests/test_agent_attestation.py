"""The real agent attests with a real TPM (swtpm) after the emulated firmware's measured
boot of its slot: the release's reference measurement comes from the same firmware code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest

from edgefleet.agent import Agent, AgentSettings
from edgefleet.agent.hardware import VirtualDevice
from edgefleet.agent.hardware.firmware import measured_boot, reference_pcrs
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from tests.conftest import Fleet, start_fleet
from tests.tpm_world import tpm2_or_skip

RELEASE = "2026.12.0"
BILLING = "https://billing.example"


@pytest.fixture
def released(tmp_path: Path) -> Iterator[tuple[Fleet, VirtualDevice]]:
    """A control plane with release 2026.12.0 published, its reference PCRs taken from the
    image the vdevice has in slot A, and that vdevice."""
    tpm2_or_skip()
    plane = start_fleet(tmp_path / "plane", None, attestation_required=True)
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id="hw-attest-1", site="store-1",
                                  hardware_type="hw-x86", os_version=RELEASE)
    reference = reference_pcrs(device.slot_image("a"))
    keys, workspace = Keystore(tmp_path / "keys"), Workspace(tmp_path / "ws")
    workspace.init(keys, load_online_keys(plane.settings.data_dir / "keys" / "online-keys.json"), datetime.now(UTC))
    workspace.create_release(device.slot_image("a"), ReleaseInfo(RELEASE, 1, ("hw-x86",), {
        "0": reference[0].hex(), "4": reference[4].hex()}), datetime.now(UTC))
    workspace.sign_targets(keys.signer("targets-1"))
    with AdminClient(plane.url, plane.tokens[Role.ADMIN], plane.settings.pki.ca_cert) as admin:
        publish_workspace(workspace, admin)
    # The image's TUF roots: without them the device fails closed and holds no workload token.
    device.install_trust((tmp_path / "ws" / "image" / "metadata" / "1.root.json").read_bytes(),
                         (tmp_path / "ws" / "director" / "metadata" / "1.root.json").read_bytes())
    yield plane, device
    plane.close()


def run_agent(plane: Fleet, device: VirtualDevice, emulator: Any,
              until: Callable[[Agent], bool] = lambda agent: True) -> Agent:
    """Run the agent until it attested, checked in once, and ``until`` holds."""
    tpm = tpm2_or_skip()(emulator.tcti)
    measured_boot(tpm, device.slot_image(device.booted()), device.event_log(), power_cycle=emulator.power_cycle)
    settings = AgentSettings(server_url=plane.url, ca_file=plane.settings.pki.ca_cert, state_dir=device.agent_dir,
                             bootstrap_token=plane.bootstrap_token("store-1"), checkin_interval_seconds=0.1,
                             backoff_initial_seconds=0.05, backoff_max_seconds=0.2, tpm=emulator.tcti)
    agent = Agent(settings, device, site="store-1", tpm=tpm)
    return run_until(agent, lambda: agent.attested is not None
                     and agent.checkins + (agent.last_error is not None) >= 1 and until(agent))


def run_until(agent: Agent, done: Callable[[], bool]) -> Agent:
    """Run ``agent`` until ``done()`` (a generous deadline), then stop it."""
    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 30
        while not done():
            assert not task.done(), task
            assert time.monotonic() < deadline, agent.last_error
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    return agent


def test_agent_attests_after_measured_boot_and_keeps_its_workloads_tokens(released: Any, emulator: Any) -> None:
    """A workload of the director-signed configuration declares a token for one audience:
    once the device has attested, the agent keeps it in the workload's directory."""
    plane, device = released
    token_file = device.agent_dir / "workloads" / "data" / "meter" / "tokens" / "billing.jwt"
    configured = False

    def token_kept(agent: Agent) -> bool:
        nonlocal configured
        if not configured and agent.device_id is not None:  # its group's configuration, signed by the director
            operator = plane.client(role=Role.OPERATOR)
            meter = {"name": "meter", "kind": "NativeService", "command": ["/bin/sleep", "600"],
                     "tokens": [{"path": "billing.jwt", "audience": BILLING}]}
            document = {"config": {"group": "meters", "workloads": {"native": [meter]}}}
            assert operator.put(f"/api/v1/admin/devices/{agent.device_id}/desired",
                                json={"document": document}).status_code == 200
            assert operator.put(f"/api/v1/admin/devices/{agent.device_id}/assignment",
                                json={"release": RELEASE}).status_code == 200
            configured = True
        return token_file.exists()

    agent = run_agent(plane, device, emulator, until=token_kept)
    assert agent.attested is True
    assert token_file.stat().st_mode & 0o777 == 0o640
    jwks = jwt.PyJWKSet.from_dict(plane.client().get("/.well-known/jwks.json").json())
    claims = jwt.decode(token_file.read_text(), jwks.keys[0].key, algorithms=["ES256"], audience=BILLING)
    assert claims["sub"] == f"spiffe://edgefleet.local/site/store-1/device/{agent.device_id}/workload/meter"
    assert claims["release"] == RELEASE
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{agent.device_id}").json()
    assert record["attestation"]["passed"] is True
    assert record["attestation"]["release"] == RELEASE


def test_agent_that_booted_a_tampered_slot_is_quarantined(released: Any, emulator: Any) -> None:
    plane, device = released
    image = device.slot_image("a")
    image.write_bytes(image.read_bytes().replace(RELEASE.encode(), b"2026.12.X"))  # modified after release
    agent = run_agent(plane, device, emulator)
    assert agent.attested is False
    assert not list((device.agent_dir / "workloads" / "data").glob("*/tokens/*"))
    assert agent.last_error is not None
    assert "quarantined" in agent.last_error
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{agent.device_id}").json()
    assert record["attestation"]["quarantined"] is True


def test_an_agent_without_a_tpm_that_the_server_refuses_says_which_setting_is_missing(released: Any) -> None:
    plane, device = released
    settings = AgentSettings(server_url=plane.url, ca_file=plane.settings.pki.ca_cert, state_dir=device.agent_dir,
                             bootstrap_token=plane.bootstrap_token("store-1"), checkin_interval_seconds=0.1,
                             backoff_initial_seconds=0.05, backoff_max_seconds=0.2)  # no tpm
    agent = Agent(settings, device, site="store-1")
    run_until(agent, lambda: "attestation_required" in (agent.last_error or ""))
    assert 'tpm = "device:/dev/tpmrm0"' in str(agent.last_error)  # the setting, by name, with an example
    assert agent.last_refused is True  # the technician's page says it answers but refuses, not "unreachable"


def test_a_host_that_no_image_of_ours_booted_reports_no_release(tmp_path: Path) -> None:
    from edgefleet.agent.hardware.linux import LinuxHost

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\n')
    assert LinuxHost(tmp_path).os_version() is None  # Debian's 12 is not a release
    (tmp_path / "etc" / "os-release").write_text('VERSION_ID="12"\nIMAGE_VERSION=2026.12.1\n')
    assert LinuxHost(tmp_path).os_version() == "2026.12.1"


def test_an_agent_whose_event_log_is_missing_keeps_running_and_the_server_says_no_log_was_sent(
        released: Any, emulator: Any, tmp_path: Path) -> None:
    plane, device = released
    tpm = tpm2_or_skip()(emulator.tcti)
    settings = AgentSettings(server_url=plane.url, ca_file=plane.settings.pki.ca_cert, state_dir=device.agent_dir,
                             bootstrap_token=plane.bootstrap_token("store-1"), checkin_interval_seconds=0.1,
                             backoff_initial_seconds=0.05, backoff_max_seconds=0.2, tpm=emulator.tcti,
                             event_log=tmp_path / "no-such-log")  # a kernel that exposes none
    agent = Agent(settings, device, site="store-1", tpm=tpm)
    run_until(agent, lambda: "quarantined" in (agent.last_error or ""))
    assert agent.attested is False
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{agent.device_id}").json()
    assert any("none sent" in check for check in record["attestation"]["failed_checks"])
