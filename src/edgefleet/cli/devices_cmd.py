"""``edgefleet devices``: list and inspect devices through the admin API."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.client import AdminClient
from edgefleet.ui import console, device_table

app = typer.Typer(help="Devices of the fleet (admin API, role viewer or more).")


@app.command("ls")
def ls(
    server: ServerUrl,
    token: AdminToken,
    ca_file: CaFile,
    site: Annotated[str | None, typer.Option(help="Only this site.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List devices by site."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.devices(site=site)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    console.print(device_table(result.devices, title=f"{len(result.devices)} of {result.total} devices"))


@app.command("show")
def show(
    device_id: Annotated[str, typer.Argument(help="Device id (dev-...).")],
    server: ServerUrl,
    token: AdminToken,
    ca_file: CaFile,
) -> None:
    """Everything the control plane knows about one device, as JSON."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        device = client.device(device_id)
    typer.echo(json.dumps(device.model_dump(mode="json"), indent=2))
