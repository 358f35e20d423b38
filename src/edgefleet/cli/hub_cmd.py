"""``edgefleet hub``: run a site's regional telemetry hub and repository mirror;
``edgefleet hub records``: read what a device shipped to it (local diagnosis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.common import ConfigOption, flags, setup_logging, shown_errors
from edgefleet.hub.loop import HubSettings
from edgefleet.settings import load_settings
from edgefleet.ui import console

app = typer.Typer(help="A site's regional hub: telemetry store-and-forward with summaries, repository mirror.")

DataDir = Annotated[Path | None, typer.Option("--data-dir", "-d", help="The hub's data directory.")]


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    config: ConfigOption = None,
    data_dir: DataDir = None,
    name: Annotated[str | None, typer.Option(help="This hub's name, e.g. hub-berlin.")] = None,
    site: Annotated[str | None, typer.Option(help="The site the hub is enrolled at.")] = None,
    server_url: Annotated[str | None, typer.Option(help="The control plane, e.g. https://fleet:8443.")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="The fleet CA certificate.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Its TLS cert (server hub-cert).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its key.")] = None,
    bootstrap_token_file: Annotated[Path | None, typer.Option(help="Enrolls the hub on first start.")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8444).")] = None,
) -> None:
    """Run the hub until SIGTERM/SIGINT. Settings: flags > EDGEFLEET_HUB_* env > --config file."""
    if ctx.invoked_subcommand is not None:
        return
    from edgefleet.hub.app import serve_hub

    with shown_errors():
        settings = load_settings(HubSettings, config, flags(
            data_dir=data_dir, name=name, site=site, server_url=server_url, ca_file=ca_file, tls_cert=tls_cert,
            tls_key=tls_key, bootstrap_token_file=bootstrap_token_file, host=host, port=port))
        setup_logging("info", daemon=True)
        serve_hub(settings)


@app.command("records")
def records(
    device_id: Annotated[str, typer.Argument(help="The device.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d", help="The hub's data directory.")] = Path(
        "/var/lib/edgefleet-hub"),
    after: Annotated[int, typer.Option(help="Only records after this sequence number.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
) -> None:
    """What a device shipped to this hub and the hub still keeps, oldest first."""
    from edgefleet.hub.store import HubStore

    with shown_errors():
        store = HubStore(data_dir / "hub.db")
        try:
            for record in store.device_records(device_id, after, limit):
                at = datetime.fromtimestamp(record.at, UTC).isoformat(timespec="milliseconds")
                console.print(f"{record.seq:>8} {at} {record.kind:<6} {json.dumps(record.body)}", markup=False,
                              highlight=False)
        finally:
            store.close()
