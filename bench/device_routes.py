"""What each request of the device protocol costs the control plane, route by route.

A real control plane runs in its own process (SQLite, attestation required). N emulated
devices (software TPMs, enrolled as at the factory) power on over one kept-alive mTLS
connection each, then every device sends each request of an update in turn, a fixed
number in flight; the server process's own CPU time (``/proc``) per request is printed
per route, beside ``GET /healthz`` on the same connections (the floor: TLS, HTTP, routing).

    python bench/device_routes.py [--devices 1000] [--rounds 2] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from checkin import read_response
from edgefleet.client import AdminClient
from edgefleet.pki import new_device_key
from fleet_tpm import WORKLOAD_TOKEN, BootImage, Connection, software_tpms
from rollout import FACTORY, HARDWARE, cpu_seconds, publish, start_plane
from scale import seed


class Device:
    def __init__(self, conn: Connection, tpm: Any, image: BootImage) -> None:
        self.conn, self.tpm, self.image = conn, tpm, image
        self.seq = 0
        self.known = -1
        self.snapshot = 0
        self.nonce: dict[str, Any] = {}

    async def healthz(self) -> None:
        self.conn.writer.write(f"GET /healthz HTTP/1.1\r\n{self.conn.host}\r\n".encode())
        status, _ = await read_response(self.conn.reader)
        assert status == 200, status

    async def desired_changed(self) -> None:
        self.known = (await self.conn.call("GET", "/desired?known=-1"))[1]["version"]

    async def desired_unchanged(self) -> None:
        await self.conn.call("GET", f"/desired?known={self.known}", expect=(204,))

    async def timestamp(self) -> None:
        answer = (await self.conn.call("GET", "/director/timestamp.json"))[1]
        self.snapshot = answer["signed"]["meta"]["snapshot.json"]["version"]

    async def snapshot_file(self) -> None:
        await self.conn.call("GET", f"/director/{self.snapshot}.snapshot.json")

    async def targets_file(self) -> None:
        await self.conn.call("GET", f"/director/{self.snapshot}.targets.json")

    async def status(self) -> None:
        self.seq += 1
        await self.conn.report(self.seq, FACTORY, "idle")

    async def nonce_(self) -> None:
        self.nonce = (await self.conn.call("POST", "/attestation/nonce"))[1]

    async def quote(self) -> None:
        import base64
        issued = self.nonce
        attest, signature, values = self.tpm.quote(bytes.fromhex(issued["nonce"]), issued["bank"],
                                                   [int(p) for p in issued["pcrs"]])
        verdict = (await self.conn.call("POST", "/attestation/quote", {
            "nonce": issued["nonce"], "attest": base64.b64encode(attest).decode(),
            "signature": base64.b64encode(signature).decode(),
            "pcr_values": {str(k): v.hex() for k, v in values.items()},
            "event_log": base64.b64encode(self.image.log).decode()}))[1]
        assert verdict["passed"] is True, verdict

    async def nonce_and_quote(self) -> None:
        await self.nonce_()
        await self.quote()

    async def token(self) -> None:
        await self.conn.call("GET", WORKLOAD_TOKEN)


async def each(devices: list[Device], step: Callable[[Device], Awaitable[None]], concurrency: int) -> None:
    queue = list(devices)

    async def worker() -> None:
        while queue:
            await step(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-routes-") as tmp:
        workdir = Path(tmp)
        plane = await start_plane(workdir, args.devices)
        settings, server, port, ca = plane.settings, plane.process, plane.port, plane.ca
        try:
            with AdminClient(plane.url, plane.admin, ca) as sync_client:
                images = await asyncio.to_thread(publish, settings, workdir, sync_client)
            tpms = await asyncio.to_thread(software_tpms, args.devices)
            key = workdir / "device.key"
            key.write_bytes(new_device_key())
            seeded = await asyncio.to_thread(seed, settings, args.devices, 0, workdir, key,
                                             labels={"fleet": "bench"}, inventory={"hardware_type": HARDWARE})
            devices: list[Device] = []
            for d, tpm in zip(seeded, tpms, strict=True):
                context = ssl.create_default_context(cafile=str(ca))
                context.load_cert_chain(str(d.cert), str(key))
                streams = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
                devices.append(Device(Connection(d.id, port, *streams), tpm, images[FACTORY]))

            async def power_on(device: Device) -> None:
                device.image.boot(device.tpm)
                await device.status()
                await device.conn.enroll_tpm(device.tpm)
                assert await device.conn.attest(device.tpm, device.image)

            await each(devices, power_on, args.concurrency)
            await asyncio.sleep(3.0)  # presence flushes settle
            steps: list[tuple[str, Callable[[Device], Awaitable[None]]]] = [
                ("GET /healthz (floor)", Device.healthz),
                ("GET desired (200, document)", Device.desired_changed),
                ("GET desired (204, unchanged)", Device.desired_unchanged),
                ("GET director timestamp", Device.timestamp),
                ("GET director snapshot", Device.snapshot_file),
                ("GET director targets", Device.targets_file),
                ("POST status", Device.status),
                ("POST attestation/nonce", Device.nonce_),
                ("POST attestation/quote", Device.quote),
                ("POST attestation/nonce+quote", Device.nonce_and_quote),
                ("GET workload-token", Device.token),
            ]
            steps = [(name, step) for name, step in steps if args.only in name]
            costs: dict[str, list[float]] = {name: [] for name, _ in steps}
            for _ in range(args.rounds):
                for name, step in steps:
                    before = cpu_seconds(server.pid)
                    await each(devices, step, args.concurrency)
                    costs[name].append((cpu_seconds(server.pid) - before) / len(devices))
            for device in devices:
                device.conn.writer.close()
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), 60)
    return {name: round(1000 * min(values), 3) for name, values in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="each route's cost is the cheapest round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only", default="", help="measure only the routes whose names contain this")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    for name, ms in figures.items():
        print(f"{name:32s} {ms:7.3f} ms of server CPU per request")
    if not args.only:
        total = sum(v for k, v in figures.items() if "floor" not in k and "204" not in k and "+" not in k)
        print(f"an update's requests (desired, 3 director files, 2 status, nonce, quote, token): "
              f"{total + figures['POST status']:.2f} ms")
    print(json.dumps({f"{k}_ms": v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
