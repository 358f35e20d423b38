"""``edgefleet tokens``: bootstrap tokens for devices (over the API), admin tokens (locally)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.cli.common import AdminToken, CaFile, ConfigOption, ServerUrl, parse_labels, shown_errors
from edgefleet.cli.server_cmd import DatabaseUrl, DataDir, create_admin_token_command
from edgefleet.client import AdminClient
from edgefleet.ui import console

app = typer.Typer(help="Enrollment (bootstrap) tokens and admin API tokens.")


@app.command("create")
def create(
    site: Annotated[str, typer.Option("--site", help="Site the enrolling device stands in.")],
    server: ServerUrl,
    token: AdminToken,
    ca_file: CaFile,
    labels: Annotated[list[str] | None, typer.Option("--labels", "-l", help="k=v label for the device (repeat).")]
    = None,
    ttl: Annotated[int, typer.Option(help="Seconds until the token expires.")] = 24 * 3600,
) -> None:
    """Create a single-use, expiring bootstrap token for one device (needs role operator)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        created = client.create_bootstrap_token(site, parse_labels(labels), ttl)
    console.print(created.token, soft_wrap=True, highlight=False)
    typer.echo(f"single use, site {created.site}, expires {created.expires_at.isoformat()}", err=True)


@app.command("create-admin")
def create_admin(
    name: Annotated[str, typer.Option(help="Who or what holds the token (shown in logs).")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
    ttl_days: Annotated[float | None, typer.Option(help="Days until it expires (default: never).")] = None,
    config: ConfigOption = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Mint an admin API token directly in the control plane's database (run on its host)."""
    with shown_errors():
        text = create_admin_token_command(config, data_dir, database_url, name, role, ttl_days)
    console.print(text, soft_wrap=True, highlight=False)
    typer.echo(f"role {role} for {name}; shown once, store it now", err=True)

