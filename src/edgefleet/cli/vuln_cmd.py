"""``edgefleet vuln``: import vulnerability advisories (OSV, offline: a directory or zip of
the ecosystems' exports) and VEX statements, and list what they mean for the fleet: the
findings of a release, of a device, or the devices an advisory (a CVE) affects."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.cli.output import Output, printed_for_machines
from edgefleet.client import AdminClient
from edgefleet.errors import ConfigError
from edgefleet.ui import console

app = typer.Typer(help="Vulnerabilities: import advisories (OSV) and VEX; findings per release, device or CVE.")

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
