"""The simulated fleet: release images signed as release owners do, and emulated devices
(vdevice directories, software TPMs) each running the real agent, with their faults.

Slot images are shared: every device's slot A is a hard link to one copy of the image the
fleet was flashed with, and a slot is copied only when the agent writes into it
(``VirtualDevice.slot_device``), so 50,000 devices do not need 50,000 image copies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from edgefleet.agent.daemon import Agent
from edgefleet.agent.emulated import EmulatedDevice
from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.settings import AgentSettings
from edgefleet.client import AdminClient
from edgefleet.clock import Clock, SystemClock
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.sim.scenario import Scenario, Selector, SiteSpec
from edgefleet.util.atomic import atomic_write_bytes

log = logging.getLogger("edgefleet.sim")
HARDWARE_TYPE = "sim-x86"
_PASS = [{"name": "app-ready", "kind": "command", "command": ["true"], "timeout_seconds": 10}]
_FAIL = [{"name": "app-ready", "kind": "command", "command": ["false"], "timeout_seconds": 10}]


def publish_releases(scenario: Scenario, data_dir: Path, client: AdminClient, now: datetime) -> dict[str, Path]:
    """Build each release's image, sign the releases offline (2-of-3 root, two targets
    signatures) with their reference measurements, publish them; the image paths by version."""
    keys = Keystore(data_dir / "offline-keys")
    workspace = Workspace(data_dir / "release-workspace")
    workspace.init(keys, load_online_keys(data_dir / "keys" / "online-keys.json"), now,
                   root_keys=3, root_threshold=2, targets_keys=2, targets_threshold=2)
    images: dict[str, Path] = {}
    filler = random.Random(scenario.seed).randbytes(4096)
    for counter, release in enumerate(scenario.releases, start=1):
        image = data_dir / "images" / f"{release.version}.img"
        image.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(image, vimage.build(release.version, counter, size=scenario.image_bytes, filler=filler,
                                               health_checks=_FAIL if release.health == "fail" else _PASS))
        pcrs = reference_pcrs(image)
        workspace.create_release(image, ReleaseInfo(release.version, counter, (HARDWARE_TYPE,),
                                                    {"0": pcrs[0].hex(), "4": pcrs[4].hex()}), now)
        images[release.version] = image
    for name in ("targets-1", "targets-2"):
        workspace.sign_targets(keys.signer(name))
    publish_workspace(workspace, client)
    return images


def trust_roots(data_dir: Path) -> tuple[bytes, bytes]:
    base = data_dir / "release-workspace"
    return ((base / "image" / "metadata" / "1.root.json").read_bytes(),
            (base / "director" / "metadata" / "1.root.json").read_bytes())


@dataclass(frozen=True)
class SiteInstance:
    name: str
    spec: SiteSpec
    index: int  # across all sites, for its NAT address


def site_instances(scenario: Scenario) -> list[SiteInstance]:
    sites: list[SiteInstance] = []
    for spec in scenario.sites:
        for n in range(1, spec.count + 1):
            sites.append(SiteInstance(f"{spec.name}-{n}" if spec.count > 1 else spec.name, spec, len(sites)))
    return sites


class SkewedClock:
    """The device's wall clock is off by ``offset``; its monotonic clock is right."""

    def __init__(self, offset: float, base: Clock | None = None) -> None:
        self.offset = timedelta(seconds=offset)
        self.base = base or SystemClock()

    def now(self) -> datetime:
        return self.base.now() + self.offset

    def monotonic(self) -> float:
        return self.base.monotonic()


@dataclass
class SimDevice(EmulatedDevice):
    """An emulated device with its faults: ``tamper`` writes an implant into a slot holding
    ``tamper`` (a release version) before the firmware boots it."""

    site: SiteInstance | None = None
    tamper: str | None = None
    skew: float = 0.0
    faults: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    powered: bool = True

    def boot(self) -> None:
        if self.tamper is not None:
            for slot in ("a", "b"):
                image = self.device.slot_image(slot)
                if (vimage.read_header(image) or {}).get("version") == self.tamper:
                    data = bytearray(image.read_bytes())
                    if data[-8:] != b"implant!":
                        data[-8:] = b"implant!"
                        atomic_write_bytes(image, bytes(data))  # a new file: a shared copy stays intact
        super().boot()

    @property
    def running_version(self) -> str | None:
        return self.device.os_version()


def site_matches(site: SiteInstance, selector: Selector) -> bool:
    """Whether ``selector`` (region, and site by its own or its kind's name) names ``site``."""
    return ((selector.region is None or site.spec.region == selector.region)
            and (selector.site is None or selector.site in (site.name, site.spec.name)))


def pick(devices: list[SimDevice], selector: Selector, rng: random.Random) -> list[SimDevice]:
    """The devices a fault hits, the same ones for the same seed."""
    def matches(d: SimDevice) -> bool:
        assert d.site is not None
        return site_matches(d.site, selector)

    matching = [d for d in devices if matches(d)]
    if selector.devices is None:
        return matching
    if not selector.per_site:
        return rng.sample(matching, min(selector.devices, len(matching)))
    chosen: list[SimDevice] = []
    for site in sorted({d.site.name for d in matching if d.site is not None}):
        here = [d for d in matching if d.site is not None and d.site.name == site]
        chosen += rng.sample(here, min(selector.devices, len(here)))
    return chosen


@dataclass
class FleetBuilder:
    """Lays out the devices of a scenario and makes their agents."""

    scenario: Scenario
    data_dir: Path
    client: AdminClient
    link_url: Callable[[SiteInstance], str]
    ca_file: Path
    clock: Clock

    def build(self, images: dict[str, Path]) -> list[SimDevice]:
        scenario = self.scenario
        running = scenario.running_release
        base = images[running.version]
        counter = [r.version for r in scenario.releases].index(running.version) + 1
        image_root, director_root = trust_roots(self.data_dir)
        devices: list[SimDevice] = []
        for site in site_instances(scenario):
            labels = {"region": site.spec.region, **site.spec.labels}
            for n in range(site.spec.devices):
                path = self.data_dir / "devices" / site.name / f"{n:05d}"
                device = VirtualDevice.create(path, hardware_id=f"hw-{site.name}-{n:05d}", site=site.name,
                                              labels=labels, os_version=running.version, release_counter=counter,
                                              hardware_type=HARDWARE_TYPE, slot_bytes=scenario.image_bytes,
                                              slot_a=base)
                device.install_trust(image_root, director_root)
                devices.append(SimDevice(device, make_agent=_unset, site=site))
        rng = random.Random(scenario.seed)
        for fault in scenario.faults:
            if fault.kind in ("tampered_boot", "failing_health", "clock_skew"):
                for hit in pick(devices, fault.sites, rng):
                    hit.faults.append(fault.kind)
                    if fault.kind == "clock_skew":
                        hit.skew = fault.skew_seconds
                    if fault.kind == "tampered_boot":
                        hit.tamper = scenario.rollout.release if scenario.rollout else running.version
        return devices

    def arm(self, device: SimDevice, token: str) -> None:
        """Give ``device`` its agent (enrolling with ``token``) and its software TPM."""
        timing, site = self.scenario.agent, device.site
        assert site is not None
        tpm = InsecureSoftwareTpm(device.device.path / "tpm-insecure")
        settings = AgentSettings(
            server_url=self.link_url(site), ca_file=self.ca_file,
            state_dir=device.device.agent_dir, bootstrap_token=token,
            checkin_interval_seconds=timing.checkin_interval_seconds, long_poll_seconds=timing.long_poll_seconds,
            status_interval_seconds=timing.status_interval_seconds, update_check_seconds=timing.update_check_seconds,
            telemetry_batch_seconds=timing.telemetry_batch_seconds, backoff_initial_seconds=0.5,
            backoff_max_seconds=timing.backoff_max_seconds,
            # the trial deadline is kept on the wall clock (it survives reboots): virtual time
            trial_deadline_seconds=timing.trial_deadline_seconds * self.scenario.clock.speed,
            health_checks=_FAIL if "failing_health" in device.faults else [],
            request_timeout_seconds=max(10.0, timing.long_poll_seconds),
            # under a virtual clock, attest often enough that the server's age bound (an
            # hour of virtual time) still holds
            attestation_interval_seconds=max(5.0, 1800.0 / self.scenario.clock.speed),
        )
        clock: Clock = SkewedClock(device.skew, self.clock) if device.skew else self.clock
        rng = random.Random(f"{self.scenario.seed}-{device.device.hardware_id()}")
        vdev = device.device

        def make_agent() -> Agent:
            return Agent(settings, vdev, site=site.name, labels=vdev.labels, tpm=tpm, system=vdev, clock=clock,
                         rng=rng)

        device.make_agent, device.tpm = make_agent, tpm


def _unset() -> Agent:
    raise RuntimeError("device not armed")


async def power_cut(device: SimDevice, off_seconds: float, stop: asyncio.Event) -> None:
    """Pull the plug: the agent stops mid-whatever without a chance to clean up; after
    ``off_seconds`` the device powers on again (the firmware boots, the agent starts)."""
    if device.task is None or device.task.done():
        return
    device.powered = False
    device.task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await device.task
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), off_seconds)
    if not stop.is_set():
        device.powered = True
        device.task = asyncio.create_task(device.run(stop), name=f"device-{device.device.hardware_id()}")
