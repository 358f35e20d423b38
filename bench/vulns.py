"""What vulnerability findings cost the control plane: importing advisories, then judging
the fleet.

A real control plane runs in its own process (SQLite). 20 releases are published, each
with a CycloneDX SBOM of --packages Debian packages (drawn from a pool of 4,000 source
packages, versions moving from release to release) and a few Python distributions; 10,000
devices are inserted as enrolled, spread over the releases and 500 sites. --advisories OSV
advisories in the Debian export's shape (Debian:12 ranges with epochs and ``~``, some with
several ranges, some PyPI) are written to a zip, as osv.dev serves them, and imported the
way ``edgefleet vuln import`` does (the CLI's batching, over HTTPS). Then:

- the import (advisories per second), and the same zip again (nothing changed: the
  incremental path, the baseline of the same run);
- the fleet's summary cold (every release's SBOM against the advisories naming its
  packages, every device placed) and warm (kept: nothing was imported since);
- one CVE's report (the CRA facts) warm;
- the server process's peak resident memory (VmHWM) and CPU seconds over the run.

    python bench/vulns.py [--advisories 50000] [--devices 10000] [--releases 20] [--packages 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from edgefleet.agent.hardware import vimage
from edgefleet.cli.vuln_cmd import batches
from edgefleet.client import AdminClient
from edgefleet.image.sbom import Package, build_sbom
from edgefleet.releases.image import ReleaseInfo
from rollout import HARDWARE, Release, cpu_seconds, publish_releases, start_plane
from scale import insert_rows

POOL = 4000  # Debian source packages the advisories name
SITES = 500


def version(base: int, release: int) -> str:
    """A Debian version of a package in release number ``release``: it moves every few releases."""
    epoch = "1:" if base % 7 == 0 else ""
    return f"{epoch}{base % 9}.{base % 13}.{release // 3}-{1 + base % 3}~deb12u{release % 3}"


def images(releases: int, packages: int, rng: random.Random) -> list[list[Package]]:
    """The packages of each release: the same sources, versions moving."""
    sources = rng.sample(range(POOL), packages)
    found = []
    for n in range(releases):
        listed = [Package("Debian", f"lib{s}-bin", version(s, n), "amd64", f"src{s}", version(s, n)) for s in sources]
        listed += [Package("PyPI", f"py{k}", f"{1 + k % 4}.{n // 4}.0") for k in range(20)]
        found.append(listed)
    return found


def advisory(n: int, rng: random.Random) -> dict[str, Any]:
    """An advisory shaped as the Debian (or, one in ten, the PyPI) OSV export shapes it."""
    if n % 10 == 9:
        k = rng.randrange(200)
        affected = [{"package": {"ecosystem": "PyPI", "name": f"py{k}"}, "ranges": [
            {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": f"{1 + k % 4}.{rng.randrange(6)}.0"}]}]}]
    else:
        base = rng.randrange(POOL)
        fixed = version(base, rng.randrange(24))
        ranges = [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]
        if n % 5 == 0:
            ranges.append({"type": "ECOSYSTEM", "events": [{"introduced": version(base, 30)}]})
        affected = [{"package": {"ecosystem": "Debian:12", "name": f"src{base}"}, "ranges": ranges,
                     "versions": [version(base, r) for r in range(rng.randrange(4))]}]
    return {"schema_version": "1.6.0", "id": f"DEBIAN-CVE-2026-{n:05d}", "modified": "2026-11-01T00:00:00Z",
            "published": "2026-10-01T00:00:00Z", "aliases": [f"CVE-2026-{n:05d}"],
            "summary": f"src: synthetic advisory {n}",
            "database_specific": {"severity": ("CRITICAL", "HIGH", "MEDIUM", "LOW")[n % 4]}, "affected": affected}


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(7)
    plane = await start_plane(workdir, 10)
    pid = plane.process.pid
    try:
        return await measure(args, workdir, plane, pid, rng)
    finally:
        plane.process.terminate()
        await plane.process.wait()


async def measure(args: argparse.Namespace, workdir: Path, plane: Any, pid: int, rng: random.Random) -> dict[str, Any]:
    now = datetime.now(UTC)
    versions = [f"2026.{1 + n // 4}.{n % 4}" for n in range(args.releases)]
    releases = []
    for counter, (release, packages) in enumerate(zip(versions, images(args.releases, args.packages, rng),
                                                       strict=True), start=1):
        image, sbom = workdir / f"{release}.img", workdir / f"{release}.cdx.json"
        image.write_bytes(vimage.build(release, counter, size=4096))
        sbom.write_text(build_sbom("edge", release, packages))
        releases.append(Release(image, ReleaseInfo(release, counter, (HARDWARE,), {}), sbom))
    with AdminClient(plane.url, plane.admin, plane.ca, timeout=600) as client:
        publish_releases(plane.settings, workdir, client, releases)
    rows = [dict(id=f"dev-{i:08d}{secrets.token_hex(4)}", hardware_id=f"bench-{i}", site=f"site-{i % SITES}",
                 labels={}, inventory={}, cert_serial=str(i), cert_not_after=now, enrolled_at=now, status_seq=1,
                 health="ok", update_state="idle", desired_version=0, desired={},
                 running_version=versions[i % len(versions)]) for i in range(args.devices)]
    await insert_rows(plane.settings, rows)

    archive = workdir / "debian-osv.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for n in range(args.advisories):
            out.writestr(f"DEBIAN-CVE-2026-{n:05d}.json", json.dumps(advisory(n, rng)))
    print(f"{args.releases} releases of {args.packages} Debian packages, {args.devices} devices, "
          f"{args.advisories} advisories ({archive.stat().st_size / 2**20:.1f} MiB zip)")
    cpu0 = cpu_seconds(pid)

    def import_all() -> tuple[float, dict[str, int]]:
        totals = {"added": 0, "updated": 0, "unchanged": 0, "refused": 0}
        start = time.perf_counter()
        with AdminClient(plane.url, plane.admin, plane.ca, timeout=600) as client:
            for batch in batches(archive):  # as `edgefleet vuln import` sends them
                result = client.import_advisories(b"[" + b",".join(batch) + b"]")
                totals["added"] += result.added
                totals["unchanged"] += result.unchanged
                totals["updated"] += result.updated
                totals["refused"] += len(result.refused)
        return time.perf_counter() - start, totals

    first, counted = await asyncio.to_thread(import_all)
    print(f"import: {first:.1f} s ({args.advisories / first:,.0f} advisories/s): {counted}")
    again, counted_again = await asyncio.to_thread(import_all)
    print(f"re-import, nothing changed: {again:.1f} s: {counted_again}")

    def timed(path: str, **params: Any) -> tuple[float, dict[str, Any]]:
        with AdminClient(plane.url, plane.admin, plane.ca, timeout=600) as client:
            start = time.perf_counter()
            answer = client.call_json("GET", path, params=params)
            return time.perf_counter() - start, answer

    cold, summary = await asyncio.to_thread(timed, "/api/v1/admin/vulnerabilities/summary", limit=10)
    warm, _ = await asyncio.to_thread(timed, "/api/v1/admin/vulnerabilities/summary", limit=10)
    widest = summary["advisories"][0]
    cve = next(a for a in widest["aliases"] if a.startswith("CVE-"))
    report_s, report = await asyncio.to_thread(timed, "/api/v1/admin/vulnerabilities/report", cve=cve)
    findings = sum(count["devices"] for count in summary["severities"].values())
    print(f"fleet summary cold: {cold:.2f} s, warm: {warm:.3f} s; {summary['total']} advisories affect devices; "
          f"device-severity pairs: {findings}")
    print(f"report of {cve} (warm): {report_s:.3f} s: {report['affected_devices']} devices on "
          f"{len(report['affected_releases'])} releases, first fixed release {report['first_fixed_release']}")
    peak, cpu = vm_hwm_mib(pid), cpu_seconds(pid) - cpu0
    print(f"server: peak resident {peak:.0f} MiB, {cpu:.1f} CPU seconds over the imports and queries")
    return {"advisories": args.advisories, "devices": args.devices, "releases": args.releases,
            "import_s": round(first, 2), "import_advisories_per_s": round(args.advisories / first),
            "reimport_unchanged_s": round(again, 2), "summary_cold_s": round(cold, 3),
            "summary_warm_s": round(warm, 4), "report_warm_s": round(report_s, 4),
            "advisories_affecting_fleet": summary["total"], "server_peak_rss_mib": round(peak),
            "server_cpu_s": round(cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--advisories", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--releases", type=int, default=20)
    parser.add_argument("--packages", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-vulns-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
