"""What a wave rollout costs the control plane, and how fast it halts.

A real control plane runs in its own process (SQLite, rollout controller ticking every
--tick seconds). N emulated devices enroll over mTLS and wait in long polls, as agents do;
when the director assigns them the release they report it committed. Phase 1 rolls a
release out in 4 waves (1%, 10%, 50%, 100%) and measures the server process's CPU time per
device updated (its own /proc counters, so the load generator is not counted). Phase 2
rolls the next release out with one canary whose software TPM shows a measurement the
release does not allow: it attests, fails, and the time from its failed attestation to the
rollout's halt is measured, next to the controller's tick and an agent's check-in interval.

    python bench/rollout.py [--devices 10000] [--tick 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from checkin import enroll_all, free_port, read_response
from edgefleet.agent.attestor import Attestor
from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.firmware import measured_boot
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.transport import HttpsTransport
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.protocol.v1 import StatusReport
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.settings import ServerSettings
from edgefleet.util.backoff import Backoff

HARDWARE = "bench-x86"
RELEASES = ("2026.12.0", "2026.12.1")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(settings: ServerSettings, workdir: Path, client: AdminClient) -> None:
    now = datetime.now(UTC)
    keys = Keystore(workdir / "offline-keys")
    workspace = Workspace(workdir / "workspace")
    workspace.init(keys, load_online_keys(settings.data_dir / "keys" / "online-keys.json"), now)
    for counter, version in enumerate(RELEASES, start=2):
        image = workdir / f"{version}.img"
        image.write_bytes(vimage.build(version, counter, size=4096))
        # The second release allows only a PCR 4 no emulated device shows: the canary fails.
        workspace.create_release(image, ReleaseInfo(version, counter, (HARDWARE,),
                                                    {"4": "ab" * 32} if counter == 3 else {}), now)
    workspace.sign_targets(keys.signer("targets-1"))
    publish_workspace(workspace, client)


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


class FleetSim:
    """Devices in long polls; each reports the release committed as soon as it is assigned."""

    def __init__(self, port: int, ca: Path, devices: list[tuple[str, Path, Path]]) -> None:
        self.port, self.ca, self.devices = port, ca, devices
        self.committed: dict[str, set[str]] = {r: set() for r in RELEASES}
        self.skip: set[str] = set()  # devices that do not answer (the canary of phase 2)
        self.errors = 0  # answers other than 200/204 (an overloaded server says 503), lost connections
        self.closing = False
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        sem = asyncio.Semaphore(64)
        await asyncio.gather(*(self._connect(d, sem) for d in self.devices))

    async def _connect(self, device: tuple[str, Path, Path], sem: asyncio.Semaphore) -> None:
        async with sem:  # at most 64 devices connecting and checking in for the first time at once
            answered = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._live(device, answered)))
            await answered.wait()

    async def _open(self, device: tuple[str, Path, Path]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(device[1]), str(device[2]))
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=context, server_hostname="localhost")

    async def _live(self, device: tuple[str, Path, Path], answered: asyncio.Event) -> None:
        """One device: long polls; after a refusal it backs off and, as an agent does,
        reconnects (the server drops idle keep-alive connections meanwhile)."""
        device_id, host = device[0], f"Host: 127.0.0.1:{self.port}\r\n"
        known, seq = -1, 0
        backoff = Backoff(1.0, 300.0)  # the agent's own: exponential with full jitter
        reader, writer = await self._open(device)
        while True:
            try:
                writer.write(f"GET /api/v1/devices/{device_id}/desired?known={known}&wait=300 HTTP/1.1\r\n"
                             f"{host}\r\n".encode())
                status, body = await read_response(reader)
                answered.set()
                if status == 200:
                    backoff.reset()
                    answer = json.loads(body)
                    known = answer["version"]
                    release = answer["document"].get("release")
                    if (release in RELEASES and device_id not in self.skip
                            and device_id not in self.committed[release]):
                        seq += 1
                        report = json.dumps({"seq": seq, "running_version": release, "update_state": "committed",
                                             "update": {"phase": "committed", "release": release}}).encode()
                        writer.write(f"POST /api/v1/devices/{device_id}/status HTTP/1.1\r\n{host}content-type: "
                                     f"application/json\r\ncontent-length: {len(report)}\r\n\r\n".encode()
                                     + report)
                        status = (await read_response(reader))[0]
                        if status == 200:
                            self.committed[release].add(device_id)
                if status in (200, 204):
                    continue
            except (asyncio.IncompleteReadError, ConnectionError):
                answered.set()
                if self.closing:
                    return
            self.errors += 1
            await asyncio.sleep(backoff.next_delay())
            writer.close()
            reader, writer = await self._open(device)

    def close(self) -> None:
        self.closing = True
        for task in self.tasks:
            task.cancel()


async def wait_status(client: httpx.AsyncClient, rollout_id: str, statuses: tuple[str, ...],
                      timeout: float, poll: float = 0.02) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    while True:
        view = (await client.get(f"/api/v1/admin/rollouts/{rollout_id}")).json()
        if view["status"] in statuses:
            return view, time.perf_counter()
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"rollout {rollout_id} is {view['status']}")
        await asyncio.sleep(poll)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-rollout-") as tmp:
        workdir = Path(tmp)
        settings = ServerSettings(data_dir=workdir / "server")
        init_server(settings, datetime.now(UTC))
        admin = await create_admin_token(settings, name="bench", role=Role.ADMIN, now=datetime.now(UTC), ttl=None)
        port = free_port()
        env = {**os.environ, "EDGEFLEET_ATTESTATION_REQUIRED": "false",
               "EDGEFLEET_ROLLOUT_TICK_SECONDS": str(args.tick),
               "EDGEFLEET_MAX_LONG_POLLS": str(args.devices + 100)}
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet", "server", "--data-dir", str(settings.data_dir), "--port", str(port),
            "--log-level", "warning", env=env)
        url, ca = f"https://127.0.0.1:{port}", settings.pki.ca_cert
        context = ssl.create_default_context(cafile=str(ca))
        try:
            async with httpx.AsyncClient(base_url=url, verify=context, timeout=60,
                                         headers={"authorization": f"Bearer {admin}"}) as client:
                for _ in range(300):
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                with AdminClient(url, admin, ca) as sync_client:
                    await asyncio.to_thread(publish, settings, workdir, sync_client)
                began = time.perf_counter()
                devices = await enroll_all(url, ca, admin, args.devices, workdir,
                                           {"hardware_type": HARDWARE, "labels": {"fleet": "bench"}})
                enroll_s = time.perf_counter() - began
                canary_id, canary_cert, canary_key = min(devices)  # the planner places devices by id
                sim = FleetSim(port, ca, devices)
                await sim.start()
                await asyncio.sleep(5.0)  # the first check-ins' answers and presence writes settle
                # Baseline: what the same devices cost the control plane while nothing changes.
                print(f"{len(devices)} devices in long polls; idle baseline for {args.idle} s", file=sys.stderr,
                      flush=True)
                idle_before, idle_started = cpu_seconds(server.pid), time.perf_counter()
                await asyncio.sleep(args.idle)
                idle_cpu_s = (cpu_seconds(server.pid) - idle_before) / (time.perf_counter() - idle_started)

                # Phase 1: a clean 4-wave rollout.
                print(f"enrolled {len(devices)} devices in {enroll_s:.1f} s; phase 1: a 4-wave rollout (server pid "
                      f"{server.pid})", file=sys.stderr, flush=True)
                cpu_before, requests_before = cpu_seconds(server.pid), await request_counts(client)
                started = time.perf_counter()
                waves = [{"size": "1%"}, {"size": "10%"}, {"size": "50%"}, {"size": "100%"}]
                body = {"release": RELEASES[0], "selector": {"fleet": "bench"}, "waves": waves}
                rollout_id = (await client.post("/api/v1/admin/rollouts", json=body)).json()["id"]
                # Polled once a second, as a dashboard would: the figure is the rollout's, not ours.
                view, finished = await wait_status(client, rollout_id, ("completed", "halted"), 3600, poll=1.0)
                cpu_used = cpu_seconds(server.pid) - cpu_before
                updated = len(sim.committed[RELEASES[0]])
                requests = {k: v - requests_before.get(k, 0) for k, v in (await request_counts(client)).items()}
                ticks = requests.pop("edgefleet_rollout_tick_seconds_count", 0)
                tick_s = requests.pop("edgefleet_rollout_tick_seconds_sum", 0)
                requests = {k: round(v / updated, 2) for k, v in sorted(requests.items()) if v > 0}
                assert view["status"] == "completed", view

                # Phase 2: the canary's TPM shows what the next release does not allow.
                print("phase 2: a canary fails attestation", file=sys.stderr, flush=True)
                sim.skip.add(canary_id)
                tpm = InsecureSoftwareTpm(workdir / "canary-tpm")
                image = workdir / "canary-slot.img"
                image.write_bytes(vimage.build(RELEASES[1], 3, size=4096))
                measured_boot(tpm, image, workdir / "canary-eventlog.bin", power_cycle=lambda: None)
                transport = HttpsTransport(url, ca, cert_file=canary_cert, key_file=canary_key, timeout=30)
                attestor = Attestor(tpm, workdir / "canary-eventlog.bin", workdir / "canary-token", None)
                await attestor.enroll(transport, canary_id)
                body = {"release": RELEASES[1], "selector": {"fleet": "bench"},
                        "waves": [{"size": "1", "selector": {}}, {"size": "100%"}]}
                second = (await client.post("/api/v1/admin/rollouts", json=body)).json()["id"]
                await wait_status(client, second, ("running",), 60)
                # The canary (first device by id is the one placed in wave 1) is told; it reports
                # the new release running and attests.
                placed = [e["device_id"] for e in (await client.get(
                    f"/api/v1/admin/rollouts/{second}/events")).json()["events"] if e["kind"] == "assign"]
                while not placed:
                    await asyncio.sleep(0.05)
                    placed = [e["device_id"] for e in (await client.get(
                        f"/api/v1/admin/rollouts/{second}/events")).json()["events"] if e["kind"] == "assign"]
                assert placed == [canary_id] or canary_id in placed, (placed, canary_id)
                status = json.dumps({"seq": 10_000, "running_version": RELEASES[1], "update_state": "attesting",
                                     "update": {"phase": "attesting", "release": RELEASES[1]}})
                await transport.report_status(canary_id, StatusReport.model_validate_json(status))
                passed = await attestor.attest(transport, canary_id)
                failed_at = time.perf_counter()
                assert passed is False
                halted_view, halted_at = await wait_status(client, second, ("halted",), 60)
                await transport.aclose()
                sim.close()
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), 60)
    return {
        "devices": args.devices, "enroll_s": round(enroll_s, 1), "rollout_s": round(finished - started, 1),
        "devices_updated": updated, "server_cpu_s": round(cpu_used, 2), "controller_steps": int(ticks),
        "controller_s": round(tick_s, 2),
        "idle_server_cpu_s_per_s": round(idle_cpu_s, 3),
        "server_cpu_ms_per_device_update": round(1000 * cpu_used / max(updated, 1), 3),
        "halt_after_failed_attestation_s": round(halted_at - failed_at, 3), "controller_tick_s": args.tick,
        "halt_reason": halted_view["reason"], "device_errors": sim.errors, "requests_per_device_update": requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--tick", type=float, default=1.0, help="rollout controller tick, seconds")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline before the rollout")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(f"{figures['devices']} emulated devices enrolled in {figures['enroll_s']} s")
    print(f"4-wave rollout: {figures['devices_updated']} devices updated in {figures['rollout_s']} s, control plane "
          f"used {figures['server_cpu_s']} CPU s = {figures['server_cpu_ms_per_device_update']} ms per device update "
          "(goal: under 5 ms)")
    print(f"  the controller took {figures['controller_steps']} steps, {figures['controller_s']} s of wall time "
          "(reading devices, planning, signing and storing assignments)")
    print(f"idle baseline: the same devices in long polls cost {figures['idle_server_cpu_s_per_s']} CPU s per s")
    print(f"failed attestation -> halt: {figures['halt_after_failed_attestation_s']} s (controller tick "
          f"{figures['controller_tick_s']} s; an agent checks in every 30 s by default)")
    print(f"  halt reason: {figures['halt_reason']}; device requests refused (overload): {figures['device_errors']}")
    print(f"  requests per device update: {figures['requests_per_device_update']}")
    figures.pop("halt_reason")
    figures.pop("requests_per_device_update")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
