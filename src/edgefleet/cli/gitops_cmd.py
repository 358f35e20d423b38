"""``edgefleet repo init``, ``edgefleet gitops sync|log``, ``edgefleet drift``, ``edgefleet alerts``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.client import AdminClient
from edgefleet.gitops.scaffold import init_repository
from edgefleet.ui import console

repo_app = typer.Typer(help="The fleet repository (GitOps).")
gitops_app = typer.Typer(help="GitOps syncs on the control plane.")


@repo_app.command("init")
def repo_init(directory: Annotated[Path, typer.Argument(help="Where to create the repository.")]) -> None:
    """Scaffold a fleet repository with working examples of every part, and git init it."""
    with shown_errors():
        files = init_repository(directory)
    console.print(f"created {directory} with {len(files)} files; commit them signed (git commit -S) and point "
                  "the server's gitops settings at it")


def _commit_table(title: str, commits: list[dict[str, object]]) -> Table:
    table = Table(title=title)
    for column in ("sync", "commit", "verdict", "reasons"):
        table.add_column(column)
    for c in commits:
        reasons = c["reasons"] if isinstance(c["reasons"], list) else []
        table.add_row(str(c["sync"]), str(c["commit"])[:12], "[green]accepted[/]" if c["accepted"] else
                      "[red]refused[/]", "\n".join(str(r) for r in reasons))
    return table


@gitops_app.command("sync")
def sync(server: ServerUrl, token: AdminToken, ca_file: CaFile) -> None:
    """Fetch every sync now and show what was decided."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.call_json("POST", "/api/v1/admin/gitops/sync")
    commits = result["commits"]
    console.print(_commit_table("new commits", commits) if commits else "nothing new")


@gitops_app.command("log")
def log(server: ServerUrl, token: AdminToken, ca_file: CaFile,
        limit: Annotated[int, typer.Option(help="Newest N.")] = 20) -> None:
    """Processed commits, newest first, with every reason for each refusal."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.call_json("GET", "/api/v1/admin/gitops/commits", params={"limit": limit})
    console.print(_commit_table("processed commits", result["commits"]))


def drift(server: ServerUrl, token: AdminToken, ca_file: CaFile) -> None:
    """Devices whose configuration differs from their desired state, and how."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.call_json("GET", "/api/v1/admin/drift")
    table = Table(title=f"{len(result['devices'])} devices out of sync")
    for column in ("device", "since", "part", "desired", "reported", "heals"):
        table.add_column(column)
    for d in result["devices"]:
        for part, diff in d["differences"].items():
            table.add_row(d["device_id"], d["since"][:19], part, str(diff["desired"] or "-")[:12],
                          str(diff["reported"] or "-")[:12], str(d["heals"]))
    console.print(table)


def alerts(server: ServerUrl, token: AdminToken, ca_file: CaFile,
           limit: Annotated[int, typer.Option(help="Newest N.")] = 20) -> None:
    """Alerts, newest first, with their webhook delivery state."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.call_json("GET", "/api/v1/admin/alerts", params={"limit": limit})
    table = Table(title="alerts")
    for column in ("id", "at", "kind", "subject", "message", "delivered"):
        table.add_column(column)
    for a in result["alerts"]:
        table.add_row(str(a["id"]), a["created_at"][:19], a["kind"], a["subject"], a["message"][:120],
                      "yes" if a["delivered_at"] else f"no ({a['attempts']} attempts)")
    console.print(table)
