"""``edgefleet tpm``: what a device's TPM and firmware report, for bringing an image up on
new hardware (compare with the image's predicted reference values)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.agent.evidence import EVENT_LOG, collect
from edgefleet.cli.common import shown_errors

app = typer.Typer(help="Read the TPM's PCRs and the firmware's boot event log.")


@app.command("evidence")
def evidence(
    tcti: Annotated[str, typer.Option(help="The TPM, e.g. device:/dev/tpmrm0 or swtpm:port=2321.")]
    = "device:/dev/tpmrm0",
    event_log: Annotated[Path, typer.Option(help="The firmware's TCG event log.")] = EVENT_LOG,
    bank: Annotated[str, typer.Option(help="PCR bank.")] = "sha256",
) -> None:
    """Print one JSON object: PCRs 0-15 of BANK read from the TPM and the event log (base64)."""
    with shown_errors():
        document = collect(tcti, event_log, bank)
    typer.echo(json.dumps(document, separators=(",", ":")))
