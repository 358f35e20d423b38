"""How large a fleet one machine holds: the largest number of devices checking in every
60 s with p99 check-in latency under 1 s, for SQLite with one server process and for
PostgreSQL with 1, 2 and 4 processes (sharing one port with SO_REUSEPORT), with the load
generator (the simulated devices) on the same 2-core machine.

Devices are pre-enrolled as a factory would (certificates signed by the fleet CA, rows in
the database, no API calls), then each one keeps an mTLS connection open, as the agent does
(it keeps an idle connection 90 s, the server 120 s), and checks in once per interval at
its own random phase: GET /desired?known=<version> (204, nothing new), and every fifth
time a status report. The fleet grows step by step; at each step the devices check in for
one whole interval and the p99 latency of that interval is measured. A step holds when
p99 < 1 s and fewer than 0.1% of check-ins fail.

Then, at the largest fleet PostgreSQL/1 held, the server runs under cProfile for one
interval and the profile is summarised by package: where the time goes.

    python bench/scale.py [--steps 5000,10000,20000,30000,40000,50000,60000] [--interval 60]
                          [--configs sqlite:1,postgresql:1,postgresql:2,postgresql:4] [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import pstats
import random
import secrets
import signal
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import uvloop

from checkin import read_response
from edgefleet.pki import make_csr, new_device_key
from edgefleet.pki.certs import issue_device_certificate
from edgefleet.server.local import init_server
from edgefleet.server.run import raise_open_files_limit
from edgefleet.server.settings import ServerSettings
from edgefleet.sim.servers import ServerPool, create_postgres_database, drop_postgres_database
from edgefleet.store import Database
from edgefleet.store.devices import insert_device

P99_LIMIT_S = 1.0
ERROR_LIMIT = 0.001


@dataclass
class Device:
    id: str
    cert: Path
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    seq: int = 0
    checkins: int = 0


def seed(settings: ServerSettings, count: int, start: int, workdir: Path, key: Path, *,
         labels: dict[str, str] | None = None, inventory: dict[str, object] | None = None) -> list[Device]:
    """``count`` devices enrolled as at the factory: a certificate each (one shared key:
    the server's cost per handshake is the same), a row each."""
    ca = settings.pki.load_ca()
    csr = make_csr(key.read_bytes(), "bench").decode()
    now = datetime.now(UTC)
    devices, rows = [], []
    for i in range(start, start + count):
        device_id = f"dev-{i:08d}{secrets.token_hex(6)}"
        site = f"site-{i % 500}"
        pem, cert = issue_device_certificate(ca, csr, device_id, now, 30, site=site)  # as enrollment signs it
        path = workdir / f"{i}.pem"
        path.write_bytes(pem)
        devices.append(Device(device_id, path))
        rows.append(dict(id=device_id, hardware_id=f"bench-{i}", site=site, labels=labels or {},
                         inventory=inventory or {},
                         cert_serial=cert.serial, cert_not_after=cert.not_after, enrolled_at=now, status_seq=0,
                         health="ok", update_state="idle", desired_version=0, desired={}))
    asyncio.run(insert_rows(settings, rows))
    return devices


async def insert_rows(settings: ServerSettings, rows: list[dict[str, object]]) -> None:
    db = Database(settings.effective_database_url)
    try:
        for offset in range(0, len(rows), 1000):
            async with db.transaction() as conn:
                for row in rows[offset:offset + 1000]:
                    await insert_device(conn, **row)
    finally:
        await db.close()


class Load:
    """The simulated devices: each keeps its connection and checks in once per interval."""

    def __init__(self, port: int, ca: Path, key: Path, interval: float, source: str = "127.0.0.1") -> None:
        self.port, self.ca, self.key, self.interval = port, ca, key, interval
        self.source = source  # this process's own address: one address has only ~28,000 ports to connect from
        self.devices: list[Device] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.unconnected = 0
        self.refused_in_a_row = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.host = f"Host: 127.0.0.1:{port}\r\n".encode()

    async def connect(self, device: Device) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(device.cert), str(self.key))
        device.reader, device.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=context, server_hostname="localhost", local_addr=(self.source, 0))

    async def add(self, devices: list[Device]) -> float:
        """Connect ``devices`` (a few hundred handshakes at a time) and start their loops;
        the seconds it took."""
        began = time.perf_counter()
        sem = asyncio.Semaphore(64)  # handshakes at once from this process (a burst overflows accept queues)

        async def one(device: Device) -> None:
            async with sem:
                if self.refused_in_a_row >= 200:  # the server is refusing every connection: stop waiting
                    self.unconnected += 1
                    return
                for attempt in range(5):
                    try:
                        await self.connect(device)
                        self.refused_in_a_row = 0
                        break
                    except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                        if attempt == 4:
                            self.unconnected += 1  # the server did not take it (at its open-file limit?)
                            self.refused_in_a_row += 1
                            return
                        await asyncio.sleep(1 + attempt)
            self.devices.append(device)
            self.tasks.append(asyncio.create_task(self.live(device)))

        await asyncio.gather(*(one(d) for d in devices))
        return time.perf_counter() - began

    async def checkin(self, device: Device) -> None:
        assert device.writer is not None
        assert device.reader is not None
        device.checkins += 1
        if device.checkins % 5 == 1:
            device.seq += 1
            body = json.dumps({"seq": device.seq, "running_version": "2026.11.0", "health": "ok"}).encode()
            device.writer.write(b"POST /api/v1/devices/%s/status HTTP/1.1\r\n%scontent-type: application/json\r\n"
                                b"content-length: %d\r\n\r\n%s" % (device.id.encode(), self.host, len(body), body))
            status, _ = await read_response(device.reader)
            if status != 200:
                raise OSError(f"status report answered {status}")
        device.writer.write(b"GET /api/v1/devices/%s/desired?known=0 HTTP/1.1\r\n%s\r\n" % (device.id.encode(),
                                                                                               self.host))
        status, _ = await read_response(device.reader)
        if status not in (200, 204):
            raise OSError(f"check-in answered {status}")

    async def live(self, device: Device) -> None:
        rng = random.Random(device.id)
        await asyncio.sleep(rng.uniform(0, self.interval))
        while True:
            start = time.perf_counter()
            try:
                await self.checkin(device)
                self.latencies.append(time.perf_counter() - start)
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                self.errors += 1
                self.latencies.append(time.perf_counter() - start)
                if device.writer is not None:
                    device.writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await self.connect(device)
            await asyncio.sleep(max(0.0, self.interval - (time.perf_counter() - start)))

    async def measure(self, seconds: float) -> tuple[list[float], int]:
        """The latencies of the check-ins made in the next ``seconds``, and the errors."""
        self.latencies, self.errors = [], 0
        await asyncio.sleep(seconds)
        return self.latencies, self.errors

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for device in self.devices:
            if device.writer is not None:
                device.writer.close()


PER_WORKER = 12_000  # devices per load process: this machine allows 20,000 open files per process


def worker_main(port: int, ca: str, key: str, interval: float, devices: list[tuple[str, str]],
                pipe: Connection, source: str) -> None:
    """One load process: connects its devices, reports, then measures when asked."""
    raise_open_files_limit()
    # uvloop, as the server uses: asyncio's own TLS transport keeps a 256 KiB read buffer per
    # connection, which at tens of thousands of devices is gigabytes of load generator
    uvloop.run(_worker(port, ca, key, interval, devices, pipe, source))


async def _worker(port: int, ca: str, key: str, interval: float, devices: list[tuple[str, str]],
                  pipe: Connection, source: str) -> None:
    load = Load(port, Path(ca), Path(key), interval, source)
    seconds = await load.add([Device(i, Path(c)) for i, c in devices])
    pipe.send(("connected", seconds, load.unconnected))
    loop = asyncio.get_running_loop()
    try:
        while True:
            command, seconds = await loop.run_in_executor(None, pipe.recv)
            if command != "measure":
                return
            pipe.send(await load.measure(seconds))
    finally:
        await load.close()


class LoadPool:
    """The simulated devices, spread over as many processes as their connections need."""

    def __init__(self, port: int, ca: Path, key: Path, interval: float) -> None:
        self.port, self.ca, self.key, self.interval = port, ca, key, interval
        self.workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        self.count = 0
        self.unconnected = 0  # devices whose connection the server never accepted

    async def add(self, devices: list[Device]) -> float:
        began = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        started = []
        for offset in range(0, len(devices), PER_WORKER):
            chunk = [(d.id, str(d.cert)) for d in devices[offset:offset + PER_WORKER]]
            ours, theirs = context.Pipe()
            source = f"127.0.{10 + len(self.workers) + len(started)}.1"
            proc = context.Process(target=worker_main, args=(self.port, str(self.ca), str(self.key), self.interval,
                                                             chunk, theirs, source), daemon=True)
            proc.start()
            started.append((proc, ours))
        for _, pipe in started:
            self.unconnected += (await asyncio.to_thread(pipe.recv))[2]
        self.workers += started
        self.count += len(devices)
        return time.perf_counter() - began

    async def measure(self, seconds: float) -> dict[str, float]:
        for _, pipe in self.workers:
            pipe.send(("measure", seconds))
        answers = [await asyncio.to_thread(pipe.recv) for _, pipe in self.workers]
        latencies = sorted(x for lat, _ in answers for x in lat)
        errors = sum(e for _, e in answers)
        if not latencies:
            return {"checkins": 0, "p50_ms": 0.0, "p99_ms": float("inf"), "errors": errors, "per_s": 0.0}
        return {"checkins": len(latencies), "per_s": len(latencies) / seconds,
                "p50_ms": latencies[len(latencies) // 2] * 1000,
                "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, "errors": errors}

    def close(self) -> None:
        for proc, pipe in self.workers:
            with contextlib.suppress(OSError):
                pipe.send(("stop", 0))
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def server_env() -> dict[str, str]:
    # The simulated devices have no TPM: measure check-ins, not the attestation gate (as
    # bench/checkin.py does); the agents' real cost of attesting is in bench/attest.py.
    return {"EDGEFLEET_LOG_LEVEL": "error", "EDGEFLEET_ATTESTATION_REQUIRED": "false"}


async def run_config(backend: str, processes: int, steps: list[int], args: argparse.Namespace,
                     profile_at: int | None = None) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix=f"edgefleet-scale-{backend}-{processes}-"))
    db_name, database_url = (await create_postgres_database()) if backend == "postgresql" else (None, None)
    settings = ServerSettings(data_dir=workdir / "server", database_url=database_url, log_level="error",
                              ek_trust="tofu")  # emulated devices: no vendor EK certificates
    init_server(settings, datetime.now(UTC))
    key = workdir / "device.key"
    key.write_bytes(new_device_key())
    pool = ServerPool(settings, processes, server_env(), log_dir=workdir)
    if profile_at is not None:
        pool.command_prefix = [sys.executable, str(Path(__file__).parent / "profiled_server.py"),
                               str(workdir / "server.prof")]
    await pool.start()
    load = LoadPool(pool.port, settings.pki.ca_cert, key, args.interval)
    held, figures = 0, {}
    try:
        for size in ([profile_at] if profile_at is not None else steps):
            fresh = await asyncio.to_thread(seed, settings, size - load.count, load.count, workdir, key)
            connect_s = await load.add(fresh)
            await asyncio.sleep(args.interval / 4)  # let the new devices' phases settle in
            cpu_before = sum(s.cpu_seconds for s in pool.samples())
            result = await load.measure(args.interval)
            cpu = sum(s.cpu_seconds for s in pool.samples()) - cpu_before
            ok = (result["p99_ms"] < P99_LIMIT_S * 1000 and not load.unconnected
                  and result["errors"] <= ERROR_LIMIT * max(result["checkins"], 1))
            print(f"  {backend}/{processes}: {size:>6} devices (connected in {connect_s:5.1f} s): "
                  f"{result['per_s']:6.0f} check-ins/s, p50 {result['p50_ms']:6.1f} ms, "
                  f"p99 {result['p99_ms']:7.1f} ms, "
                  f"{result['errors']} errors, server CPU {100 * cpu / args.interval:4.0f}% of a core, "
                  f"{sum(s.rss_bytes for s in pool.samples()) / 2**20:5.0f} MB: {'held' if ok else 'NOT held'}"
                  + (f" ({load.unconnected} devices could not connect: the server's open-file limit)"
                     if load.unconnected else ""),
                  flush=True)
            if not ok:
                break
            held = size
            figures = {"checkins_per_s": result["per_s"], "p99_ms": result["p99_ms"],
                       "server_cpu_ms_per_checkin": 1000 * cpu / max(result["checkins"], 1)}
    finally:
        await asyncio.to_thread(load.close)
        await pool.stop(timeout=120, sig=signal.SIGINT if profile_at is not None else signal.SIGTERM)
        if db_name is not None:
            await drop_postgres_database(db_name)
    if profile_at is not None:
        summarise_profile(workdir / "server.prof")
    return {"devices_held": held, **figures}


GROUPS = (("event loop: uvloop's C code (socket I/O, TLS records)", ("runners.py:run", "uvloop")),
          ("ssl / TLS", ("ssl.py", "_ssl", "sslproto")), ("asyncpg / SQLAlchemy", ("asyncpg", "sqlalchemy")),
          ("sqlite3", ("sqlite3", "inline_sqlite")),
          ("uvicorn / HTTP parsing", ("uvicorn", "httptools", "h11")),
          ("FastAPI / Starlette / pydantic", ("fastapi", "starlette", "pydantic")),
          ("edgefleet", ("edgefleet",)), ("asyncio", ("asyncio", "selectors")))


def summarise_profile(path: Path) -> None:
    """Own time (tottime) by package, and the functions that cost the most."""
    stats = pstats.Stats(str(path))
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    by_group: dict[str, float] = {}
    for (filename, _, name), value in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{filename}:{name}"
        group = next((g for g, keys in GROUPS if any(k in where for k in keys)), "other")
        by_group[group] = by_group.get(group, 0.0) + value[2]
    print(f"  where the server's CPU time goes (cProfile own time, {total:.1f} CPU s in all):")
    for group, seconds in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"    {group:<56} {100 * seconds / total:5.1f}%")
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]  # type: ignore[attr-defined]
    print("  most costly functions (own time):")
    for (filename, line, name), value in top:
        print(f"    {100 * value[2] / total:5.1f}%  {name} ({Path(filename).name}:{line})")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="5000,10000,20000,30000,40000,50000,60000")
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--configs", default="sqlite:1,postgresql:1,postgresql:2,postgresql:4")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-only", type=int, default=0, help="only profile one process at this many devices")
    args = parser.parse_args()
    raise_open_files_limit()
    steps = [int(s) for s in args.steps.split(",")]
    print(f"edgefleet scale bench: {os.cpu_count()} cores, check-in every {args.interval:.0f} s, "
          f"holds = p99 < {P99_LIMIT_S:.0f} s and < {100 * ERROR_LIMIT:.1f}% errors; steps {steps}")
    figures: dict[str, float] = {}
    for config in args.configs.split(",") if not args.profile_only else []:
        backend, processes = config.split(":")
        result = await run_config(backend, int(processes), steps, args)
        print(f"{backend} x{processes}: largest fleet held: {result['devices_held']} devices", flush=True)
        for name, value in result.items():
            figures[f"{backend}_{processes}proc_{name}"] = round(value, 2)
    if not args.no_profile:
        at = args.profile_only or int(figures.get("postgresql_1proc_devices_held", 0)) or steps[0]
        print(f"profiling one PostgreSQL server process at {at} devices:")
        await run_config("postgresql", 1, steps, args, profile_at=at)
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
