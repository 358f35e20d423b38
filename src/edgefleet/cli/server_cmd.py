"""``edgefleet server``: run the control plane; ``edgefleet server init``: prepare its data dir."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.cli.common import ConfigOption, flags, setup_logging, shown_errors
from edgefleet.clock import SystemClock
from edgefleet.settings import load_settings
from edgefleet.ui import console

if TYPE_CHECKING:
    from edgefleet.server.settings import ServerSettings

app = typer.Typer(help="The control plane (HTTPS API with mTLS for devices, bearer tokens for operators).")

DataDir = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory (database, PKI).")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL, e.g. postgresql+asyncpg://user@host/db. Default: SQLite."),
]


def server_settings(config: Path | None, **given: object) -> ServerSettings:
    from edgefleet.server.settings import ServerSettings  # the control plane's stack: loaded to use it

    return load_settings(ServerSettings, config, flags(**given))


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    config: ConfigOption = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8443).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    reuse_port: Annotated[bool | None, typer.Option(
        "--reuse-port", help="Share the port with other server processes (SO_REUSEPORT).")] = None,
) -> None:
    """Run the control plane until SIGTERM/SIGINT (a second signal forces exit).

    Applies database migrations on start. Settings: flags > EDGEFLEET_* env > --config file.
    """
    if ctx.invoked_subcommand is not None:
        return
    with shown_errors():
        settings = server_settings(config, data_dir=data_dir, database_url=database_url, host=host, port=port,
                                   log_level=log_level, reuse_port=reuse_port)
        setup_logging(settings.log_level, daemon=True)
        from edgefleet.server.run import serve  # the whole control plane: loaded only to run it

        serve(settings)


@app.command("init")
def init(
    config: ConfigOption = None,
    data_dir: DataDir = None,
    server_name: Annotated[
        list[str] | None, typer.Option("--server-name", help="DNS name or IP for the server certificate (repeat).")
    ] = None,
    fleet_name: Annotated[str | None, typer.Option(help="Name written into the fleet CA.")] = None,
) -> None:
    """Create the data directory, the fleet CA and the server's TLS certificate."""
    with shown_errors():
        settings = server_settings(config, data_dir=data_dir, server_names=server_name, fleet_name=fleet_name)
        from edgefleet.server.local import init_server

        created = init_server(settings, SystemClock().now())
        pki = settings.pki
        verb = "created" if created else "already present"
        console.print(f"fleet PKI {verb} in [bold]{pki.directory}[/]")
        console.print(f"  CA certificate (give it to devices and CLI users): {pki.ca_cert}")
        console.print(f"  server certificate for: {', '.join(settings.server_names)}")
        console.print("next: [bold]edgefleet tokens create-admin --name you --role admin[/] "
                      f"--data-dir {settings.data_dir}")


@app.command("hub-cert")
def hub_cert(
    name: Annotated[list[str], typer.Argument(help="DNS names or IPs the site's devices reach the hub at.")],
    out: Annotated[Path, typer.Option(help="Directory for hub.pem and hub.key.")],
    config: ConfigOption = None,
    data_dir: DataDir = None,
) -> None:
    """Issue a regional hub's TLS certificate from the fleet CA (devices trust only it)."""
    from edgefleet.pki import issue_server_certificate
    from edgefleet.util.atomic import atomic_write_bytes

    with shown_errors():
        settings = server_settings(config, data_dir=data_dir)
        issued = issue_server_certificate(settings.pki.load_ca(), name, SystemClock().now())
        atomic_write_bytes(out / "hub.key", issued.key_pem, mode=0o600)
        atomic_write_bytes(out / "hub.pem", issued.cert_pem)
    console.print(f"hub certificate for {', '.join(name)} in {out}: edgefleet hub --tls-cert {out / 'hub.pem'} "
                  f"--tls-key {out / 'hub.key'} ...")


@app.command("rotate-key")
def rotate_key(
    role: Annotated[str, typer.Option(help="snapshot, timestamp or director.")],
    config: ConfigOption = None,
    data_dir: DataDir = None,
) -> None:
    """Create a new generation of an online signing key. The server keeps signing with the
    old one until the release owners publish a root that delegates to the new one."""
    from edgefleet.releases.keys import Keystore
    from edgefleet.server.repository import rotate_online_key

    with shown_errors():
        settings = server_settings(config, data_dir=data_dir)
        name = rotate_online_key(Keystore(settings.data_dir / "keys"), role)
    console.print(f"new {role} key {name}; give {settings.data_dir / 'keys' / 'online-keys.json'} to the release "
                  f"owners: edgefleet keys rotate --role {role} --online-keys online-keys.json ...")


@app.command("rotate-workload-key")
def rotate_workload_key_command(
    config: ConfigOption = None,
    data_dir: DataDir = None,
) -> None:
    """Create the next key for workload tokens. It is published in the JWKS at once and
    signs from one token lifetime on; the key it replaces stays published one lifetime more."""
    from edgefleet.server.workload import rotate_workload_key

    with shown_errors():
        settings = server_settings(config, data_dir=data_dir)
        start = rotate_workload_key(settings.data_dir / "keys", SystemClock().now(),
                                    timedelta(seconds=settings.workload_token_seconds))
    console.print(f"new workload token key: published now, signs from {start.isoformat(timespec='seconds')}")


def _ttl(days: float | None) -> timedelta | None:
    return None if days is None else timedelta(days=days)


def create_admin_token_command(
    config: Path | None, data_dir: Path | None, database_url: str | None, name: str, role: str,
    ttl_days: float | None, scope: str | None = None,
) -> str:
    from edgefleet.credentials import Role
    from edgefleet.protocol.scope import ScopeError, parse_scope
    from edgefleet.server.local import create_admin_token

    try:
        parsed_role = Role(role)
    except ValueError:
        raise typer.BadParameter(f"role must be one of {', '.join(r.value for r in Role)}") from None
    try:
        parsed_scope = None if scope is None else parse_scope(scope)
    except ScopeError as exc:
        raise typer.BadParameter(f"--scope: {exc}") from None
    settings = server_settings(config, data_dir=data_dir, database_url=database_url)
    return asyncio.run(create_admin_token(settings, name=name, role=parsed_role, now=SystemClock().now(),
                                          ttl=_ttl(ttl_days), scope=parsed_scope))
