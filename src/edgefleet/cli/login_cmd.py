"""``edgefleet login|logout|contexts``: named control planes for the operator's commands,
like ``argocd login`` and ``flightctl login`` (``cli/contexts.py`` keeps them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli import contexts
from edgefleet.cli.common import shown_errors
from edgefleet.client import AdminClient
from edgefleet.ui import console

app = typer.Typer(help="Named control planes (server, fleet CA, admin token) for the operator's commands.")


def login(
    server: Annotated[str, typer.Argument(help="Control plane URL, e.g. https://fleet.example.com:8443.")],
    ca_file: Annotated[Path, typer.Option("--ca-file", help="The fleet CA certificate (<data-dir>/pki/ca.pem).")],
    token: Annotated[str | None, typer.Option("--token", envvar="EDGEFLEET_ADMIN_TOKEN",
                                              help="Admin token (asked for when neither it nor --oidc is given).")]
    = None,
    oidc: Annotated[bool, typer.Option("--oidc", help="Sign in at the control plane's OpenID Connect provider "
                                                      "instead (a browser opens; the token it yields is kept).")]
    = False,
    browser: Annotated[bool, typer.Option("--browser/--no-browser", help="With --oidc: open the sign-in page "
                                                                         "(else only print its address).")] = True,
    name: Annotated[str | None, typer.Option(help="Context name (default: the server's host).")] = None,
) -> None:
    """Check the token against the server (or sign in with --oidc), then keep server, CA and
    token as a context and make it current: later commands need no --server, --token or
    --ca-file."""
    from urllib.parse import urlparse

    name = name or urlparse(server).hostname or server
    with shown_errors():
        if oidc:
            from edgefleet.cli.oidc_login import sign_in

            with AdminClient(server, "", ca_file) as anonymous:
                exchanged = sign_in(anonymous, open_browser=browser)
            token = exchanged.access_token
            scope = f" within {exchanged.scope}" if exchanged.scope else ""
            console.print(f"signed in as {exchanged.role}{scope} for {exchanged.expires_in // 3600} h")
        elif token is None:
            token = typer.prompt("Admin token", hide_input=True)
        with AdminClient(server, token, ca_file) as client:
            client.devices(limit=1)  # refused (401, TLS, unreachable) before anything is kept
        data = contexts.load()
        data["contexts"][name] = {"server": server.rstrip("/"), "token": token, "ca_file": str(ca_file.resolve())}
        data["current"] = name
        path = contexts.save(data)
    console.print(f"logged in to {server} as context [bold]{name}[/] (kept in {path}, mode 0600)")


def logout(name: Annotated[str | None, typer.Argument(help="Context name (default: the current one).")] = None,
           ) -> None:
    """Forget a context and its token."""
    with shown_errors():
        data = contexts.load()
        name = name or data.get("current")
        if not name or name not in data["contexts"]:
            raise typer.BadParameter(f"no context {name!r} (edgefleet contexts ls)")
        del data["contexts"][name]
        if data.get("current") == name:
            data["current"] = None
        contexts.save(data)
    console.print(f"context {name} forgotten")


@app.command("ls")
def ls() -> None:
    """The contexts, the current one marked (tokens are not shown)."""
    with shown_errors():
        data = contexts.load()
    table = Table(title=str(contexts.contexts_file()))
    for column in ("", "name", "server", "ca file"):
        table.add_column(column)
    for name, context in sorted(data["contexts"].items()):
        table.add_row("*" if name == data.get("current") else "", name, context.get("server", ""),
                      context.get("ca_file", ""))
    console.print(table)


@app.command("use")
def use(name: Annotated[str, typer.Argument(help="Context name.")]) -> None:
    """Make a context current."""
    with shown_errors():
        data = contexts.load()
        if name not in data["contexts"]:
            raise typer.BadParameter(f"no context {name!r} (edgefleet contexts ls)")
        data["current"] = name
        contexts.save(data)
    console.print(f"current context: {name}")
