"""What a device's update check costs: HTTP bytes and client CPU, for an idle poll (nothing
new) and for a new release, with 100 and with 10,000 releases in the image repository.

A real control plane runs in its own process (so the client's CPU time is the client's
alone); releases are signed offline and published through the admin API; a device is
enrolled over mTLS and assigned the newest release; its UpdateClient (Uptane director +
image repository through ngclient) does the checks. Bytes are request and response
headers and bodies as httpx sees them (TLS framing not included).

    python bench/tuf_refresh.py [--releases 100,10000] [--idle-polls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tuf.api.metadata import TargetFile

from edgefleet.agent.fetcher import https_client
from edgefleet.agent.updates import TrustAnchors, UpdateClient
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.pki import make_csr, new_device_key
from edgefleet.releases.image import ReleaseInfo, describe
from edgefleet.releases.keys import Keystore
from edgefleet.releases.metadata import sign, with_target
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.settings import ServerSettings


class Meter:
    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0

    def hook(self, client: httpx.Client) -> None:
        client.event_hooks["request"].append(self._request)
        client.event_hooks["response"].append(self._response)

    def _request(self, request: httpx.Request) -> None:
        self.requests += 1
        self.bytes += len(request.method) + len(request.url.raw_path) + 12
        self.bytes += sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + len(request.content or b"")

    def _response(self, response: httpx.Response) -> None:
        self.bytes += 17 + sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
        self.bytes += int(response.headers.get("content-length", 0))


def measure(meter: Meter, action: Callable[[], object]) -> tuple[int, int, float]:
    before_bytes, before_requests, cpu = meter.bytes, meter.requests, time.process_time()
    action()
    return meter.bytes - before_bytes, meter.requests - before_requests, (time.process_time() - cpu) * 1000


def start_server(settings: ServerSettings) -> subprocess.Popen[bytes]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        settings.port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "server", "--data-dir", str(settings.data_dir),
                             "--port", str(settings.port), "--log-level", "warning"],
                            env={**os.environ, "EDGEFLEET_ATTESTATION_REQUIRED": "false"})  # devices without TPMs
    with https_client(settings.pki.ca_cert) as probe:
        for _ in range(300):
            try:
                if probe.get(f"https://127.0.0.1:{settings.port}/readyz").status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def bulk_releases(workspace: Workspace, keys: Keystore, tmp: Path, count: int) -> None:
    """``count`` releases sharing one small image file (one upload), in one targets version."""
    image = tmp / "image.img"
    image.write_bytes(os.urandom(64 * 1024))
    base = describe(image, "os/r0/image.img")
    workspace.image.add_target_file(image, base)
    targets = workspace.image.targets()
    for i in range(count):
        info = ReleaseInfo(f"r{i}", i, ("hw-x86",), {"4": "ab" * 32})
        path = f"os/r{i}/image.img"
        targets.signed.targets[path] = TargetFile(base.length, base.hashes, path, {"custom": info.custom()})
    targets.signed.version += 1
    targets.signatures.clear()
    sign(targets, keys.signer("targets-1"))
    workspace.image.write_targets(targets)


def add_release(workspace: Workspace, keys: Keystore, count: int) -> str:
    base = next(iter(workspace.image.targets().signed.targets.values()))
    info = ReleaseInfo(f"r{count}", count, ("hw-x86",), {"4": "ab" * 32})
    path = f"os/r{count}/image.img"
    targets = with_target(workspace.image.targets().signed,
                          TargetFile(base.length, base.hashes, path, {"custom": info.custom()}), datetime.now(UTC))
    sign(targets, keys.signer("targets-1"))
    workspace.image.write_targets(targets)
    return info.version


def enroll(url: str, settings: ServerSettings, admin: AdminClient, tmp: Path) -> tuple[str, Path, Path]:
    token = admin.create_bootstrap_token("bench-site", {}, 3600).token
    key = new_device_key()
    body = {"token": token, "csr_pem": make_csr(key, "bench").decode(),
            "inventory": {"hardware_id": "bench-device", "hardware_type": "hw-x86", "site": "bench-site"}}
    with https_client(settings.pki.ca_cert) as client:
        answer = client.post(f"{url}/api/v1/enroll", json=body).json()
    (tmp / "device.key").write_bytes(key)
    (tmp / "device.pem").write_text(answer["certificate_pem"])
    return answer["device_id"], tmp / "device.pem", tmp / "device.key"


def run(count: int, idle_polls: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix=f"edgefleet-tuf-bench-{count}-"))
    settings = ServerSettings(data_dir=tmp / "server")
    init_server(settings, datetime.now(UTC))
    token = asyncio.run(create_admin_token(settings, name="bench", role=Role.ADMIN, now=datetime.now(UTC), ttl=None))
    server = start_server(settings)
    url = f"https://127.0.0.1:{settings.port}"
    try:
        keys = Keystore(tmp / "keys")
        workspace = Workspace(tmp / "ws")
        workspace.init(keys, load_online_keys(settings.data_dir / "keys" / "online-keys.json"), datetime.now(UTC))
        bulk_releases(workspace, keys, tmp, count)
        with AdminClient(url, token, settings.pki.ca_cert, timeout=300) as admin:
            publish_workspace(workspace, admin)
            device_id, cert, key = enroll(url, settings, admin, tmp)
            admin.assign(device_id, f"r{count - 1}")
            meter = Meter()
            client = UpdateClient(
                device_id=device_id, hardware_type="hw-x86", state_dir=tmp / "device",
                anchors=TrustAnchors(workspace.image.root(1).to_bytes(), workspace.director.root(1).to_bytes()),
                director_url=f"{url}/api/v1/devices/{device_id}/director",
                director_tls=https_client(settings.pki.ca_cert, cert, key), mirrors=[f"{url}/repository"],
                mirror_tls=https_client(settings.pki.ca_cert),
            )
            meter.hook(client._director_tls)
            meter.hook(client._mirror_tls)
            cold = measure(meter, lambda: client.check(0))
            idle = [measure(meter, lambda: client.check(0)) for _ in range(idle_polls)]
            version = add_release(workspace, keys, count)
            publish_workspace(workspace, admin)
            admin.assign(device_id, version)
            new = measure(meter, lambda: client.check(0))
            client.close()
        sizes = {name: (settings.data_dir / "repository" / "metadata" / name).stat().st_size
                 for name in ("timestamp.json", "snapshot.json", "targets.json")}
    finally:
        server.terminate()
        server.wait(30)
    idle_bytes = sum(i[0] for i in idle) / len(idle)
    idle_requests = sum(i[1] for i in idle) / len(idle)
    idle_cpu = sorted(i[2] for i in idle)[len(idle) // 2]
    print(f"{count:>6} releases: targets.json {sizes['targets.json']:,} B, timestamp.json "
          f"{sizes['timestamp.json']} B")
    print(f"        cold check   {cold[0]:>10,} B in {cold[1]} requests, {cold[2]:8.1f} ms CPU")
    print(f"        idle poll    {idle_bytes:>10,.0f} B in {idle_requests:.0f} requests, {idle_cpu:8.2f} ms CPU "
          f"(median of {len(idle)})")
    print(f"        new release  {new[0]:>10,} B in {new[1]} requests, {new[2]:8.1f} ms CPU")
    return {
        "targets_json_bytes": sizes["targets.json"], "timestamp_json_bytes": sizes["timestamp.json"],
        "cold_bytes": cold[0], "cold_cpu_ms": cold[2],
        "idle_bytes": idle_bytes, "idle_requests": idle_requests, "idle_cpu_ms": idle_cpu,
        "new_release_bytes": new[0], "new_release_cpu_ms": new[2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", default="100,10000")
    parser.add_argument("--idle-polls", type=int, default=20)
    args = parser.parse_args()
    print(f"edgefleet TUF refresh bench: director + image repository over HTTPS, {os.cpu_count()} cores")
    figures: dict[str, float] = {}
    for count in (int(c) for c in args.releases.split(",")):
        for key, value in run(count, args.idle_polls).items():
            figures[f"r{count}_{key}"] = round(value, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
