"""What an idle regional hub process holds: resident memory, and whether the control
plane's stack (SQLAlchemy) is loaded into it.

A real control plane runs on a thread of this process; ``edgefleet hub`` runs in its own
process, enrolls with a bootstrap token, and then idles (no device ships to it). After
--idle seconds its VmRSS is read from /proc, and /proc/PID/maps says which of
SQLAlchemy's compiled modules it mapped. With --baseline REV the same is measured, in the
same run, for the hub of commit REV (a git worktree, put first on PYTHONPATH).

    python bench/hub_footprint.py [--idle 20] [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.run import ServerThread
from edgefleet.server.settings import ServerSettings

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def maps_sqlalchemy(pid: int) -> bool:
    return "/sqlalchemy/" in Path(f"/proc/{pid}/maps").read_text()


def measure(label: str, src: Path, server: ServerThread, settings: ServerSettings, client: AdminClient,
            work: Path, idle: float) -> dict[str, float | bool]:
    directory = work / label
    directory.mkdir()
    env = {**os.environ, "PYTHONPATH": str(src), "EDGEFLEET_LOG_FORMAT": "json"}
    subprocess.run([sys.executable, "-m", "edgefleet", "server", "hub-cert", "127.0.0.1", "--out",
                    str(directory / "tls"), "--data-dir", str(settings.data_dir)], check=True, capture_output=True,
                   env=env)
    (directory / "token").write_text(client.create_bootstrap_token("bench-site", {}, 3600).token)
    port = free_port()
    command = [sys.executable, "-m", "edgefleet", "hub", "--name", f"hub-{label}", "--site", "bench-site",
               "--server-url", server.url, "--ca-file", str(settings.pki.ca_cert),
               "--tls-cert", str(directory / "tls" / "hub.pem"), "--tls-key", str(directory / "tls" / "hub.key"),
               "--bootstrap-token-file", str(directory / "token"), "--data-dir", str(directory / "data"),
               "--host", "127.0.0.1", "--port", str(port)]
    log = directory / "hub.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (directory / "data" / "identity" / "device_id").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {label} hub did not enroll; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(idle)
        figures: dict[str, float | bool] = {"rss_mib": round(rss_mib(process.pid), 1),
                                            "sqlalchemy_loaded": maps_sqlalchemy(process.pid)}
    finally:
        process.terminate()
        process.wait(30)
    return figures


def worktree(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(into), rev], check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the hub idles before its RSS is read")
    parser.add_argument("--baseline", help="also measure the hub of this commit (e.g. HEAD~3)")
    args = parser.parse_args()
    if shutil.which("git") is None and args.baseline:
        print("git is not installed: --baseline needs it")
        return
    work = Path(tempfile.mkdtemp(prefix="edgefleet-hub-footprint-"))
    base_tree = work / "baseline-tree"
    try:
        settings = ServerSettings(data_dir=work / "server", port=0, attestation_required=False)
        init_server(settings, datetime.now(UTC))
        token = asyncio.run(create_admin_token(settings, name="bench", role=Role.OPERATOR, now=datetime.now(UTC),
                                               ttl=None))
        results: dict[str, dict[str, float | bool]] = {}
        with ServerThread(settings) as server, AdminClient(server.url, token, settings.pki.ca_cert) as client:
            if args.baseline:
                results["baseline"] = measure("baseline", worktree(args.baseline, base_tree), server, settings,
                                              client, work, args.idle)
            results["current"] = measure("current", REPO / "src", server, settings, client, work, args.idle)
        for label, figures in results.items():
            print(f"{label:>9}: idle hub RSS {figures['rss_mib']:.1f} MiB, SQLAlchemy "
                  f"{'loaded' if figures['sqlalchemy_loaded'] else 'not loaded'}")
        out = {f"{label}_{key}": value for label, figures in results.items() for key, value in figures.items()}
        out["idle_s"] = args.idle
        if args.baseline:
            out["baseline_rev"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
                                                 capture_output=True, text=True, check=True).stdout.strip()
        print(json.dumps(out))
    finally:
        if base_tree.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
