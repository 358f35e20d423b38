"""Check-in throughput: >= 1,000 enrolled emulated devices against a real control plane
(separate process, loopback HTTPS with mTLS), on SQLite and PostgreSQL.

For each backend: start `edgefleet server`, enroll the devices through the real API (each
gets its own key and certificate), open one mTLS connection per device, then drive
"nothing new" check-ins (GET .../desired?known=<current> -> 204) round-robin over all
devices with a fixed number in flight. The floor is the same load, same connections,
against GET /healthz on the same server stack. The client is a minimal asyncio HTTP/1.1
loop so that, on a 2-core machine, it costs the server as little CPU as possible.

    python bench/checkin.py [--devices 1000] [--seconds 10] [--concurrency 32] [--backends sqlite,postgresql]

Prints readable figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from edgefleet.credentials import Role
from edgefleet.pki import make_csr, new_device_key
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.settings import ServerSettings

PG_ADMIN = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Conn:
    device_id: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    checkin: bytes
    health: bytes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length) if length else b""


async def enroll_all(url: str, ca: Path, admin_token: str, count: int, workdir: Path,
                     inventory: dict[str, object] | None = None) -> list[tuple[str, Path, Path]]:
    context = ssl.create_default_context(cafile=str(ca))
    devices: list[tuple[str, Path, Path]] = []
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, verify=context, timeout=60,
                                 headers={"authorization": f"Bearer {admin_token}"}) as client:

        async def one(i: int) -> None:
            async with sem:
                token = (await client.post("/api/v1/admin/bootstrap-tokens",
                                           json={"site": f"site-{i % 50}"})).json()["token"]
                key = new_device_key()
                body = {"token": token, "csr_pem": make_csr(key, f"hw-{i}").decode(),
                        "inventory": {"hardware_id": f"bench-{i}-{secrets.token_hex(3)}", "site": f"site-{i % 50}",
                                      **(inventory or {})}}
                for attempt in range(5):  # an overloaded server says 503: back off and retry, as agents do
                    response = await client.post("/api/v1/enroll", json=body, headers={"authorization": ""})
                    if response.status_code != 503 or attempt == 4:
                        break
                    await asyncio.sleep(random.uniform(0.5, 2.0))
                response.raise_for_status()
                answer = response.json()
                keyfile, certfile = workdir / f"{i}.key", workdir / f"{i}.pem"
                keyfile.write_bytes(key)
                certfile.write_text(answer["certificate_pem"])
                devices.append((answer["device_id"], certfile, keyfile))

        await asyncio.gather(*(one(i) for i in range(count)))
    return devices


async def connect_all(port: int, ca: Path, devices: list[tuple[str, Path, Path]]) -> list[Conn]:
    conns: list[Conn] = []
    sem = asyncio.Semaphore(32)

    async def one(device_id: str, cert: Path, key: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        host = f"Host: 127.0.0.1:{port}\r\n".encode()
        # learn the current desired version with a first check-in (200), then ask with it
        writer.write(b"GET /api/v1/devices/%s/desired HTTP/1.1\r\n%s\r\n" % (device_id.encode(), host))
        version = json.loads((await read_response(reader))[1])["version"]
        checkin = b"GET /api/v1/devices/%s/desired?known=%d HTTP/1.1\r\n%s\r\n" % (device_id.encode(), version, host)
        conns.append(Conn(device_id, reader, writer, checkin, b"GET /healthz HTTP/1.1\r\n%s\r\n" % host))

    await asyncio.gather(*(one(*d) for d in devices))
    return conns


async def drive(conns: list[Conn], kind: str, seconds: float, concurrency: int, expect: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    queue: asyncio.Queue[Conn] = asyncio.Queue()
    for conn in conns:
        queue.put_nowait(conn)

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            conn = await queue.get()
            start = time.perf_counter()
            conn.writer.write(conn.checkin if kind == "checkin" else conn.health)
            status, _ = await read_response(conn.reader)
            latencies.append(time.perf_counter() - start)
            if status != expect:
                errors += 1
            queue.put_nowait(conn)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "requests": len(latencies),
        "errors": errors,
    }


async def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix=f"edgefleet-bench-{backend}-"))
    database_url = None
    db_name = None
    if backend == "postgresql":
        db_name = f"edgefleet_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(PG_ADMIN)
        await conn.execute(f'CREATE DATABASE "{db_name}"')
        await conn.close()
        database_url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{db_name}"
    settings = ServerSettings(data_dir=workdir / "server", database_url=database_url)
    init_server(settings, datetime.now(UTC))
    admin = await create_admin_token(settings, name="bench", role=Role.OPERATOR, now=datetime.now(UTC), ttl=None)
    port = free_port()
    command = [sys.executable, "-m", "edgefleet", "server", "--data-dir", str(settings.data_dir), "--port", str(port),
               "--log-level", "warning"]
    if database_url:
        command += ["--database-url", database_url]
    # the emulated devices here have no TPM, and each checks in as fast as it can: measure
    # check-ins, not the attestation gate or the per-device rate limit (test_rate_limits)
    env = {**os.environ, "EDGEFLEET_ATTESTATION_REQUIRED": "false", "EDGEFLEET_DEVICE_RATE_PER_SECOND": "0"}
    server = await asyncio.create_subprocess_exec(*command, env=env)
    url = f"https://127.0.0.1:{port}"
    ca = settings.pki.ca_cert
    try:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca))) as probe:
            for _ in range(300):
                try:
                    if (await probe.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        began = time.perf_counter()
        devices = await enroll_all(url, ca, admin, args.devices, workdir)
        enroll_s = time.perf_counter() - began
        conns = await connect_all(port, ca, devices)
        await drive(conns, "checkin", 2, args.concurrency, 204)  # warm up
        await drive(conns, "health", 2, args.concurrency, 200)
        checkin = await drive(conns, "checkin", args.seconds, args.concurrency, 204)
        floor = await drive(conns, "health", args.seconds, args.concurrency, 200)
        for conn in conns:
            conn.writer.close()
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
        if db_name:
            conn = await asyncpg.connect(PG_ADMIN)
            await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            await conn.close()
        shutil.rmtree(workdir, ignore_errors=True)  # the server's data, the devices' keys
    result = {
        "devices": len(devices),
        "enrollments_per_s": len(devices) / enroll_s,
        "checkins_per_s": checkin["per_s"],
        "checkin_p50_ms": checkin["p50_ms"],
        "checkin_p99_ms": checkin["p99_ms"],
        "checkin_errors": checkin["errors"],
        "floor_per_s": floor["per_s"],
        "floor_p50_ms": floor["p50_ms"],
        "floor_p99_ms": floor["p99_ms"],
        "checkin_to_floor_ratio": checkin["per_s"] / floor["per_s"],
    }
    print(f"{backend:>10}: {len(devices)} devices enrolled at {result['enrollments_per_s']:.0f}/s; "
          f"check-ins {checkin['per_s']:.0f}/s (p50 {checkin['p50_ms']:.1f} ms, p99 {checkin['p99_ms']:.1f} ms, "
          f"{checkin['errors']} errors) vs floor /healthz {floor['per_s']:.0f}/s (p50 {floor['p50_ms']:.1f} ms, "
          f"p99 {floor['p99_ms']:.1f} ms): {100 * result['checkin_to_floor_ratio']:.0f}% of floor", flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"edgefleet check-in bench: {args.devices} devices, {args.concurrency} in flight, {args.seconds:.0f} s per "
          f"run, {os.cpu_count()} cores, server in its own process")
    figures: dict[str, float] = {}
    for backend in args.backends.split(","):
        for key, value in (await bench_backend(backend, args)).items():
            figures[f"{backend}_{key}"] = round(value, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
