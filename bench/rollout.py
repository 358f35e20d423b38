"""What a wave rollout costs the control plane, and how fast it halts.

A real control plane runs in its own process (SQLite, attestation required, rollout
controller ticking every --tick seconds). N emulated devices, enrolled as at the factory
(certificate and row), each with its own software TPM, boot a factory release, bind their
TPM identity and attest, then wait in long polls over one kept-alive mTLS connection each,
as agents do. Told a release, a device does what the agent does with the control plane:
reads its director metadata (timestamp, snapshot and targets in one answer), boots the
release (measured into its TPM), reports it attesting (the answer brings the quote's
nonce), attests against it (quote, workload token) and reports it committed. It does not
download the image: images and the image repository's metadata are static files a mirror
or CDN serves. Every status report carries the device's health verdict, and each device
also reports every --status-interval seconds.

Phase 1 rolls a release out in 4 waves (1%, 10%, 50%, 100%) and measures the server
process's CPU time per device updated (its own /proc counters: the load generator is not
counted). Phase 2 rolls out a release whose canary commits and then, while its wave bakes,
reports a required health check failing: the time from that report to the rollout's halt is
measured. Phase 3 rolls out a release whose reference measurements no device shows: the
canary attests, fails, and the time from its failed quote to the rollout's halt is measured,
next to the controller's tick and an agent's check-in interval.

    python bench/rollout.py [--devices 10000] [--tick 1.0] [--status-interval 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from checkin import free_port
from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.pki import new_device_key
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.settings import ServerSettings
from edgefleet.util.backoff import Backoff
from fleet_tpm import BootImage, Connection, software_tpms
from scale import seed

HARDWARE = "bench-x86"
FACTORY = "2026.11.0"  # what the devices run when the bench begins
GOOD, SICK, TAMPERED = RELEASES = ("2026.12.0", "2026.12.1", "2026.12.2")  # rolled out in this order


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Release(NamedTuple):
    image: Path
    info: ReleaseInfo
    sbom: Path | None = None
    artifacts: tuple[Path, ...] = ()  # e.g. a workload's module, signed beside the image


def publish_releases(settings: ServerSettings, workdir: Path, client: AdminClient,
                     releases: Sequence[Release]) -> Path:
    """Sign and publish these releases from a new workspace (its offline keys made here);
    returns the workspace, whose metadata holds the roots a device ships."""
    now = datetime.now(UTC)
    keys = Keystore(workdir / "offline-keys")
    workspace = Workspace(workdir / "workspace")
    workspace.init(keys, load_online_keys(settings.data_dir / "keys" / "online-keys.json"), now)
    for image, info, sbom, artifacts in releases:
        workspace.create_release(image, info, now, list(artifacts), sbom=sbom)
    workspace.sign_targets(keys.signer("targets-1"))
    publish_workspace(workspace, client)
    return workdir / "workspace"


def publish(settings: ServerSettings, workdir: Path, client: AdminClient) -> dict[str, BootImage]:
    """The factory release and the three rolled out, signed with their reference measurements;
    the last one requires a PCR 4 no device shows, so its canary fails attestation."""
    images, releases = {}, []
    for counter, version in enumerate((FACTORY, *RELEASES), start=1):
        image = workdir / f"{version}.img"
        image.write_bytes(vimage.build(version, counter, size=4096))
        pcrs = reference_pcrs(image)
        measurements = {"0": pcrs[0].hex(), "4": "ab" * 32 if version == TAMPERED else pcrs[4].hex()}
        releases.append(Release(image, ReleaseInfo(version, counter, (HARDWARE,), measurements)))
        images[version] = BootImage.of(version, image)
    publish_releases(settings, workdir, client, releases)
    return images


@dataclass
class Plane:
    """A control plane in its own process (SQLite, attestation required), ready."""

    settings: ServerSettings
    admin: str
    port: int
    process: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.settings.pki.ca_cert

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.ca)),
                                 timeout=60, headers={"authorization": f"Bearer {self.admin}"})


async def start_plane(workdir: Path, devices: int, **env: str) -> Plane:
    """Initialise a data dir under ``workdir`` and start ``edgefleet server`` on it for
    ``devices`` long-polling devices (``env``: more settings); returns once it is ready."""
    settings = ServerSettings(data_dir=workdir / "server")
    init_server(settings, datetime.now(UTC))
    admin = await create_admin_token(settings, name="bench", role=Role.ADMIN, now=datetime.now(UTC), ttl=None)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet", "server", "--data-dir", str(settings.data_dir), "--port", str(port),
        "--log-level", "warning", env={**os.environ, "EDGEFLEET_MAX_LONG_POLLS": str(devices + 100),
                                          "EDGEFLEET_EK_TRUST": "tofu", **env})  # swtpm: no vendor EK certificates
    plane = Plane(settings, admin, port, process)
    async with plane.client() as client:
        for _ in range(300):
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return plane
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    process.terminate()
    raise RuntimeError("the control plane did not become ready in 30 s")


async def request_counts(client: httpx.AsyncClient) -> dict[str, float]:
    """The server's own request counters, by method and route."""
    counts: dict[str, float] = {}
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(("edgefleet_rollout_tick_seconds_count", "edgefleet_rollout_tick_seconds_sum")):
            counts[line.split(" ")[0]] = float(line.rsplit(" ", 1)[1])
        if line.startswith("edgefleet_http_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = f"{labels['method']} {labels['route']}"
            counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


@dataclass
class SimDevice:
    id: str
    cert: Path
    key: Path
    tpm: InsecureSoftwareTpm


class FleetSim:
    """The emulated fleet: one task per device, speaking the device protocol as the agent does.

    Every status report carries the device's health verdict. Besides the reports of an
    update, each device reports its status every ``status_interval`` seconds (the agent's
    default is 300 s; the first one at a random moment within it, so the fleet's reports
    spread out), and at once when its health changes (``turn_unhealthy``)."""

    def __init__(self, port: int, ca: Path, devices: list[SimDevice], images: dict[str, BootImage],
                 status_interval: float) -> None:
        self.port, self.ca, self.devices, self.images = port, ca, devices, images
        self.status_interval = status_interval
        self.committed: dict[str, set[str]] = {r: set() for r in RELEASES}
        self.failed_quotes: dict[str, float] = {}  # device -> when its quote failed (it then waits, quarantined)
        self.errors = 0  # refusals (an overloaded server says 503) and lost connections, each retried
        self.reports = 0  # status reports sent (each with the device's health)
        self.closing = False
        self.tasks: list[asyncio.Task[None]] = []
        self.seqs: dict[str, int] = {}  # each device's last report's sequence number
        self.phases: dict[str, tuple[str, str]] = {}  # each device's (release, update state) as last reported
        self.failing: dict[str, tuple[str, ...]] = {}  # the required checks failing on a device
        self.rng = random.Random(20261206)

    async def start(self) -> None:
        sem = asyncio.Semaphore(64)
        await asyncio.gather(*(self._connect(d, sem) for d in self.devices))

    async def _connect(self, device: SimDevice, sem: asyncio.Semaphore) -> None:
        async with sem:  # at most 64 devices powering on (boot, TPM identity, attestation) at once
            answered = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._live(device, answered)))
            await answered.wait()

    async def _open(self, device: SimDevice) -> Connection:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(device.cert), str(device.key))
        streams = await asyncio.open_connection("127.0.0.1", self.port, ssl=context, server_hostname="localhost")
        return Connection(device.id, self.port, *streams)

    async def _report(self, conn: Connection, device_id: str, release: str, phase: str) -> dict[str, Any]:
        """A status report; the one before an update's quote asks for its challenge (the answer)."""
        self.seqs[device_id] = seq = self.seqs.get(device_id, 0) + 1
        self.phases[device_id] = (release, phase)
        self.reports += 1
        return await conn.report(seq, release, phase, failing=self.failing.get(device_id, ()),
                                 challenge=phase == "attesting")

    async def turn_unhealthy(self, device: SimDevice, check: str) -> float:
        """A required check starts failing on ``device``: it reports so at once, on a second
        connection (its first is in a long poll), as the agent does. Returns when it sent it."""
        self.failing[device.id] = (check,)
        conn = await self._open(device)
        try:
            sent = time.perf_counter()
            await self._report(conn, device.id, *self.phases[device.id])
        finally:
            conn.writer.close()
        return sent

    async def _live(self, device: SimDevice, answered: asyncio.Event) -> None:
        """Power on, then long polls. Every step that fails (a refusal, a lost connection) is
        tried again after the agent's own back-off, on a new connection: the server drops
        idle keep-alive connections meanwhile."""
        tpm, known = device.tpm, -1
        release = FACTORY
        steps = ["boot", "running", "enroll", "attest"]  # power-on
        backoff = Backoff(1.0, 300.0)  # exponential with full jitter
        conn: Connection | None = None
        held_snapshot = 0  # the director snapshot version the device holds
        challenge: dict[str, Any] | None = None  # the nonce the report before a quote brought
        loop = asyncio.get_running_loop()
        next_status = loop.time() + self.rng.uniform(0, self.status_interval)
        while True:
            try:
                conn = conn or await self._open(device)
                while steps:
                    if steps[0] == "director":
                        held_snapshot = await conn.director_metadata(held_snapshot)
                    elif steps[0] == "boot":
                        self.images[release].boot(tpm)
                    elif steps[0] in ("running", "attesting", "committed"):
                        ack = await self._report(conn, device.id, release,
                                                 "idle" if steps[0] == "running" else steps[0])
                        challenge = ack.get("challenge") if steps[0] == "attesting" else None
                        if steps[0] == "committed":
                            self.committed[release].add(device.id)
                    elif steps[0] == "status":
                        await self._report(conn, device.id, *self.phases[device.id])
                        next_status = loop.time() + self.status_interval
                    elif steps[0] == "enroll":
                        await conn.enroll_tpm(tpm)
                    else:
                        offered, challenge = challenge, None  # a quote spends it: a retry asks for a nonce
                        if not await conn.attest(tpm, self.images[release], offered):
                            self.failed_quotes[device.id] = time.perf_counter()
                            answered.set()
                            return  # quarantined: it waits for an operator
                    steps.pop(0)
                wait = max(1, min(300, round(next_status - loop.time())))
                status, answer = await conn.call(
                    "GET", f"/desired?known={known}&wait={wait}", expect=(200, 204))
                answered.set()
                backoff.reset()
                if status == 200:
                    known = answer["version"]
                    told = answer["document"].get("release")
                    if told in RELEASES and told != release:
                        release = told
                        steps = ["director", "boot", "attesting", "attest", "committed"]
                if loop.time() >= next_status:
                    steps.append("status")
            except (OSError, asyncio.IncompleteReadError, TimeoutError):  # refused, reset, TLS failure
                if self.closing:
                    return
                self.errors += 1
                if conn is not None:
                    conn.writer.close()
                    conn = None
                await asyncio.sleep(backoff.next_delay())

    def close(self) -> None:
        self.closing = True
        for task in self.tasks:
            task.cancel()


async def wait_status(client: httpx.AsyncClient, rollout_id: str, statuses: tuple[str, ...],
                      timeout: float, poll: float = 0.02) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    while True:
        answer = await client.get(f"/api/v1/admin/rollouts/{rollout_id}")
        view = answer.json() if answer.status_code == 200 else {"status": f"unknown ({answer.status_code})"}
        if view["status"] in statuses:  # an overloaded server may refuse this poll: ask again
            return view, time.perf_counter()
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"rollout {rollout_id} is {view['status']}")
        await asyncio.sleep(poll)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-rollout-") as tmp:
        workdir = Path(tmp)
        plane = await start_plane(workdir, args.devices, EDGEFLEET_ROLLOUT_TICK_SECONDS=str(args.tick))
        settings, server, port, ca = plane.settings, plane.process, plane.port, plane.ca
        try:
            async with plane.client() as client:
                with AdminClient(plane.url, plane.admin, ca) as sync_client:
                    images = await asyncio.to_thread(publish, settings, workdir, sync_client)
                tpms = await asyncio.to_thread(software_tpms, args.devices)
                began = time.perf_counter()
                key = workdir / "device.key"  # one key: the server's cost per handshake is the same
                key.write_bytes(new_device_key())
                seeded = await asyncio.to_thread(seed, settings, args.devices, 0, workdir, key,
                                                 labels={"fleet": "bench"}, inventory={"hardware_type": HARDWARE})
                devices = [SimDevice(d.id, d.cert, key, tpm) for d, tpm in zip(seeded, tpms, strict=True)]
                enroll_s = time.perf_counter() - began
                sim = FleetSim(port, ca, devices, images, args.status_interval)
                powered = time.perf_counter()
                await sim.start()
                power_on_s = time.perf_counter() - powered
                await asyncio.sleep(5.0)  # the first check-ins' answers and presence writes settle
                # Baseline: what the same devices cost the control plane while nothing changes.
                print(f"{len(devices)} devices in long polls; idle baseline for {args.idle} s", file=sys.stderr,
                      flush=True)
                idle_before, idle_started = cpu_seconds(server.pid), time.perf_counter()
                await asyncio.sleep(args.idle)
                idle_cpu_s = (cpu_seconds(server.pid) - idle_before) / (time.perf_counter() - idle_started)

                # Phase 1: a clean 4-wave rollout.
                print(f"enrolled {len(devices)} devices (as at the factory) in {enroll_s:.1f} s; phase 1: a 4-wave "
                      f"rollout (server pid {server.pid})", file=sys.stderr, flush=True)
                cpu_before, requests_before = cpu_seconds(server.pid), await request_counts(client)
                reports_before, started = sim.reports, time.perf_counter()
                waves = [{"size": "1%"}, {"size": "10%"}, {"size": "50%"}, {"size": "100%"}]
                body = {"release": GOOD, "selector": {"fleet": "bench"}, "waves": waves}
                rollout_id = (await client.post("/api/v1/admin/rollouts", json=body)).json()["id"]
                # Polled once a second, as a dashboard would: the figure is the rollout's, not ours.
                view, finished = await wait_status(client, rollout_id, ("completed", "halted"), 3600, poll=1.0)
                cpu_used = cpu_seconds(server.pid) - cpu_before
                updated = len(sim.committed[GOOD])
                periodic = sim.reports - reports_before - 2 * updated  # an update reports twice
                requests = {k: v - requests_before.get(k, 0) for k, v in (await request_counts(client)).items()}
                ticks = requests.pop("edgefleet_rollout_tick_seconds_count", 0)
                tick_s = requests.pop("edgefleet_rollout_tick_seconds_sum", 0)
                requests = {k: round(v / updated, 2) for k, v in sorted(requests.items()) if v > 0}
                assert view["status"] == "completed", view

                # Phase 2: the canary commits, then a required check fails on it while its wave bakes.
                print("phase 2: a canary turns unhealthy during the bake", file=sys.stderr, flush=True)
                body = {"release": SICK, "selector": {"fleet": "bench"},
                        "waves": [{"size": "1", "selector": {}, "bake_seconds": 3600}, {"size": "100%"}]}
                sick_id = (await client.post("/api/v1/admin/rollouts", json=body)).json()["id"]
                await wait_status(client, sick_id, ("baking",), 120)
                [canary] = [d for d in devices if d.id in sim.committed[SICK]]
                unhealthy_at = await sim.turn_unhealthy(canary, "pos-terminal")
                sick_view, sick_halted_at = await wait_status(client, sick_id, ("halted",), 120)
                assert sim.committed[SICK] == {canary.id}, "a device of wave 2 was told"

                # Phase 3: the canary boots a release whose measurements no device shows.
                print("phase 3: a canary fails attestation", file=sys.stderr, flush=True)
                body = {"release": TAMPERED, "selector": {"fleet": "bench"},
                        "waves": [{"size": "1", "selector": {}}, {"size": "100%"}]}
                second = (await client.post("/api/v1/admin/rollouts", json=body)).json()["id"]
                halted_view, halted_at = await wait_status(client, second, ("halted",), 120)
                assert len(sim.failed_quotes) == 1, sim.failed_quotes
                failed_at = min(sim.failed_quotes.values())
                assert not sim.committed[TAMPERED], "a device of wave 2 was told"
                sim.close()
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), 60)
    return {
        "devices": args.devices, "enroll_s": round(enroll_s, 1), "power_on_s": round(power_on_s, 1),
        "rollout_s": round(finished - started, 1),
        "devices_updated": updated, "server_cpu_s": round(cpu_used, 2), "controller_steps": int(ticks),
        "controller_s": round(tick_s, 2),
        "idle_server_cpu_s_per_s": round(idle_cpu_s, 3),
        "server_cpu_ms_per_device_update": round(1000 * cpu_used / max(updated, 1), 3),
        "server_cpu_ms_per_device_update_net_of_idle": round(
            1000 * (cpu_used - idle_cpu_s * (finished - started)) / max(updated, 1), 3),
        "halt_after_failed_attestation_s": round(halted_at - failed_at, 3), "controller_tick_s": args.tick,
        "halt_after_unhealthy_report_s": round(sick_halted_at - unhealthy_at, 3),
        "status_interval_s": args.status_interval, "periodic_status_reports": periodic,
        "periodic_status_reports_per_s": round(periodic / (finished - started), 1),
        "halt_reason": halted_view["reason"], "unhealthy_halt_reason": sick_view["reason"],
        "device_errors": sim.errors, "requests_per_device_update": requests,
        "device_requests_per_device_update": round(sum(v for k, v in requests.items() if "/devices/" in k), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--tick", type=float, default=1.0, help="rollout controller tick, seconds")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline before the rollout")
    parser.add_argument("--status-interval", type=float, default=300.0,
                        help="each device's periodic status report (with its health), seconds (the agent's default)")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(f"{figures['devices']} emulated devices enrolled as at the factory (certificate and row) in "
          f"{figures['enroll_s']} s; powered on (boot, TPM identity, attestation, first check-in) in "
          f"{figures['power_on_s']} s")
    print(f"4-wave rollout: {figures['devices_updated']} devices updated in {figures['rollout_s']} s, control plane "
          f"used {figures['server_cpu_s']} CPU s = {figures['server_cpu_ms_per_device_update']} ms per device update "
          "(goal: under 2 ms)")
    print(f"  net of the idle baseline (long polls renewed meanwhile): "
          f"{figures['server_cpu_ms_per_device_update_net_of_idle']} ms per device update")
    print(f"  the controller took {figures['controller_steps']} steps, {figures['controller_s']} s of wall time "
          "(reading devices, planning, signing and storing assignments)")
    print(f"idle baseline: the same devices in long polls cost {figures['idle_server_cpu_s_per_s']} CPU s per s")
    print(f"failed attestation -> halt: {figures['halt_after_failed_attestation_s']} s (controller tick "
          f"{figures['controller_tick_s']} s; an agent checks in every 30 s by default)")
    print(f"  halt reason: {figures['halt_reason']}; device requests refused (overload): {figures['device_errors']}")
    print(f"first unhealthy report (a required check failing on the canary while it bakes) -> halt: "
          f"{figures['halt_after_unhealthy_report_s']} s (goal: within one check-in interval, 30 s)")
    print(f"  halt reason: {figures['unhealthy_halt_reason']}")
    print(f"health reports: every report carries the verdict; besides the updates' own, "
          f"{figures['periodic_status_reports']} periodic reports during the rollout "
          f"({figures['periodic_status_reports_per_s']}/s, one per device every {figures['status_interval_s']:g} s)")
    print(f"  requests per device update: {figures['requests_per_device_update']}")
    figures.pop("halt_reason")
    figures.pop("unhealthy_halt_reason")
    figures.pop("requests_per_device_update")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
