"""``edgefleet audit list|verify|replay``: the audit log of admin actions and security
decisions, and the recordings of remote shell sessions."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgefleet import remote_client
from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.cli.output import Output, printed_for_machines
from edgefleet.client import AdminClient
from edgefleet.ui import console, err_console

app = typer.Typer(help="The audit log: who did what, when and from where; verify that no row was changed.")


@app.command("list")
def list_entries(
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    since: Annotated[datetime | None, typer.Option(help="Only rows at or after this time (ISO 8601).")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor (a token's name, enrollment, attestation).")]
    = None,
    device: Annotated[str | None, typer.Option(help="Only rows about this device (or rollout, or token).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows to show, newest first.")] = 50,
    output: Output = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (-o json).")] = False,
) -> None:
    """Newest first (role admin)."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("since", since.isoformat() if since else None), ("actor", actor), ("device", device)):
        if value is not None:
            params[name] = value
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        entries = client.call_json("GET", "/api/v1/admin/audit", params=params)["entries"]
    if printed_for_machines(output, entries, as_json=as_json):
        return
    table = Table(title=f"{len(entries)} audit rows, newest first")
    for column in ("seq", "at", "actor", "action", "subject", "outcome", "from"):
        table.add_column(column)
    for e in entries:
        table.add_row(str(e["seq"]), e["at"][:19], e["actor"], e["action"], e["subject"] or "", e["outcome"],
                      e["source"] or "")
    console.print(table)


@app.command("verify")
def verify(server: ServerUrl, token: AdminToken, ca_file: CaFile) -> None:
    """Walk the whole chain; exit 1 naming the first row deleted or altered (role admin)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        verdict = client.call_json("GET", "/api/v1/admin/audit/verify")
    if verdict["intact"]:
        console.print(f"intact: {verdict['rows']} rows, head {verdict['head_seq']} {verdict['head_digest'][:16]}…"
                      " (note the head elsewhere: removing the newest rows shows only against it)")
        return
    err_console.print(f"[red]BROKEN[/] at row {verdict['first_bad_seq']}: {verdict['reason']} "
                      f"({verdict['rows']} rows before it are intact)", soft_wrap=True)
    raise typer.Exit(1)


@app.command("replay")
def replay(
    session: Annotated[str, typer.Argument(help="The session id (an audit row's details.session).")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    speed: Annotated[float, typer.Option(min=0, help="Times faster than it ran (0: all at once).")] = 1.0,
    max_idle: Annotated[float, typer.Option(min=0, help="Pauses longer than this many seconds are cut short.")]
    = 2.0,
    out: Annotated[Path | None, typer.Option(help="Save the recording (asciicast v2, for any asciinema player) "
                                                  "instead of playing it.")] = None,
) -> None:
    """Play a shell session's recording in this terminal (role admin)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        data = client.session_recording(session)
        if out is not None:
            out.write_bytes(data)
            err_console.print(f"saved {len(data)} bytes to {out} (asciinema play {out})")
            return
        remote_client.replay(data, sys.stdout.buffer, speed=speed, max_idle=max_idle)
