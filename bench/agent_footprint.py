"""What the agent holds on an idle device, next to Mender's client in the same run.

A real control plane runs in its own process (SQLite, attestation not required: this
device has no TPM). The agent runs as a device runs it (``python -m edgefleet.agent
--config``) on an emulated device directory: it enrolls, checks in (long polls), reports
status and ships its own logs as telemetry. After --warmup seconds its resident (RSS) and
proportional (PSS) memory are read from /proc/PID/smaps_rollup, then its CPU time over
--idle seconds, extrapolated to an hour. Mender's client daemon (Debian's ``mender``,
3.4) runs beside it in the same run, pointed at a server that does not answer (as a
device whose server is away), and is measured the same way; without it the recorded
figure (33.6 MiB) is shown, marked as recorded. Not covered here (issue #31): an agent
with a TPM, a WASM workload, and the peak during an update.

    python bench/agent_footprint.py [--warmup 30] [--idle 300]
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
from edgefleet.agent.hardware import VirtualDevice
from rollout import cpu_seconds, start_plane

MENDER_RECORDED_MIB = 33.6


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB, from the kernel's rollup of the process's mappings."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Rss"] / 1024, fields["Pss"] / 1024


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
        VirtualDevice.create(workdir / "device", hardware_id="bench-1", site="store-1")
        config = workdir / "agent.toml"
        config.write_text(f'server_url = "{plane.url}"\nca_file = "{plane.ca}"\nstate_dir = "{workdir / "state"}"\n'
                          f'device_dir = "{workdir / "device"}"\nbootstrap_token = "{token}"\n'
                          'long_poll_seconds = 60\n')
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgefleet.agent", "--config", str(config), "--log-level", "warning",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        other = await mender(workdir)
        print(f"agent pid {agent.pid}" + (f", mender pid {other.pid}" if other else ", mender not installed")
              + f"; warming up {args.warmup:.0f} s")
        await asyncio.sleep(args.warmup)
        for name, process in (("the agent", agent), ("mender", other)):
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
        async with plane.client() as client:
            listed = (await client.get("/api/v1/admin/devices")).json()["devices"]
        if [d["site"] for d in listed] != ["store-1"]:
            raise RuntimeError(f"the agent did not enroll: {listed}")
        agent_rss, agent_pss = memory_mib(agent.pid)
        mender_rss, mender_pss = memory_mib(other.pid) if other else (MENDER_RECORDED_MIB, float("nan"))
        cpu0, mender_cpu0, start = cpu_seconds(agent.pid), cpu_seconds(other.pid) if other else 0.0, time.monotonic()
        await asyncio.sleep(args.idle)
        hours = (time.monotonic() - start) / 3600
        agent_cpu = (cpu_seconds(agent.pid) - cpu0) / hours
        mender_cpu = (cpu_seconds(other.pid) - mender_cpu0) / hours if other else float("nan")
        peak = max(agent_rss, memory_mib(agent.pid)[0])
    finally:
        for process in (agent, other):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
        plane.process.terminate()
        await plane.process.wait()
    print(f"idle agent: RSS {agent_rss:.1f} MiB, PSS {agent_pss:.1f} MiB, CPU {agent_cpu:.1f} s/hour "
          f"(over {args.idle:.0f} s), peak RSS while idle {peak:.1f} MiB")
    origin = "same run" if other else "recorded earlier: mender-client not installed"
    print(f"mender 3.4 daemon ({origin}): RSS {mender_rss:.1f} MiB, PSS {mender_pss:.1f} MiB, "
          f"CPU {mender_cpu:.1f} s/hour")
    print(f"agent / mender idle RSS: {agent_rss / mender_rss:.2f}x")
    return {"agent_idle_rss_mib": round(agent_rss, 1), "agent_idle_pss_mib": round(agent_pss, 1),
            "agent_idle_cpu_s_per_hour": round(agent_cpu, 2), "mender_idle_rss_mib": round(mender_rss, 1),
            "mender_idle_pss_mib": None if other is None else round(mender_pss, 1),
            "mender_idle_cpu_s_per_hour": None if other is None else round(mender_cpu, 2),
            "mender_measured_same_run": other is not None, "idle_seconds": args.idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--idle", type=float, default=300, help="seconds of idle CPU measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-footprint-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
