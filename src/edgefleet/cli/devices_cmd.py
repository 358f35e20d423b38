"""``edgefleet devices``: list and inspect devices through the admin API; open a remote
session to one (``session_cmd``, role operator); release one from quarantine or
decommission it (role admin)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli import session_cmd
from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, parse_labels, shown_errors
from edgefleet.cli.output import Output, printed_for_machines
from edgefleet.client import AdminClient
from edgefleet.ui import console, device_table, update_history_table

app = typer.Typer(help="Devices of the fleet (admin API, role viewer or more).")
app.command("shell")(session_cmd.shell)
app.command("logs")(session_cmd.logs)
app.command("port-forward")(session_cmd.port_forward)
app.command("cp")(session_cmd.cp)


@app.command("ls")
def ls(
    server: ServerUrl,
    token: AdminToken,
    ca_file: CaFile,
    site: Annotated[str | None, typer.Option(help="Only this site.")] = None,
    selector: Annotated[list[str] | None, typer.Option("--selector", "-l", help="k=v: only devices with this "
                                                                                "label (repeat: all must match).")]
    = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="A piece of the device id or hardware id.")]
    = None,
    output: Output = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (-o json).")] = False,
    hubs: Annotated[bool, typer.Option("--hubs", help="The sites' regional hubs instead of the devices.")] = False,
) -> None:
    """List devices by site."""
    labels = ",".join(f"{k}={v}" for k, v in parse_labels(selector).items()) or None
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.devices(site=site, kind="hub" if hubs else "device", selector=labels, search=search)
    if printed_for_machines(output, result.model_dump(mode="json"), as_json=as_json):
        return
    what = "hubs" if hubs else "devices"
    console.print(device_table(result.devices, title=f"{len(result.devices)} of {result.total} {what}",
                               labels=output == "wide"))


@app.command("show")
def show(
    device_id: Annotated[str, typer.Argument(help="Device id (dev-...).")],
    server: ServerUrl,
    token: AdminToken,
    ca_file: CaFile,
    output: Output = "json",
) -> None:
    """Everything the control plane knows about one device (JSON, or -o yaml)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        device = client.device(device_id)
    printed_for_machines("json" if output in ("table", "wide") else output, device.model_dump(mode="json"))


@app.command("updates")
def updates(
    device_id: Annotated[str, typer.Argument(help="Device id (dev-...).")],
    server: ServerUrl,
    token: AdminToken,
    ca_file: CaFile,
    limit: Annotated[int, typer.Option(help="Newest N transitions.")] = 50,
    output: Output = "table",
) -> None:
    """A device's A/B update history: every phase it went through, and why."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        history = client.update_history(device_id, limit)
        device = client.device(device_id)
    if printed_for_machines(output, history.model_dump(mode="json")):
        return
    title = f"{device_id}: running {device.running_version or '?'}, update {device.update_state}"
    how = (device.update or {}).get("delivery")
    if isinstance(how, dict):
        title += (f", image by {how.get('method')} ({how.get('downloaded_bytes', 0):,} of "
                  f"{how.get('image_bytes', 0):,} bytes downloaded)")
    console.print(update_history_table(list(reversed(history.events)), title=title))


DeviceId = Annotated[str, typer.Argument(help="Device id (dev-...).")]


@app.command("release-quarantine")
def release_quarantine(device_id: DeviceId, server: ServerUrl, token: AdminToken, ca_file: CaFile) -> None:
    """Let a quarantined device attest again, once an engineer has looked at it (role
    admin). Until its next quote passes it still gets no configuration or tokens."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        client.release_quarantine(device_id)
    typer.echo(f"{device_id} released from quarantine: it attests again at its next check-in", err=True)


@app.command("pending")
def pending(
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    state: Annotated[str, typer.Option("--state", help="pending, approved, rejected, used or all.")] = "pending",
    output: Output = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (-o json).")] = False,
) -> None:
    """What waits for an operator (role operator): TPMs whose endorsement key no vendor CA
    certifies, and devices whose certificate ended asking to re-enroll, with the facts to
    decide on."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.approvals(state)
    if printed_for_machines(output, result.model_dump(mode="json"), as_json=as_json):
        return
    table = Table(title=f"{len(result.approvals)} requests ({state})")
    table.add_column("device", no_wrap=True)
    for column in ("what", "hardware", "site", "type", "fingerprint", "state", "why", "asked"):
        table.add_column(column, overflow="fold")
    for a in result.approvals:
        table.add_row(a.device_id, a.kind, a.hardware_id or "", a.site or "", a.hardware_type or "", a.fingerprint,
                      a.state + (f" by {a.decided_by}" if a.decided_by else ""), a.reason,
                      a.requested_at.isoformat(timespec="seconds"))
    console.print(table)


Fingerprint = Annotated[str | None, typer.Option(
    "--fingerprint", help="The fingerprint you checked (sha256 hex, as `devices pending` shows); "
    "without it, the device's newest pending request.")]


@app.command("approve")
def approve(device_id: DeviceId, server: ServerUrl, token: AdminToken, ca_file: CaFile,
            fingerprint: Fingerprint = None) -> None:
    """Approve what a device waits for (role admin): its TPM (its next identity request
    binds it) or its re-enrollment (its next request gets a certificate)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        decided = client.decide_approval(device_id, approve=True, fingerprint=fingerprint)
    typer.echo(f"{device_id}: {decided.kind} {decided.fingerprint} approved", err=True)


@app.command("reject")
def reject(device_id: DeviceId, server: ServerUrl, token: AdminToken, ca_file: CaFile,
           fingerprint: Fingerprint = None) -> None:
    """Reject what a device waits for (role admin): it never binds an identity with that
    TPM, or never gets a certificate for that key."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        decided = client.decide_approval(device_id, approve=False, fingerprint=fingerprint)
    typer.echo(f"{device_id}: {decided.kind} {decided.fingerprint} rejected", err=True)


@app.command("revoke")
def revoke(
    device_id: DeviceId, server: ServerUrl, token: AdminToken, ca_file: CaFile,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail (one printable line).")] = (
        "revoked by an operator"),
    yes: Annotated[bool, typer.Option("--yes", help="Do it without asking.")] = False,
) -> None:
    """Revoke a device's certificate (role admin): the control plane refuses it at once,
    every hub from its next sync of the fleet's revocation list, offline too. The device
    stays listed, as revoked."""
    if not yes and not typer.confirm(f"revoke {device_id}? the control plane and its hubs stop accepting it"):
        raise typer.Exit(1)
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        result = client.revoke(device_id, reason)
    typer.echo(f"{device_id}: certificate {result.serial} revoked", err=True)


@app.command("decommission")
def decommission(
    device_id: DeviceId, server: ServerUrl, token: AdminToken, ca_file: CaFile,
    yes: Annotated[bool, typer.Option("--yes", help="Do it without asking.")] = False,
) -> None:
    """Forget a device (role admin): its certificate is revoked (on every server process at
    once, on hubs from their next sync); its director metadata and update history are
    deleted."""
    if not yes and not typer.confirm(f"decommission {device_id}? its certificate stops working at once"):
        raise typer.Exit(1)
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        client.decommission(device_id)
    typer.echo(f"{device_id} decommissioned", err=True)
