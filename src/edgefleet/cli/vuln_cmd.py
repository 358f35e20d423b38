"""``edgefleet vuln``: import vulnerability advisories (OSV, offline: a directory or zip of
the ecosystems' exports), VEX statements and KEV catalogues, and show what they mean for
the fleet: the findings of a release, of a device, or the devices an advisory (a CVE)
affects; the fleet's summary; a CVE's notification report (JSON and HTML); and a rollout
that moves every affected device to the first release that fixes it."""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.cli.output import Output, printed_for_machines
from edgefleet.cli.rollout_cmd import pair_of, start_shown, wave_of
from edgefleet.client import AdminClient
from edgefleet.errors import ConfigError
from edgefleet.protocol.base import ADVISORY_NAME
from edgefleet.ui import console
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.vuln.report import render_html

app = typer.Typer(help="Vulnerabilities: import advisories (OSV), VEX and KEV; findings, reports, fixes.")
CVE = typer.Option(help="An advisory id or alias, e.g. CVE-2026-0001.")

BATCH_BYTES = 4 * 1024 * 1024  # per request (the server takes up to 16 MiB)


def advisory_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every ``*.json`` in a directory (recursively) or a zip archive."""
    if path.is_dir():
        for file in sorted(path.rglob("*.json")):
            yield str(file), file.read_bytes()
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if info.filename.endswith(".json") and not info.is_dir():
                    yield info.filename, archive.read(info)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{path} is neither a directory nor a zip archive of OSV JSON files") from exc


def batches(path: Path) -> Iterator[list[bytes]]:
    """The advisories of ``path`` (each file one advisory, or a list of them), as encoded
    JSON documents in batches of at most BATCH_BYTES."""
    batch: list[bytes] = []
    size = 0
    for name, data in advisory_files(path):
        try:
            loaded = json.loads(data)
        except ValueError as exc:
            raise ConfigError(f"{name}: not JSON ({exc})") from exc
        for document in loaded if isinstance(loaded, list) else [loaded]:
            encoded = json.dumps(document, separators=(",", ":")).encode()
            if batch and size + len(encoded) > BATCH_BYTES:
                yield batch
                batch, size = [], 0
            batch.append(encoded)
            size += len(encoded) + 1
    if batch:
        yield batch


@app.command("import")
def import_advisories(
    path: Annotated[Path, typer.Argument(exists=True, help="A directory or zip of OSV advisories (e.g. the Debian "
                                                           "or PyPI export from osv.dev).")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
) -> None:
    """Import OSV advisories (role operator): new ones are added, changed ones (a newer
    ``modified``) replaced, the rest left as they are, so importing a newer export again
    only does what changed."""
    totals = {"added": 0, "updated": 0, "unchanged": 0, "refused": 0}
    with shown_errors(), AdminClient(server, token, ca_file, timeout=300) as client:
        for batch in batches(path):
            result = client.import_advisories(b"[" + b",".join(batch) + b"]")
            totals["added"] += result.added
            totals["updated"] += result.updated
            totals["unchanged"] += result.unchanged
            totals["refused"] += len(result.refused)
            for refused in result.refused[:5]:
                console.print(f"refused {refused['id']}: {refused['reason']}", highlight=False)
    console.print(", ".join(f"{count} {what}" for what, count in totals.items()))


@app.command("vex")
def import_vex(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An OpenVEX JSON document.")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
) -> None:
    """Import OpenVEX statements (role operator): a finding a statement calls not_affected
    or fixed is shown as suppressed, with its justification."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        stored = client.import_vex(path.read_bytes()).stored
    console.print(f"{stored} statements stored")


@app.command("list")
def list_findings(
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    release: Annotated[str | None, typer.Option(help="The findings of this release's SBOM.")] = None,
    device: Annotated[str | None, typer.Option(help="The findings of the release this device runs.")] = None,
    cve: Annotated[str | None, typer.Option(help="The devices this advisory (id or alias) affects.")] = None,
    output: Output = "table",
) -> None:
    """Findings of a release or a device, or the devices a CVE affects (exactly one of
    --release, --device, --cve)."""
    query = {k: v for k, v in (("release", release), ("device", device), ("cve", cve)) if v is not None}
    if len(query) != 1:
        raise typer.BadParameter("give exactly one of --release, --device or --cve")
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        report = client.vulnerabilities(**query)
    if printed_for_machines(output, report.model_dump(mode="json")):
        return
    if cve is not None:
        table = Table("device", "site", "release", "proven", "package", "version", "fixed in",
                      title=f"{report.total} devices affected by {cve}")
        for d in report.devices:
            table.add_row(d.device_id, d.site, d.release, "yes" if d.proven else "reported", d.package, d.version,
                          d.fixed_in or "no fix yet")
    else:
        table = Table("severity", "advisory", "package", "version", "fixed in", "note",
                      title=f"{report.total} findings of {report.release}" + (f" ({device})" if device else ""))
        for f in report.findings:
            names = ", ".join([f.advisory, *[a for a in f.aliases if a.startswith("CVE-")][:2]])
            table.add_row(f.severity, names, f.package, f.version, f.fixed_in or "no fix yet", f.suppressed or "")
    console.print(table)


@app.command("exploited")
def import_exploited(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A KEV catalogue (CISA's "
                                                                          "known_exploited_vulnerabilities.json).")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
) -> None:
    """Import a catalogue of vulnerabilities known to be exploited (role operator): their
    findings are marked, and each one running in the fleet raises an alert (once)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.import_exploited(path.read_bytes())
    console.print(f"{result.added} new entries, {result.alerts} alerts raised")


@app.command("summary")
def summary(server: ServerUrl, token: AdminToken, ca_file: CaFile, output: Output = "table") -> None:
    """Counts per severity over the fleet, and the advisories that affect its devices."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        found = client.vulnerability_summary()
    if printed_for_machines(output, found.model_dump(mode="json")):
        return
    counts = Table("severity", "advisories", "devices", title=f"findings over {found.devices} devices")
    for severity, count in found.severities.items():
        counts.add_row(severity, str(count.advisories), str(count.devices))
    console.print(counts)
    table = Table("advisory", "severity", "devices", "releases", "fixed by", "exploited")
    for a in found.advisories[:50]:
        table.add_row(", ".join([a.advisory, *[x for x in a.aliases if x.startswith("CVE-")][:2]]), a.severity,
                      str(a.devices), ", ".join(a.releases), a.fixed_by_release or "no release yet",
                      a.known_exploited or "")
    console.print(table)
    if found.releases_without_sbom:
        console.print(f"not judged (no SBOM published): {', '.join(found.releases_without_sbom)}", highlight=False)


def _file_name(cve: str) -> str:
    """A report's file name for ``cve`` (the server refuses names outside this pattern)."""
    if not re.fullmatch(ADVISORY_NAME, cve):
        raise typer.BadParameter("an advisory id or alias such as CVE-2026-0001", param_hint="--cve")
    return cve.replace(":", "_")


@app.command("report")
def report(
    cve: Annotated[str, CVE],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    out: Annotated[Path, typer.Option(file_okay=False, help="Directory for CVE.json and CVE.html.")] = Path("."),
) -> None:
    """Write what a vulnerability notification (EU CRA) needs for one CVE: affected
    releases and devices by site, first seen, whether a fix exists and how far it is rolled
    out; as JSON and as a printable HTML page listing the devices."""
    name = _file_name(cve)
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        found = client.cve_report(cve)
        devices = client.vulnerabilities(cve=cve).devices
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{name}.json", found.model_dump_json(indent=2).encode() + b"\n")
    atomic_write_bytes(out / f"{name}.html", render_html(found, devices).encode())
    rolled = "n/a" if found.fix_rolled_out_percent is None else f"{found.fix_rolled_out_percent}%"
    console.print(f"{found.cve}: {found.affected_devices} devices affected, first fixed release "
                  f"{found.first_fixed_release or 'none yet'}, fix rolled out to {rolled}; wrote "
                  f"{out / (name + '.json')} and {out / (name + '.html')}", highlight=False)


@app.command("fix")
def fix(
    cve: Annotated[str, CVE],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    waves: Annotated[list[str] | None, typer.Option("--wave", help="SIZE or SIZE/BAKE_SECONDS (repeat, in "
                                                                   "order).")] = None,
    selector: Annotated[list[str] | None, typer.Option("--selector", "-l", help="label=value: only these "
                                                                                "devices (site too).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only show who each wave would take; start nothing.")] = False,
) -> None:
    """Start a rollout (role operator) that moves every device running a release the CVE
    affects to the first published release after them that it does not affect; devices on
    other releases are left alone."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        found = client.cve_report(cve)
        if found.first_fixed_release is None:
            raise ConfigError(f"no published release after the affected ones is free of {cve}: publish one first")
        affected = sorted({r.release for r in found.affected_releases if r.devices})
        if not affected:
            raise ConfigError(f"no device runs a release {cve} affects")
        body = {"release": found.first_fixed_release, "from_releases": affected,
                "waves": [wave_of(w) for w in waves or ["1", "10%", "100%"]],
                "selector": dict(pair_of(s, "--selector") for s in selector or [])}
        console.print(f"{cve}: moving the devices on {', '.join(affected)} to {found.first_fixed_release}",
                      highlight=False)
        start_shown(client, body, dry_run)
