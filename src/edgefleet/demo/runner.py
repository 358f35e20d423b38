"""The demo: real control plane (HTTPS, mTLS, SQLite), real agents, emulated hardware.

1. init the data dir (fleet CA, server certificate) and mint an admin token;
2. start the control plane;
3. an operator creates one bootstrap token per device over the admin API;
4. each emulated device enrolls (CSR -> device certificate) and checks in;
5. the operator pushes a desired-state change to one site; the devices there, waiting in a
   long poll, receive it at once and report it applied;
6. every device's firmware measured its boot into its (insecure, software) TPM; each device
   binds its TPM identity and attests; one device booted a tampered image and is quarantined;
7. release owners sign releases offline (TUF, 2-of-3 root) and publish them; the operator
   assigns the new one to the canary site; each device there verifies it (Uptane: director
   and image repository must agree), downloads it, writes it into its inactive slot,
   reboots into it for one trial boot, runs the image's health checks, attests against the
   new release's measurements and commits;
8. a broken release (its required health check fails) goes to one device of another site:
   it boots it once, fails the check and rolls back to its good slot by itself;
9. summary; with --headless the demo stops by itself after --duration seconds.
"""

from __future__ import annotations

import asyncio
import random
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from rich.console import Console

from edgefleet.agent.daemon import Agent
from edgefleet.agent.emulated import EmulatedDevice
from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.settings import AgentSettings
from edgefleet.client import AdminClient
from edgefleet.clock import SystemClock
from edgefleet.credentials import Role
from edgefleet.protocol.v1 import DeviceList
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.run import ServerThread
from edgefleet.server.settings import ServerSettings
from edgefleet.ui import console as default_console
from edgefleet.ui import device_table

RUNNING = "2026.11.0"
RELEASE = "2026.12.0"
BROKEN = "2026.12.1"  # its required health check fails
IMAGE_BYTES = 2 * 1024 * 1024
HARDWARE_TYPE = "vdevice-x86"
SITE_NAMES = ["store-berlin", "factory-lyon", "pop-madrid", "store-oslo", "factory-turin", "pop-vienna"]


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 12
    sites: int = 3
    data_dir: Path | None = None
    port: int = 0
    headless: bool = False
    duration: float = 30.0
    log_level: str = "warning"


def site_name(index: int) -> str:
    return SITE_NAMES[index] if index < len(SITE_NAMES) else f"site-{index + 1}"


async def _wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(interval)
    return await asyncio.to_thread(check)


async def run_demo(options: DemoOptions, console: Console | None = None) -> bool:
    """Run the demo; True when every device enrolled, checked in and applied its change."""
    out = console or default_console
    started = time.monotonic()
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    settings = ServerSettings(data_dir=data_dir, port=options.port, presence_flush_seconds=0.5,
                              graceful_shutdown_seconds=5, log_level=options.log_level)
    clock = SystemClock()
    init_server(settings, clock.now())
    admin_token = await create_admin_token(settings, name="demo-operator", role=Role.ADMIN, now=clock.now(),
                                           ttl=timedelta(days=1))
    workspace = _sign_release(data_dir, clock.now())
    server = ServerThread(settings)
    await asyncio.to_thread(server.start)
    out.print(f"[bold green]control plane[/] listening on [bold]{server.url}[/] (SQLite in {data_dir})")
    client = AdminClient(server.url, admin_token, settings.pki.ca_cert)
    # releases are published before devices boot: attestation compares with their measurements
    published = await asyncio.to_thread(publish_workspace, workspace, client)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    ok = False
    try:
        devices = await _start_fleet(options, settings, server.url, client, stop, tasks)
        out.print(f"started {len(devices)} emulated devices across {options.sites} sites; enrolling over mTLS ...")

        def all_checked_in() -> bool:
            fleet = client.devices()
            return fleet.total == len(devices) and all(
                d.last_seen_at is not None and d.status_seq > 0 for d in fleet.devices
            )

        checked_in = await _wait_for(all_checked_in, timeout=60)
        took = time.monotonic() - started
        if not checked_in:
            failures = [f"{d.device.hardware_id()}: {d.agent.last_error}" for d in devices
                        if d.agent is not None and d.agent.last_error]
            out.print(f"[bold red]not all devices checked in[/] after {took:.1f}s", *failures[:5], sep="\n  ")
            return False
        out.print(f"[bold green]all devices checked in[/] ({len(devices)} devices, {took:.1f}s after start)")

        ok = await _report_attestation(client, 0 if tampered_index(options) is None else 1, out)
        ok = await _push_desired_state(client, site_name(0), out) and ok
        ok = await _roll_out_release(client, published.snapshot_version, site_name(0), out) and ok
        if options.sites > 1:
            ok = await _broken_release_rolls_back(client, site_name(1), tampered_index(options), out) and ok
        fleet = await asyncio.to_thread(client.devices)
        out.print(device_table(fleet.devices, title="fleet"))
        _print_summary(out, fleet, server.url, settings, admin_token)
        if options.headless:
            await asyncio.sleep(max(0.0, options.duration - (time.monotonic() - started)))
        else:
            out.print("[dim]press Ctrl-C to stop the demo[/]")
            await _until_interrupted()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        client.close()
        await asyncio.to_thread(server.stop)
    out.print(f"demo {'[bold green]succeeded' if ok else '[bold red]failed'}[/] after "
              f"{time.monotonic() - started:.1f}s; everything is kept in {data_dir}")
    return ok


async def _until_interrupted() -> None:
    """Wait for Ctrl-C or SIGTERM, then let the caller shut everything down in order."""
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        await interrupted.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start_fleet(
    options: DemoOptions, settings: ServerSettings, url: str, client: AdminClient, stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
) -> list[EmulatedDevice]:
    devices = []
    for index in range(options.devices):
        site = site_name(index % options.sites)
        labels = {"role": site.split("-")[0], "ring": "canary" if index < options.sites else "main"}
        token = await asyncio.to_thread(client.create_bootstrap_token, site, {"ring": labels["ring"]}, 3600)
        device = VirtualDevice.create(
            settings.data_dir / "devices" / f"{site}-{index:03d}",
            hardware_id=f"hw-{site}-{index:03d}", site=site, labels=labels, os_version=RUNNING,
            hardware_type=HARDWARE_TYPE, release_counter=1, slot_bytes=IMAGE_BYTES,
        )
        device.install_trust(workspace_root(settings.data_dir, "image"), workspace_root(settings.data_dir, "director"))
        if index == tampered_index(options):
            image = device.slot_image("a")
            data = bytearray(image.read_bytes())
            data[-16:] = b"implant-implant!"  # same version header, different bytes: a tampered root
            image.write_bytes(bytes(data))
        # Demo fleets use the insecure software TPM (a real device: /dev/tpmrm0; tests: swtpm).
        tpm = InsecureSoftwareTpm(device.path / "tpm-insecure")
        agent_settings = AgentSettings(
            server_url=url, ca_file=settings.pki.ca_cert, state_dir=device.agent_dir,
            bootstrap_token=token.token, checkin_interval_seconds=2, long_poll_seconds=20,
            status_interval_seconds=30, backoff_initial_seconds=0.2, backoff_max_seconds=5,
            trial_deadline_seconds=60,
        )

        def make_agent(s: AgentSettings = agent_settings, d: VirtualDevice = device, t: InsecureSoftwareTpm = tpm,
                       site: str = site, labels: dict[str, str] = labels) -> Agent:
            return Agent(s, d, site=site, labels=labels, tpm=t, system=d)

        emulated = EmulatedDevice(device, make_agent, tpm=tpm)
        devices.append(emulated)
        tasks.append(asyncio.create_task(emulated.run(stop), name=f"device-{index}"))
    return devices


def tampered_index(options: DemoOptions) -> int | None:
    """One device outside the canary site boots a tampered image (none with a single site)."""
    return options.sites + 1 if options.sites > 1 and options.devices > options.sites + 1 else None


def _sign_release(data_dir: Path, now: datetime) -> Workspace:
    """What release owners do offline: keys, the release devices run and the next one, each
    with its reference measurements, two signatures (a threshold)."""
    keys = Keystore(data_dir / "offline-keys")
    workspace = Workspace(data_dir / "release-workspace")
    online = load_online_keys(data_dir / "keys" / "online-keys.json")
    workspace.init(keys, online, now, root_keys=3, root_threshold=2, targets_keys=2, targets_threshold=2)
    running = VirtualDevice.create(data_dir / "images" / "golden", hardware_id="golden", site="factory",
                                   os_version=RUNNING, release_counter=1, slot_bytes=IMAGE_BYTES).slot_image("a")
    checks = [{"name": "edge-app-ready", "kind": "command", "command": ["true"], "timeout_seconds": 10}]
    new, broken = data_dir / "images" / f"edge-{RELEASE}.img", data_dir / "images" / f"edge-{BROKEN}.img"
    filler = random.Random(RELEASE).randbytes(4096)
    new.write_bytes(vimage.build(RELEASE, 2, size=IMAGE_BYTES, health_checks=checks, filler=filler))
    failing = [{"name": "edge-app-ready", "kind": "command", "command": ["sh", "-c", "echo 'app: port 8443 "
                "in use' >&2; exit 1"], "timeout_seconds": 10}]
    broken.write_bytes(vimage.build(BROKEN, 3, size=IMAGE_BYTES, health_checks=failing, filler=filler))
    for version, counter, image in ((RUNNING, 1, running), (RELEASE, 2, new), (BROKEN, 3, broken)):
        reference = reference_pcrs(image)
        measurements = {"0": reference[0].hex(), "4": reference[4].hex()}
        workspace.create_release(image, ReleaseInfo(version, counter, (HARDWARE_TYPE,), measurements), now)
    for name in ("targets-1", "targets-2"):
        workspace.sign_targets(keys.signer(name))
    return workspace


async def _report_attestation(client: AdminClient, expected: int, out: Console) -> bool:
    """Every device attested; exactly the tampered one (if any) is quarantined."""
    def all_attested() -> bool:
        return all(d.attestation is not None for d in client.devices().devices)

    await _wait_for(all_attested, timeout=30)
    fleet = await asyncio.to_thread(client.devices)
    passed = [d for d in fleet.devices if d.attestation and d.attestation.get("passed")]
    quarantined = [d for d in fleet.devices if d.attestation and d.attestation.get("quarantined")]
    out.print(f"[bold green]attestation[/]: {len(passed)} devices proved with TPM quotes that they booted signed "
              f"release {RUNNING} (measured boot, event log replayed)")
    for device in quarantined:
        failed = "; ".join(str(c) for c in device.attestation.get("failed_checks", [])[:1]) if device.attestation \
            else ""
        out.print(f"[bold red]quarantined[/]: {device.id} at {device.site} booted an image its release does not "
                  f"allow ({failed}); it gets no configuration or tokens until an operator releases it")
    return len(quarantined) == expected and len(passed) == len(fleet.devices) - expected


def workspace_root(data_dir: Path, which: str) -> bytes:
    return (data_dir / "release-workspace" / which / "metadata" / "1.root.json").read_bytes()


async def _roll_out_release(client: AdminClient, snapshot_version: int, site: str, out: Console) -> bool:
    started = time.monotonic()
    fleet = await asyncio.to_thread(client.devices, site=site)
    for device in fleet.devices:
        await asyncio.to_thread(client.assign, device.id, RELEASE)

    def committed() -> bool:
        return all(d.running_version == RELEASE and d.update_state == "committed"
                   for d in client.devices(site=site).devices)

    done = await _wait_for(committed, timeout=90, interval=0.2)
    took = time.monotonic() - started
    if not done:
        states = sorted({f"{d.running_version}/{d.update_state}" for d in client.devices(site=site).devices})
        out.print(f"[bold red]release {RELEASE} not committed[/] at {site} within 90 s (states: {states})")
        return False
    out.print(f"[bold green]release {RELEASE}[/] signed offline (2-of-2 targets keys), published "
              f"(snapshot v{snapshot_version}), assigned to {len(fleet.devices)} devices at {site}: each verified it "
              f"(director and image repository agree), installed it into its other slot, rebooted into it once, "
              f"passed the image's health checks, attested against the new measurements and committed, "
              f"in {took:.1f}s")
    history = await asyncio.to_thread(client.update_history, fleet.devices[0].id)
    steps = " -> ".join(e.phase for e in reversed(history.events))
    out.print(f"  update history of {fleet.devices[0].id}: {steps}", highlight=False)
    return True


async def _broken_release_rolls_back(client: AdminClient, site: str, skip: int | None, out: Console) -> bool:
    """A release whose required health check fails, on one device: it must come back by itself."""
    fleet = await asyncio.to_thread(client.devices, site=site)
    healthy = [d for d in fleet.devices if not (d.attestation or {}).get("quarantined")]
    if not healthy:
        return True
    target = healthy[0]
    await asyncio.to_thread(client.assign, target.id, BROKEN)

    def rolled_back() -> bool:
        now = client.device(target.id)
        return now.update_state in ("rolled_back", "failed")

    done = await _wait_for(rolled_back, timeout=90, interval=0.2)
    now = await asyncio.to_thread(client.device, target.id)
    reason = (now.update or {}).get("reason")
    if not done or now.running_version != RUNNING or now.update_state != "rolled_back":
        out.print(f"[bold red]broken release {BROKEN} did not roll back[/] on {target.id} "
                  f"({now.running_version}/{now.update_state}: {reason})")
        return False
    out.print(f"[bold yellow]broken release {BROKEN}[/] on {target.id} at {site}: booted once, its required health "
              f"check failed, and the device rolled back to {RUNNING} by itself ({reason})", highlight=False)
    return True


async def _push_desired_state(client: AdminClient, site: str, out: Console) -> bool:
    fleet = await asyncio.to_thread(client.devices, site=site)
    document = {"motd": f"hello {site}", "ntp": ["time1.example", "time2.example"]}
    pushed = time.monotonic()
    versions = {}
    for device in fleet.devices:
        versions[device.id] = (await asyncio.to_thread(client.set_desired, device.id, document)).version

    def applied() -> bool:
        now = client.devices(site=site).devices
        return all(d.desired_version_applied == versions[d.id] for d in now)

    done = await _wait_for(applied, timeout=30, interval=0.05)
    took_ms = (time.monotonic() - pushed) * 1000
    if done:
        out.print(f"[bold green]desired state pushed[/] to {len(versions)} devices at {site}: "
                  f"all applied and reported in {took_ms:.0f} ms (long poll, no waiting for the next interval)")
    else:
        out.print(f"[bold red]desired state not applied[/] at {site} within 30 s")
    return done


def _print_summary(out: Console, fleet: DeviceList, url: str, settings: ServerSettings, token: str) -> None:
    sites: dict[str, int] = {}
    for device in fleet.devices:
        sites[device.site] = sites.get(device.site, 0) + 1
    healthy = sum(d.health == "ok" for d in fleet.devices)
    lines = [
        f"devices: {fleet.total}   healthy: {healthy}   sites: "
        + ", ".join(f"{s} ({n})" for s, n in sorted(sites.items())),
        f"server:  {url}   (OpenAPI: {url}/docs, metrics: {url}/metrics)",
        "try it (while the demo runs):",
        f"  export EDGEFLEET_SERVER_URL={url} EDGEFLEET_CA_FILE={settings.pki.ca_cert}",
        f"  export EDGEFLEET_ADMIN_TOKEN={token}",
        "  edgefleet devices ls",
    ]
    out.print("\n".join(lines), soft_wrap=True, highlight=False)
