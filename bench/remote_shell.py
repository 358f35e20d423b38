"""Remote shells: keystroke round-trip latency through the control plane, and through a
regional hub's relay, and how many sessions one server process holds.

Four processes on this machine, loopback only: the control plane (``edgefleet server``,
SQLite), a hub (``edgefleet hub`` with its relay to the control plane), two emulated
devices with real agents and software TPMs (one reaches the server directly, one only
through the hub; both attest against a release with reference measurements), and this
process, the operator, which opens sessions as ``edgefleet devices shell`` does.

Latency: a session runs ``cat`` on the device's PTY; the operator sends one key and waits
for its echo (operator -> server [-> hub] -> agent -> PTY and back), --keys times per
path; p50 and p99. Sessions held: --sessions shells (``cat``) opened at once on the two
devices, each answering a key at the end (all alive together); the server's RSS before and
after, per session. The server's per-device rate limit is raised for the bench (each
session is a device request).

    python bench/remote_shell.py [--keys 300] [--sessions 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from checkin import free_port
from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.client import AdminClient
from edgefleet.pki import issue_server_certificate
from edgefleet.protocol.sessions import SessionRequest
from edgefleet.releases.image import ReleaseInfo
from edgefleet.remote_client import Operator
from edgefleet.web.channel import Channel
from rollout import HARDWARE, Plane, Release, publish_releases, start_plane

RUNNING = "2026.11.0"
SLOT_BYTES = 256 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_devices(spec_file: Path) -> None:
    """The devices' process: emulated A/B devices, real agents, software TPMs."""
    from edgefleet.agent import Agent, AgentSettings
    from edgefleet.agent.emulated import EmulatedDevice
    from edgefleet.agent.hardware import VirtualDevice
    from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm

    spec = json.loads(spec_file.read_text())
    devices = []
    for device in spec["devices"]:
        root = Path(device["dir"])
        vdev = VirtualDevice.create(root, hardware_id=device["name"], site="store-1", hardware_type=HARDWARE,
                                    os_version=RUNNING, release_counter=1, slot_bytes=SLOT_BYTES,
                                    slot_a=Path(spec["factory"]))
        vdev.install_trust(Path(spec["image_root"]).read_bytes(), Path(spec["director_root"]).read_bytes())
        tpm = InsecureSoftwareTpm(root / "tpm")
        settings = AgentSettings(server_url=device["server_url"], ca_file=Path(spec["ca"]), state_dir=vdev.agent_dir,
                                 bootstrap_token=device["token"], long_poll_seconds=30,
                                 remote_access_policy=None)

        def make(settings: AgentSettings = settings, vdev: VirtualDevice = vdev,
                 tpm: InsecureSoftwareTpm = tpm) -> Agent:
            return Agent(settings, vdev, site="store-1", system=vdev, tpm=tpm)

        devices.append(EmulatedDevice(vdev, make, tpm=tpm))

    async def main() -> None:
        await asyncio.gather(*(d.run(asyncio.Event()) for d in devices))

    asyncio.run(main())


def publish(plane: Plane, workdir: Path) -> tuple[Path, Path, Path]:
    factory = workdir / "factory.img"
    factory.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES))
    pcrs = reference_pcrs(factory)
    info = ReleaseInfo(RUNNING, 1, (HARDWARE,), {"0": pcrs[0].hex(), "4": pcrs[4].hex()})
    with AdminClient(plane.url, plane.admin, plane.ca) as client:
        workspace = publish_releases(plane.settings, workdir, client, [Release(factory, info)])
    metadata = workspace / "image" / "metadata"
    return factory, metadata / "1.root.json", workspace / "director" / "metadata" / "1.root.json"


async def start_hub(plane: Plane, workdir: Path) -> tuple[asyncio.subprocess.Process, int]:
    hub_dir = workdir / "hub"
    hub_dir.mkdir()
    issued = issue_server_certificate(plane.settings.pki.load_ca(), ["127.0.0.1"], datetime.now(UTC))
    (hub_dir / "hub.pem").write_bytes(issued.cert_pem)
    (hub_dir / "hub.key").write_bytes(issued.key_pem)
    (hub_dir / "token").write_text(await bootstrap(plane, "region-1", kind="hub"))
    relay = free_port()
    (hub_dir / "hub.toml").write_text(
        f'name = "hub-1"\nsite = "region-1"\nserver_url = "{plane.url}"\nca_file = "{plane.ca}"\n'
        f'tls_cert = "{hub_dir / "hub.pem"}"\ntls_key = "{hub_dir / "hub.key"}"\ndata_dir = "{hub_dir / "data"}"\n'
        f'host = "127.0.0.1"\nport = {free_port()}\nbootstrap_token_file = "{hub_dir / "token"}"\n'
        f'relay_port = {relay}\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet", "hub", "--config", str(hub_dir / "hub.toml"),
        stdout=asyncio.subprocess.DEVNULL, stderr=(hub_dir / "hub.log").open("w"))
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", relay)
            writer.close()
            return process, relay
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the hub's relay did not listen; see {hub_dir / 'hub.log'}")


async def bootstrap(plane: Plane, site: str, kind: str = "device") -> str:
    async with plane.client() as client:
        answer = await client.post("/api/v1/admin/bootstrap-tokens", json={"site": site, "labels": {}, "kind": kind})
        answer.raise_for_status()
        token: str = answer.json()["token"]
        return token


async def attested_devices(plane: Plane, count: int, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    async with plane.client() as client:
        while time.monotonic() < deadline:
            listed = (await client.get("/api/v1/admin/devices")).json()["devices"]
            ready = [d["id"] for d in listed if (d.get("attestation") or {}).get("state") == "passed"]
            if len(ready) == count:
                return sorted(ready)
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{count} devices did not enroll and attest within {timeout:.0f} s")


async def echo(channel: Channel, key: bytes) -> float:
    """Seconds from sending ``key`` to seeing it come back."""
    started = time.perf_counter()
    await channel.send(key)
    seen = b""
    while key not in seen:
        frame = await channel.receive()
        if frame is None:
            raise RuntimeError(f"the session ended: {channel.closed_reason}")
        if isinstance(frame, bytes):
            seen += frame
    return time.perf_counter() - started


async def latencies(operator: Operator, device_id: str, keys: int) -> list[float]:
    async with await operator.session(device_id, SessionRequest(verb="shell", command=["exec cat"])) as shell:
        await echo(shell, b"w")  # cat runs
        return [await echo(shell, bytes([ord("a") + i % 26])) for i in range(keys)]


async def held(operator: Operator, devices: list[str], count: int) -> int:
    """Open ``count`` sessions at once; how many answer a key with all of them open."""
    request = SessionRequest(verb="shell", command=["exec cat"])
    channels = await asyncio.gather(*(operator.session(devices[i % len(devices)], request) for i in range(count)),
                                    return_exceptions=True)
    opened = [c for c in channels if isinstance(c, Channel)]
    failures = [c for c in channels if not isinstance(c, Channel)]
    if failures:
        print(f"  {len(failures)} sessions did not open, first: {failures[0]}")
    answers = await asyncio.gather(*(echo(c, b"z") for c in opened), return_exceptions=True)
    alive = sum(1 for a in answers if isinstance(a, float))
    for channel in opened:
        await channel.__aexit__()
    return alive


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plane = await start_plane(workdir, 100, EDGEFLEET_DEVICE_RATE_PER_SECOND="1000",
                              EDGEFLEET_DEVICE_RATE_BURST="5000")
    hub = devices = None
    try:
        factory, image_root, director_root = await asyncio.to_thread(publish, plane, workdir)
        hub, relay = await start_hub(plane, workdir)
        spec = {"factory": str(factory), "image_root": str(image_root), "director_root": str(director_root),
                "ca": str(plane.ca), "devices": [
                    {"name": "direct", "dir": str(workdir / "direct"), "server_url": plane.url,
                     "token": await bootstrap(plane, "store-1")},
                    {"name": "behind-hub", "dir": str(workdir / "behind"), "server_url": f"https://127.0.0.1:{relay}",
                     "token": await bootstrap(plane, "store-1")}]}
        (workdir / "devices.json").write_text(json.dumps(spec))
        devices = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--devices", str(workdir / "devices.json"),
            stdout=asyncio.subprocess.DEVNULL, stderr=(workdir / "devices.log").open("w"))
        found = await attested_devices(plane, 2)
        async with plane.client() as client:
            listed = (await client.get("/api/v1/admin/devices")).json()["devices"]
        hardware = {d["id"]: d["hardware_id"] for d in listed}
        direct = next(d for d in found if hardware[d] == "direct")
        behind = next(d for d in found if hardware[d] == "behind-hub")
        operator = Operator(plane.url, plane.admin, plane.ca)
        figures: dict[str, Any] = {}
        for name, device in (("server", direct), ("hub", behind)):
            samples = [s * 1000 for s in await latencies(operator, device, args.keys)]
            figures[f"{name}_p50_ms"] = round(statistics.median(samples), 2)
            figures[f"{name}_p99_ms"] = round(percentile(samples, 0.99), 2)
            print(f"keystroke round trip through the {name}: p50 {figures[f'{name}_p50_ms']:.2f} ms, "
                  f"p99 {figures[f'{name}_p99_ms']:.2f} ms over {len(samples)} keys")
        before = rss_mib(plane.process.pid)
        alive = await held(operator, [direct, behind], args.sessions)
        after = rss_mib(plane.process.pid)
        print(f"sessions held at once by one server process: {alive} of {args.sessions} answered "
              f"(server RSS {before:.1f} -> {after:.1f} MiB, {(after - before) * 1024 / max(alive, 1):.0f} KiB "
              "per session)")
    finally:
        for process in (devices, hub, plane.process):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
    return {"keystroke_rtt_server_p50_ms": figures["server_p50_ms"],
            "keystroke_rtt_server_p99_ms": figures["server_p99_ms"],
            "keystroke_rtt_hub_p50_ms": figures["hub_p50_ms"], "keystroke_rtt_hub_p99_ms": figures["hub_p99_ms"],
            "keys": args.keys, "sessions_asked": args.sessions, "sessions_held": alive,
            "server_rss_before_mib": round(before, 1), "server_rss_with_sessions_mib": round(after, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=300, help="keystrokes timed per path")
    parser.add_argument("--sessions", type=int, default=200, help="sessions opened at once")
    parser.add_argument("--devices", type=Path, help=argparse.SUPPRESS)  # the devices' own process
    args = parser.parse_args()
    if args.devices is not None:
        run_devices(args.devices)
        return
    with tempfile.TemporaryDirectory(prefix="edgefleet-remote-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
