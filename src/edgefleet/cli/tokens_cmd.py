"""``edgefleet tokens``: bootstrap tokens for devices and admin tokens: create, list, revoke
(over the API; the first admin token is minted locally on the server's host)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli.common import AdminToken, CaFile, ConfigOption, ServerUrl, parse_labels, shown_errors
from edgefleet.cli.output import Output, printed_for_machines
from edgefleet.cli.server_cmd import DatabaseUrl, DataDir, create_admin_token_command
from edgefleet.client import AdminClient
from edgefleet.protocol.v1 import AdminTokenList
from edgefleet.ui import ago, console

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
    hub: Annotated[bool, typer.Option("--hub", help="For the site's regional hub (`edgefleet hub`): it is listed "
                                                    "as a hub, never as a fleet device.")] = False,
) -> None:
    """Create a single-use, expiring bootstrap token for one device (needs role operator)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        created = client.create_bootstrap_token(site, parse_labels(labels), ttl, kind="hub" if hub else "device")
    console.print(created.token, soft_wrap=True, highlight=False)
    typer.echo(f"single use, site {created.site}, expires {created.expires_at.isoformat()}", err=True)


@app.command("create-admin")
def create_admin(
    name: Annotated[str, typer.Option(help="Who or what holds the token (shown in logs).")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
    ttl_days: Annotated[float | None, typer.Option(help="Days until it expires (default: never).")] = None,
    scope: Annotated[str | None, typer.Option(
        help="Limit it to some devices, e.g. 'site in (berlin-*), ring=canary': it sees and acts on those "
             "devices and the rollouts that keep to them, nothing fleet-wide (default: the whole fleet).")] = None,
    config: ConfigOption = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Mint an admin API token directly in the control plane's database (run on its host)."""
    with shown_errors():
        text = create_admin_token_command(config, data_dir, database_url, name, role, ttl_days, scope)
    console.print(text, soft_wrap=True, highlight=False)
    typer.echo(f"role {role} for {name}{f' within {scope}' if scope else ''}; shown once, store it now", err=True)


AdminKind = Annotated[bool, typer.Option("--admin", help="Admin API tokens (needs role admin) instead of bootstrap "
                                                        "tokens (role operator).")]


@app.command("list")
def list_tokens(server: ServerUrl, token: AdminToken, ca_file: CaFile, admin: AdminKind = False,
                output: Output = "table") -> None:
    """Bootstrap tokens (newest first: site, state, the device that used it) or, with
    --admin, admin tokens (name, role, state). Secrets are never shown again."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        listed = client.admin_tokens() if admin else client.bootstrap_tokens()
    if printed_for_machines(output, listed.model_dump(mode="json")):
        return
    if isinstance(listed, AdminTokenList):
        table = Table("id", "name", "role", "scope", "state", "created", "expires", title="admin tokens")
        for a in listed.tokens:
            table.add_row(a.id, a.name, a.role, a.scope or "whole fleet", a.state, ago(a.created_at),
                          a.expires_at.isoformat(timespec="seconds") if a.expires_at else "never")
    else:
        table = Table("id", "site", "state", "device", "created by", "expires", title="bootstrap tokens")
        for b in listed.tokens:
            table.add_row(b.id, b.site, b.state, b.device_id or "", b.created_by,
                          b.expires_at.isoformat(timespec="seconds"))
    console.print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (the hex between the underscores; see list).")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile, admin: AdminKind = False,
) -> None:
    """Revoke a bootstrap token (no device can enroll with it) or, with --admin, an admin
    token (every server process refuses it from its next request)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        if admin:
            client.revoke_admin_token(token_id)
        else:
            client.revoke_bootstrap_token(token_id)
    typer.echo(f"{'admin' if admin else 'bootstrap'} token {token_id} revoked", err=True)
