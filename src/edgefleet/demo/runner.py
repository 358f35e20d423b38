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
9. the release rolls out to the other sites in waves, one site per wave; in the second
   wave one store's device has an implant written into its new slot before it boots: it
   fails attestation against the release, the rollout halts by itself before the next
   wave, and the operator sees why in the dashboard (approve, abort or revert there);
10. summary, with the dashboard's URL; with --headless the demo stops by itself after
   --duration seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from rich.console import Console

from edgefleet.agent.attestor import AttestingTpm
from edgefleet.agent.daemon import Agent
from edgefleet.agent.emulated import EmulatedDevice
from edgefleet.agent.hardware import VirtualDevice, swtpm, vimage
from edgefleet.agent.hardware.firmware import MeasuringTpm, reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.settings import AgentSettings
from edgefleet.client import AdminClient
from edgefleet.clock import SystemClock
from edgefleet.credentials import Role
from edgefleet.hub.app import HubThread
from edgefleet.hub.loop import HubSettings
from edgefleet.pki import issue_server_certificate
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
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.util.ports import free_port

RUNNING = "2026.11.0"
RELEASE = "2026.12.0"
BROKEN = "2026.12.1"  # its required health check fails
IMAGE_BYTES = 2 * 1024 * 1024
HARDWARE_TYPE = "vdevice-x86"
SITE_NAMES = ["store-berlin", "factory-lyon", "pop-madrid", "store-oslo", "factory-turin", "pop-vienna"]


TpmChoice = Literal["auto", "swtpm", "software"]


@dataclass(frozen=True)
class DemoOptions:
    devices: int = 24
    sites: int = 3
    data_dir: Path | None = None
    port: int = 0
    headless: bool = False
    duration: float = 30.0
    log_level: str = "warning"
    tpm: TpmChoice = "auto"  # auto: swtpm where installed
    keep: bool = False  # keep the temporary directory after a successful run


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
    # The demo's devices have software or emulated TPMs without a vendor's EK certificate:
    # trusted on first use, which the server logs as a lab setting.
    settings = ServerSettings(data_dir=data_dir, port=options.port, presence_flush_seconds=0.5,
                              graceful_shutdown_seconds=5, log_level=options.log_level, ek_trust="tofu")
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
    hub = await _start_hub(settings, server.url, client)
    emulators: list[swtpm.Swtpm] | None = [] if options.tpm == "swtpm" or (
        options.tpm == "auto" and swtpm_usable()) else None
    out.print(f"[bold green]regional hub[/] for {site_name(0)} on [bold]https://127.0.0.1:{hub.port}[/]: its devices "
              "ship telemetry there and fetch releases through its cache")
    try:
        technician = Technician(free_port(), secrets.token_urlsafe(12))
        devices = await _start_fleet(options, settings, server.url, client, stop, tasks,
                                     hub_url=f"https://127.0.0.1:{hub.port}", emulators=emulators,
                                     technician=technician)
        out.print(f"[bold green]technician's page[/] of {devices[0].device.hardware_id()} (what a store's "
                  f"technician sees on the LAN, from the device alone): {technician.url}   credential: "
                  f"{technician.credential}", highlight=False, soft_wrap=True)
        out.print(f"started {len(devices)} emulated devices across {options.sites} sites; enrolling over mTLS ...")
        out.print("[dim]emulated: each device's firmware, boot and reboots are software (agent/hardware/firmware.py); "
                  "the real boot chain (OVMF, systemd-boot, UKI, dm-verity) is `edgefleet image build` in a VM, "
                  "see docs/images.md[/]")
        if emulators is not None:
            out.print("[bold green]TPMs[/]: one swtpm (TPM 2.0 emulator) per device, driven through tpm2-tss")
        else:
            out.print("[bold yellow]TPMs: INSECURE software TPMs[/] in this process, because swtpm or tpm2-pytss is "
                      "missing (Debian: swtpm swtpm-tools libtss2-dev; pip: tpm2-pytss). Keys are plain files: for "
                      "this demo only")

        def all_checked_in() -> bool:
            fleet = _fleet(client)
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
            if implant_index(options) is not None:
                ok = await _wave_rollout(client, options, server.url, out) and ok
        ok = await _report_hub(hub, out) and ok
        fleet = await asyncio.to_thread(_fleet, client)
        out.print(device_table(fleet.devices, title="fleet"))
        _print_summary(out, fleet, server.url, settings, admin_token, technician)
        if options.headless:
            await asyncio.sleep(max(0.0, options.duration - (time.monotonic() - started)))
        else:
            out.print("[dim]press Ctrl-C to stop the demo[/]")
            await _until_interrupted()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(hub.stop)
        for emulator in emulators or []:
            await asyncio.to_thread(emulator.stop)
        client.close()
        await asyncio.to_thread(server.stop)
    kept = f"everything is kept in {data_dir}"
    if ok and options.data_dir is None and not options.keep:
        await asyncio.to_thread(shutil.rmtree, data_dir, True)
        kept = f"its temporary directory {data_dir} is removed (--keep keeps it)"
    out.print(f"demo {'[bold green]succeeded' if ok else '[bold red]failed'}[/] after "
              f"{time.monotonic() - started:.1f}s; {kept}")
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


async def _start_hub(settings: ServerSettings, url: str, client: AdminClient) -> HubThread:
    """The first site's regional hub, enrolled with a bootstrap token like a device."""
    directory = settings.data_dir / "hub"
    directory.mkdir(parents=True, exist_ok=True)
    issued = issue_server_certificate(settings.pki.load_ca(), ["127.0.0.1", "localhost"], SystemClock().now())
    atomic_write_bytes(directory / "hub.pem", issued.cert_pem)
    atomic_write_bytes(directory / "hub.key", issued.key_pem, mode=0o600)
    token = await asyncio.to_thread(partial(client.create_bootstrap_token, site_name(0), {}, 3600, kind="hub"))
    atomic_write_bytes(directory / "token", token.token.encode(), mode=0o600)
    hub_settings = HubSettings(
        name=f"hub-{site_name(0)}", site=site_name(0), server_url=url, ca_file=settings.pki.ca_cert,
        tls_cert=directory / "hub.pem", tls_key=directory / "hub.key", data_dir=directory / "data", host="127.0.0.1",
        port=0, bootstrap_token_file=directory / "token", summary_interval_seconds=5, upstream_batch_seconds=2,
        backoff_max_seconds=5)
    return await asyncio.to_thread(HubThread(hub_settings).start)


async def _report_hub(hub: HubThread, out: Console) -> bool:
    """What the hub holds for its site, and what went upstream."""
    def summarised() -> bool:
        return bool(hub.hub.store.latest_summaries()) and hub.hub.upstream.figures().queued == 0

    done = await _wait_for(summarised, timeout=30)
    streams = await asyncio.to_thread(hub.hub.store.streams)
    summaries = await asyncio.to_thread(hub.hub.store.latest_summaries)
    mirror = hub.hub.mirror
    out.print(f"[bold green]hub[/]: {sum(s.stored_through for s in streams)} telemetry records from "
              f"{len(streams)} devices kept for local diagnosis; per-site summaries of {len(summaries)} metrics "
              f"forwarded upstream; repository cache {mirror.hits if mirror else 0} hits, "
              f"{mirror.misses if mirror else 0} fetched upstream", highlight=False)
    return done


class DemoTpm(AttestingTpm, MeasuringTpm, Protocol):
    """What an emulated device's TPM must do: measure the boot and attest."""


def swtpm_usable() -> bool:
    """swtpm and tpm2-pytss are installed: the devices get real (emulated) TPMs."""
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        return False
    return swtpm.available()


def _device_tpm(device: VirtualDevice,
                emulators: list[swtpm.Swtpm] | None) -> tuple[DemoTpm, Callable[[], None] | None]:
    """A swtpm process per device when ``emulators`` collects them, else the insecure
    in-process software TPM."""
    if emulators is None:
        return InsecureSoftwareTpm(device.path / "tpm-insecure"), None
    # tpm2-tss logs expected misses (no EK certificate in swtpm's NV) to stderr; the demo narrates
    os.environ.setdefault("TSS2_LOG", "all+none")
    from edgefleet.agent.hardware.tpm import Tpm2

    emulator = swtpm.Swtpm(device.path / "swtpm").start()
    emulators.append(emulator)
    return Tpm2(emulator.tcti), emulator.power_cycle


async def _start_fleet(
    options: DemoOptions, settings: ServerSettings, url: str, client: AdminClient, stop: asyncio.Event,
    tasks: list[asyncio.Task[None]], *, hub_url: str, emulators: list[swtpm.Swtpm] | None,
    technician: Technician,
) -> list[EmulatedDevice]:
    devices = []
    for index in range(options.devices):
        site = site_name(index % options.sites)
        labels = {"role": site.split("-")[0], "ring": "canary" if index < options.sites else "main"}
        token = await asyncio.to_thread(client.create_bootstrap_token, site, dict(labels), 3600)
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
        tpm, power_cycle = await asyncio.to_thread(_device_tpm, device, emulators)
        via_hub = site == site_name(0)  # the first site has a hub: telemetry and releases go through it
        agent_settings = AgentSettings(
            server_url=url, ca_file=settings.pki.ca_cert, state_dir=device.agent_dir,
            bootstrap_token=token.token, checkin_interval_seconds=2, long_poll_seconds=20,
            status_interval_seconds=30, backoff_initial_seconds=0.2, backoff_max_seconds=5,
            trial_deadline_seconds=60, telemetry_batch_seconds=2, telemetry_url=hub_url if via_hub else None,
            mirrors=[f"{hub_url}/repository"] if via_hub else [],
            **(technician.settings(device.agent_dir.parent) if index == 0 else {}),
        )

        def make_agent(s: AgentSettings = agent_settings, d: VirtualDevice = device, t: DemoTpm = tpm,
                       site: str = site, labels: dict[str, str] = labels) -> Agent:
            return Agent(s, d, site=site, labels=labels, tpm=t, system=d)

        kind = ImplantDevice if index == implant_index(options) else EmulatedDevice
        emulated = kind(device, make_agent, tpm=tpm, power_cycle=power_cycle)
        devices.append(emulated)
        tasks.append(asyncio.create_task(emulated.run(stop), name=f"device-{index}"))
    return devices


def _fleet(client: AdminClient, site: str | None = None) -> DeviceList:
    """The emulated devices (the hub enrolled with a hub's token: it is not listed as one)."""
    return client.devices(site=site)


def tampered_index(options: DemoOptions) -> int | None:
    """One device of the second site boots a tampered image from the start (none with a
    single site): it is quarantined, and gets nothing."""
    return options.sites + 1 if options.sites > 1 and options.devices > options.sites + 1 else None


def implant_index(options: DemoOptions) -> int | None:
    """One device of the third site (the rollout's second wave) gets an implant in its new
    slot (none with fewer than three sites)."""
    index = 2 * options.sites + 2
    return index if options.sites >= 3 and options.devices > index else None


class ImplantDevice(EmulatedDevice):
    """A device whose new slot is changed between install and boot, as an implant would:
    the firmware measures what it boots, so its quote no longer matches the release."""

    def boot(self) -> None:
        image = self.device.slot_image("b")
        header = vimage.read_header(image) or {}
        if header.get("version") == RELEASE:
            data = bytearray(image.read_bytes())
            if data[-8:] != b"implant!":
                data[-8:] = b"implant!"
                image.write_bytes(bytes(data))
        super().boot()


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
        workspace.create_release(image, ReleaseInfo(version, counter, (HARDWARE_TYPE,), measurements), now,
                                 deltas=2, index=True)
    for name in ("targets-1", "targets-2"):
        workspace.sign_targets(keys.signer(name))
    return workspace


async def _report_attestation(client: AdminClient, expected: int, out: Console) -> bool:
    """Every device attested; exactly the tampered one (if any) is quarantined."""
    def all_attested() -> bool:
        return all(d.attestation is not None for d in _fleet(client).devices)

    await _wait_for(all_attested, timeout=30)
    fleet = await asyncio.to_thread(_fleet, client)
    passed = [d for d in fleet.devices if d.attestation and d.attestation.get("passed")]
    quarantined = [d for d in fleet.devices if d.attestation and d.attestation.get("quarantined")]
    out.print(f"[bold green]attestation[/]: {len(passed)} devices proved with TPM quotes that they booted signed "
              f"release {RUNNING} (emulated measured boot, event log replayed)")
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
    everyone = await asyncio.to_thread(_fleet, client, site)
    fleet = DeviceList(total=0, devices=[d for d in everyone.devices if d.labels.get("ring") == "canary"])
    for device in fleet.devices:
        await asyncio.to_thread(client.assign, device.id, RELEASE)

    def committed() -> bool:
        return all(d.running_version == RELEASE and d.update_state == "committed"
                   for d in _fleet(client, site).devices if d.id in {f.id for f in fleet.devices})

    done = await _wait_for(committed, timeout=90, interval=0.2)
    took = time.monotonic() - started
    if not done:
        states = sorted({f"{d.running_version}/{d.update_state}" for d in _fleet(client, site).devices})
        out.print(f"[bold red]release {RELEASE} not committed[/] at {site} within 90 s (states: {states})")
        return False
    out.print(f"[bold green]release {RELEASE}[/] signed offline (2-of-2 targets keys), published "
              f"(snapshot v{snapshot_version}), assigned to the canary ({len(fleet.devices)} device) at {site}: "
              f"each verified it "
              f"(director and image repository agree), installed it into its other slot, rebooted into it once, "
              f"passed the image's health checks, attested against the new measurements and committed, "
              f"in {took:.1f}s")
    history = await asyncio.to_thread(client.update_history, fleet.devices[0].id)
    steps = " -> ".join(e.phase for e in reversed(history.events))
    out.print(f"  update history of {fleet.devices[0].id}: {steps}", highlight=False)
    delivery = (await asyncio.to_thread(client.device, fleet.devices[0].id)).update or {}
    how = delivery.get("delivery")
    if isinstance(how, dict):
        out.print(f"  image delivered by {how['method']}: {how['downloaded_bytes']:,} of {how['image_bytes']:,} "
                  f"bytes downloaded", highlight=False)
    return True


async def _broken_release_rolls_back(client: AdminClient, site: str, skip: int | None, out: Console) -> bool:
    """A release whose required health check fails, on one device: it must come back by itself."""
    fleet = await asyncio.to_thread(_fleet, client, site)
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


async def _wave_rollout(client: AdminClient, options: DemoOptions, url: str, out: Console) -> bool:
    """The release to the main ring of the other sites, one site per wave; the second wave
    holds the implanted device, so the rollout must halt there, before the third."""
    order = [site_name(0), site_name(2)]  # the canary's site first, then the implant's; the rest last
    waves = [{"size": "100%", "selector": {"site": site}, "bake_seconds": 2} for site in order]
    body = {"release": RELEASE, "selector": {"ring": "main"}, "waves": [*waves, {"size": "100%"}]}
    started = time.monotonic()
    rollout = await asyncio.to_thread(client.call_json, "POST", "/api/v1/admin/rollouts", json=body)
    rollout_id = str(rollout["id"])
    out.print(f"[bold]rollout {rollout_id}[/]: {RELEASE} to the main ring in {len(body['waves'])} waves "
              f"({', '.join(order)}, then the rest), 2 s bake per wave; "
              f"watch it at {url}/ui/rollouts/{rollout_id}")

    def view() -> dict[str, Any]:
        return client.call_json("GET", f"/api/v1/admin/rollouts/{rollout_id}")

    done = await _wait_for(lambda: view()["status"] in ("halted", "completed", "aborted"), timeout=180, interval=0.5)
    now = await asyncio.to_thread(view)
    took = time.monotonic() - started
    counts = [f"wave {w['wave']}: {w['counts']['succeeded']} succeeded, {w['counts']['failed']} failed"
              for w in now["waves"]]
    if not done or now["status"] != "halted" or now["wave"] != 2 or "attestation failed" not in (now["reason"] or ""):
        out.print(f"[bold red]rollout {rollout_id} did not halt on the implant[/]: {now['status']} in wave "
                  f"{now['wave']} ({now.get('reason')}); {'; '.join(counts)}")
        return False
    rest = [d for d in (await asyncio.to_thread(_fleet, client)).devices
            if d.labels.get("ring") == "main" and d.site not in order]
    untouched = sum(d.running_version == RUNNING for d in rest)
    out.print(f"[bold red]rollout halted by itself[/] in wave {now['wave']} after {took:.1f}s: {now['reason']}. "
              f"{'; '.join(counts[:now['wave']])}; wave 3 never started: {untouched} of its {len(rest)} devices still "
              f"run {RUNNING}. Approve, abort or revert it in the dashboard.", highlight=False)
    return untouched == len(rest)


async def _push_desired_state(client: AdminClient, site: str, out: Console) -> bool:
    fleet = await asyncio.to_thread(_fleet, client, site)
    # A configuration (the director signs it before any device hears of it): the site's NTP
    # servers, as cloud-init user-data the devices write into their OS configuration.
    cloud_init = f"#cloud-config\n# {site}\nntp:\n  servers: [time1.example, time2.example]\n"
    document = {"config": {"group": "demo", "os": {"cloud_init": cloud_init}}}
    pushed = time.monotonic()
    versions = {}
    for device in fleet.devices:
        versions[device.id] = (await asyncio.to_thread(client.set_desired, device.id, document)).version

    def applied() -> bool:
        now = _fleet(client, site).devices
        return all(d.desired_version_applied == versions[d.id] for d in now)

    done = await _wait_for(applied, timeout=30, interval=0.05)
    took_ms = (time.monotonic() - pushed) * 1000
    if done:
        out.print(f"[bold green]configuration pushed[/] to {len(versions)} devices at {site}: signed by the director, "
                  f"all verified, applied and reported in {took_ms:.0f} ms (long poll, no waiting for the next "
                  "interval)")
    else:
        out.print(f"[bold red]desired state not applied[/] at {site} within 30 s")
    return done


@dataclass(frozen=True)
class Technician:
    """The first device serves its technician's page on the loopback interface."""

    port: int
    credential: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def settings(self, directory: Path) -> dict[str, Any]:
        credential = directory / "technician-credential"
        atomic_write_bytes(credential, self.credential.encode(), mode=0o600)
        return {"local_ui": f"127.0.0.1:{self.port}", "local_ui_token_file": credential}


def _print_summary(out: Console, fleet: DeviceList, url: str, settings: ServerSettings, token: str,
                   technician: Technician) -> None:
    sites: dict[str, int] = {}
    for device in fleet.devices:
        sites[device.site] = sites.get(device.site, 0) + 1
    healthy = sum(d.health == "healthy" for d in fleet.devices)
    lines = [
        f"devices: {fleet.total}   healthy: {healthy}   sites: "
        + ", ".join(f"{s} ({n})" for s, n in sorted(sites.items())),
        f"server:  {url}   (OpenAPI: {url}/docs, metrics: {url}/metrics)",
        f"dashboard: {url}/ui/   log in with the admin token below (the fleet CA signed the server's "
        f"certificate: {settings.pki.ca_cert})",
        "try it (while the demo runs):",
        f"  export EDGEFLEET_SERVER_URL={url} EDGEFLEET_CA_FILE={settings.pki.ca_cert}",
        f"  export EDGEFLEET_ADMIN_TOKEN={token}",
        "  edgefleet devices ls",
        f"technician's page of one device: {technician.url}   credential: {technician.credential}",
    ]
    out.print("\n".join(lines), soft_wrap=True, highlight=False)
