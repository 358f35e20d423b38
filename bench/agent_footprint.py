"""What the agent holds on an idle device, next to Mender's client in the same run.

A real control plane runs in its own process (SQLite, attestation not required: see
below). The agent runs as a device runs it (``python -m edgefleet.agent --config``) on an
emulated device directory: it enrolls, checks in (long polls), reports status, ships its
own logs as telemetry, and runs one WebAssembly workload: a service whose signed module
is an artifact of the device's release, declared in its configuration (signed by the
director), fetched and verified by the agent, and run under wasmtime in the agent's
process; it prints a line every --workload-nap seconds. Once the workload runs and
--warmup seconds have passed, the agent's resident (RSS) and proportional (PSS) memory are
read from /proc/PID/smaps_rollup, then its CPU time over --idle seconds, extrapolated to
an hour. Mender's client daemon (Debian's ``mender``, 3.4) runs beside it in the same run,
pointed at a server that does not answer (as a device whose server is away), and is
measured the same way; without it the recorded figure (33.6 MiB) is shown, marked as
recorded.

The device is an emulated A/B device whose image ships the fleet's TUF roots (so the idle
agent holds its update client, as a real device's does). After the idle phase the
operator assigns it a signed release of --image-mib MiB: the agent downloads it from the
server's repository, verifies it, writes it into slot B, reboots (in-process, emulated),
runs its trial and commits. Its peak RSS (VmHWM, the kernel's high-water mark) is read
until the commit.

Not covered (issue #31): a TPM. The agent run this way has no emulated firmware that
measures its boot into a swtpm (its emulated boot measures only an in-process software
TPM), so it cannot attest here; its TPM code (tpm2-pytss) loads with a configured TPM.

    python bench/agent_footprint.py [--warmup 30] [--idle 300] [--image-mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.wasm_modules import module

from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.client import AdminClient
from edgefleet.releases.image import ReleaseInfo
from rollout import HARDWARE, Plane, Release, cpu_seconds, publish_releases, start_plane

FACTORY, UPDATE = "2026.11.0", "2026.12.0"
WORKLOAD = "meter"
MODULE = f"artifacts/{FACTORY}/{WORKLOAD}.wasm"  # where the factory release's artifact is published

MENDER_RECORDED_MIB = 33.6


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB, from the kernel's rollup of the process's mappings."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Rss"] / 1024, fields["Pss"] / 1024


def peak_rss_mib(pid: int) -> float:
    """The process's resident high-water mark (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def publish(plane: Plane, workdir: Path, size: int, nap_seconds: float) -> tuple[bytes, bytes]:
    """The factory release (with the workload's module) and a --image-mib one, signed and
    published; the TUF roots."""
    meter = workdir / f"{WORKLOAD}.wasm"
    meter.write_bytes(module("serves", "meter reading 42", nap_seconds))
    releases = []
    for counter, version in enumerate((FACTORY, UPDATE), start=1):
        image = workdir / f"{version}.img"
        image.write_bytes(vimage.build(version, counter, size=size if version == UPDATE else 1 << 20))
        releases.append(Release(image, ReleaseInfo(version, counter, (HARDWARE,), {}),
                                artifacts=(meter,) if version == FACTORY else ()))
    with AdminClient(plane.url, plane.admin, plane.ca) as client:
        workspace = publish_releases(plane.settings, workdir, client, releases)
    return ((workspace / "image" / "metadata" / "1.root.json").read_bytes(),
            (workspace / "director" / "metadata" / "1.root.json").read_bytes())


async def enrolled(plane: Plane, agent: asyncio.subprocess.Process, timeout: float) -> str:
    """The agent's device id, once it is listed (it enrolled, at its site)."""
    start = time.monotonic()
    async with plane.client() as client:
        while not (listed := (await client.get("/api/v1/admin/devices")).json()["devices"]):
            if agent.returncode is not None or time.monotonic() - start > timeout:
                raise RuntimeError(f"the agent did not enroll in {timeout:.0f} s (exit code {agent.returncode})")
            await asyncio.sleep(0.5)
    if [d["site"] for d in listed] != ["store-1"]:
        raise RuntimeError(f"the agent enrolled unlike its token says: {listed}")
    return str(listed[0]["id"])


async def run_workload(plane: Plane, device: str, timeout: float) -> None:
    """Declare the WASM service in ``device``'s configuration; return once the agent runs it."""
    async with plane.client() as client:
        service = {"name": WORKLOAD, "kind": "WasmModule", "target": MODULE, "restart": {"policy": "always"}}
        answer = await client.put(f"/api/v1/admin/devices/{device}/desired",
                                  json={"document": {"config": {"group": "bench", "workloads": {"wasm": [service]}}}})
        answer.raise_for_status()
        start = time.monotonic()
        while True:
            view = (await client.get(f"/api/v1/admin/devices/{device}")).json()
            states = {w["name"]: w["state"] for w in view.get("workloads") or []}
            if states.get(WORKLOAD) == "running":
                return
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the workload did not start in {timeout:.0f} s: {view.get('workloads')}")
            await asyncio.sleep(0.5)


async def update_peak(plane: Plane, device: str, pid: int, timeout: float) -> tuple[float, float]:
    """Assign ``device`` the update; (peak RSS in MiB until it reports it committed, seconds)."""
    async with plane.client() as client:
        answer = await client.put(f"/api/v1/admin/devices/{device}/assignment", json={"release": UPDATE})
        answer.raise_for_status()
        start = time.monotonic()
        peak = peak_rss_mib(pid)
        while True:
            peak = max(peak, peak_rss_mib(pid))
            view = (await client.get(f"/api/v1/admin/devices/{device}")).json()
            if view.get("running_version") == UPDATE and view.get("update_state") == "committed":
                return max(peak, peak_rss_mib(pid)), time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the update did not commit in {timeout:.0f} s: {view.get('update_state')}")
            await asyncio.sleep(0.2)


async def mender(workdir: Path) -> asyncio.subprocess.Process | None:
    """Mender's daemon with a server that does not answer, or None when not installed."""
    binary = shutil.which("mender")
    if binary is None:
        return None
    (workdir / "mender").mkdir()
    config = workdir / "mender" / "mender.conf"
    config.write_text(json.dumps({"ServerURL": "https://127.0.0.1:9", "UpdatePollIntervalSeconds": 1800,
                                  "InventoryPollIntervalSeconds": 28800, "RetryPollIntervalSeconds": 300}))
    return await asyncio.create_subprocess_exec(
        binary, "--config", str(config), "--fallback-config", str(config), "--data", str(workdir / "mender"),
        "daemon", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plane = await start_plane(workdir, 10, EDGEFLEET_ATTESTATION_REQUIRED="false")
    agent = other = None
    try:
        async with plane.client() as client:
            answer = await client.post("/api/v1/admin/bootstrap-tokens", json={"site": "store-1", "labels": {}})
            answer.raise_for_status()
            token = answer.json()["token"]
        size = args.image_mib << 20
        roots = await asyncio.to_thread(publish, plane, workdir, size, args.workload_nap)
        device = VirtualDevice.create(workdir / "device", hardware_id="bench-1", site="store-1",
                                      hardware_type=HARDWARE, os_version=FACTORY, release_counter=1, slot_bytes=size)
        device.install_trust(*roots)
        config = workdir / "agent.toml"
        config.write_text(f'server_url = "{plane.url}"\nca_file = "{plane.ca}"\nstate_dir = "{workdir / "state"}"\n'
                          f'device_dir = "{workdir / "device"}"\nbootstrap_token = "{token}"\n'
                          'long_poll_seconds = 60\n')
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.agent", "--config", str(config), "--log-level", "warning",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        other = await mender(workdir)
        print(f"agent pid {agent.pid}" + (f", mender pid {other.pid}" if other else ", mender not installed"))
        device_id = await enrolled(plane, agent, timeout=120)
        await run_workload(plane, device_id, timeout=120)
        print(f"the agent enrolled and runs its WASM workload; warming up {args.warmup:.0f} s")
        await asyncio.sleep(args.warmup)
        for name, process in (("the agent", agent), ("mender", other)):
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
        agent_rss, agent_pss = memory_mib(agent.pid)
        mender_rss, mender_pss = memory_mib(other.pid) if other else (MENDER_RECORDED_MIB, float("nan"))
        cpu0, mender_cpu0, start = cpu_seconds(agent.pid), cpu_seconds(other.pid) if other else 0.0, time.monotonic()
        await asyncio.sleep(args.idle)
        hours = (time.monotonic() - start) / 3600
        agent_cpu = (cpu_seconds(agent.pid) - cpu0) / hours
        mender_cpu = (cpu_seconds(other.pid) - mender_cpu0) / hours if other else float("nan")
        peak = max(agent_rss, memory_mib(agent.pid)[0])
        print(f"assigning the {args.image_mib} MiB release")
        update_rss, update_s = await update_peak(plane, device_id, agent.pid, args.update_timeout)
    finally:
        for process in (agent, other):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
        plane.process.terminate()
        await plane.process.wait()
    print(f"idle agent (one WASM service, telemetry on): RSS {agent_rss:.1f} MiB, PSS {agent_pss:.1f} MiB, "
          f"CPU {agent_cpu:.1f} s/hour "
          f"(over {args.idle:.0f} s), peak RSS while idle {peak:.1f} MiB")
    origin = "same run" if other else "recorded earlier: mender-client not installed"
    print(f"mender 3.4 daemon ({origin}): RSS {mender_rss:.1f} MiB, PSS {mender_pss:.1f} MiB, "
          f"CPU {mender_cpu:.1f} s/hour")
    print(f"agent / mender idle RSS: {agent_rss / mender_rss:.2f}x")
    print(f"update of a {args.image_mib} MiB image (download, verify, install, reboot, trial, commit) in "
          f"{update_s:.1f} s: agent peak RSS {update_rss:.1f} MiB (goal: 96 MiB or less)")
    return {"agent_idle_rss_mib": round(agent_rss, 1), "agent_idle_pss_mib": round(agent_pss, 1),
            "agent_idle_cpu_s_per_hour": round(agent_cpu, 2), "mender_idle_rss_mib": round(mender_rss, 1),
            "mender_idle_pss_mib": None if other is None else round(mender_pss, 1),
            "mender_idle_cpu_s_per_hour": None if other is None else round(mender_cpu, 2),
            "mender_measured_same_run": other is not None, "idle_seconds": args.idle,
            "update_image_mib": args.image_mib, "agent_update_peak_rss_mib": round(update_rss, 1),
            "update_s": round(update_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--idle", type=float, default=300, help="seconds of idle CPU measured")
    parser.add_argument("--image-mib", type=int, default=256, help="size of the release the update installs")
    parser.add_argument("--update-timeout", type=float, default=900, help="seconds the update may take")
    parser.add_argument("--workload-nap", type=float, default=10.0,
                        help="seconds the WASM service sleeps between its lines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-footprint-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
