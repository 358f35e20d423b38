"""Dashboard page times with 10,000 devices in the database (SQLite, the default): the
overview (grouped counts, active rollouts, alerts) and the device list (a page of 100),
next to /healthz on the same server in the same run (the floor of a request). The server
runs in its own process; times are wall time per request over loopback HTTPS, so they
include TLS and the client.

    python bench/dashboard.py [--devices 10000] [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

from edgefleet.credentials import Role
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.settings import ServerSettings
from edgefleet.store import Database
from edgefleet.store.schema import AttestationStatus, Device

SITES = [f"store-{n:04d}" for n in range(200)]
STATES = ["idle"] * 90 + ["downloading", "trial", "rolled_back"] * 3 + ["failed"]


async def populate(settings: ServerSettings, count: int) -> None:
    db = Database(settings.effective_database_url)
    await db.migrate()
    now, rng = datetime.now(UTC), random.Random(5)
    devices, verdicts = [], []
    for n in range(count):
        device_id = f"dev-{n:020x}"
        devices.append({
            "id": device_id, "hardware_id": f"hw-{n}", "site": SITES[n % len(SITES)], "labels": {"ring": "main"},
            "inventory": {"hardware_type": "hw-x86"}, "cert_serial": f"{n:x}",
            "cert_not_after": now + timedelta(days=365),
            "enrolled_at": now, "last_seen_at": now - timedelta(seconds=rng.randint(0, 3600)), "status_seq": 1,
            "status": {"update": {"phase": "idle"}}, "status_at": now,
            "running_version": rng.choice(["2026.11.0", "2026.12.0"]), "health": rng.choice(["ok"] * 20 + ["failing"]),
            "update_state": rng.choice(STATES), "desired_version": 1, "desired": {}, "desired_at": now})
        if n % 10:
            verdicts.append({"device_id": device_id, "passed": n % 97 != 0, "attested_at": now, "failures": {},
                             "release": "2026.11.0", "reset_count": 0, "restart_count": 0, "clock": 0,
                             "quarantined": False})
    async with db.transaction() as conn:
        for start in range(0, count, 1000):
            await conn.execute(insert(Device), devices[start:start + 1000])
        for start in range(0, len(verdicts), 1000):
            await conn.execute(insert(AttestationStatus), verdicts[start:start + 1000])
    await db.close()


def timed(client: httpx.Client, path: str, requests: int) -> list[float]:
    client.get(path).raise_for_status()  # warm
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = 18443 + random.randrange(1000)
        settings = ServerSettings(data_dir=Path(tmp) / "server", port=port, host="127.0.0.1")
        init_server(settings, datetime.now(UTC))
        asyncio.run(populate(settings, args.devices))
        token = asyncio.run(create_admin_token(settings, name="bench", role=Role.VIEWER, now=datetime.now(UTC),
                                               ttl=None))
        server = subprocess.Popen([sys.executable, "-m", "edgefleet", "server", "--data-dir", str(settings.data_dir),
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"])
        try:
            with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=str(settings.pki.ca_cert),
                              timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("the server did not start")
                    time.sleep(0.2)
                if client.post("/ui/login", data={"token": token}).status_code != 303:
                    raise SystemExit("login refused")
                pages = {"overview": "/ui/", "device_list": "/ui/devices", "device_list_last_page":
                         f"/ui/devices?page={max(0, (args.devices - 1) // 100)}", "healthz": "/healthz"}
                results = {name: timed(client, path, args.requests) for name, path in pages.items()}
        finally:
            server.terminate()
            server.wait(30)
    figures: dict[str, float] = {"devices": args.devices}
    print(f"{args.devices} devices (SQLite), {args.requests} requests each, wall time over loopback HTTPS:")
    for name, times in results.items():
        median, p95 = statistics.median(times), sorted(times)[int(0.95 * (len(times) - 1))]
        figures[f"{name}_median_ms"], figures[f"{name}_p95_ms"] = round(median, 1), round(p95, 1)
        print(f"  {name:<24} median {median:7.1f} ms   p95 {p95:7.1f} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
