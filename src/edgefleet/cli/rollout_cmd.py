"""``edgefleet rollout start|status|watch|pause|resume|approve|abort``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from edgefleet.cli.common import AdminToken, CaFile, ServerUrl, shown_errors
from edgefleet.cli.output import Output, printed_for_machines
from edgefleet.client import AdminClient
from edgefleet.errors import ConfigError
from edgefleet.protocol.typed_text import parse_pair, parse_wave
from edgefleet.ui import console

app = typer.Typer(help="Wave rollouts of a release (admin API, operator role to act).")
STOPPED = ("halted", "completed", "aborted")


def rollout_table(view: dict[str, Any]) -> Table:
    """Per wave: device counts by state, and why each failed device failed."""
    reason = f" ({view['reason']})" if view.get("reason") else ""
    group = f" of group {view['group']}" if view.get("group") else ""
    table = Table(title=f"{view['id']}: {view['release']}{group} {view['status']}{reason}, wave {view['wave']}",
                  caption=f"started by {view['created_by']}")
    states = ["pending", "updating", "offline", "succeeded", "failed", "timed_out"]
    table.add_column("wave")
    for state in states:
        table.add_column(state, justify="right")
    table.add_column("planned", justify="right")
    table.add_column("failures")
    for wave in view["waves"]:
        failures = "\n".join(f"{f['device_id']}: {f['state']} {f['reason'] or ''}" for f in wave["failed"][:5])
        planned = "" if wave.get("planned_count") is None else str(wave["planned_count"])
        table.add_row(str(wave["wave"]), *(str(wave["counts"].get(s, 0)) for s in states), planned, failures)
    return table


def wave_of(text: str) -> dict[str, Any]:
    """``--wave`` SIZE or SIZE/BAKE_SECONDS (``10%/1800``) as the API's wave."""
    try:
        return parse_wave(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--wave") from None


def pair_of(text: str, option: str) -> tuple[str, str]:
    try:
        return parse_pair(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _spec(path: Path) -> dict[str, Any]:
    """The rollout spec file; ConfigError naming the file when it is missing or not a JSON object."""
    try:
        body = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the rollout spec {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"the rollout spec {path} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ConfigError(f"the rollout spec {path} is not a JSON object")
    return body


@app.command("start")
def start(
    release: Annotated[str, typer.Option(help="Published release version.")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    waves: Annotated[list[str] | None, typer.Option("--wave", help="SIZE or SIZE/BAKE_SECONDS, e.g. 1/600, "
                                                                   "10%/1800, 100% (repeat, in order).")] = None,
    selector: Annotated[list[str] | None, typer.Option("--selector", "-l", help="label=value of target devices "
                                                                                "(site too).")] = None,
    spec: Annotated[Path | None, typer.Option(help="Full rollout spec as JSON (the API's body).")] = None,
    failure_threshold: Annotated[str, typer.Option(help="Count or percent that halts.")] = "10%",
    max_per: Annotated[list[str] | None, typer.Option(help="Disruption budget label=N, e.g. site=1.")] = None,
    approval: Annotated[bool, typer.Option(help="Wait for `approve` between waves.")] = False,
    group: Annotated[str | None, typer.Option(help="Only devices the fleet repository puts in this group.")] = None,
    allow_empty: Annotated[bool, typer.Option(help="Start even when the selector matches no device.")] = False,
    from_release: Annotated[list[str] | None, typer.Option(help="Only devices running this release when the "
                                                                "rollout reaches them (repeat).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only show who each wave would take; start nothing.")] = False,
) -> None:
    """Start a rollout: waves in order; it halts by itself on a failed attestation or
    failures over the threshold. A selector that matches no device is refused. Shows who
    each wave takes first (``--dry-run``: only that)."""
    with shown_errors():
        if spec is not None:
            body = _spec(spec)
        else:
            body = {"release": release, "waves": [wave_of(w) for w in waves or ["1", "10%", "100%"]],
                    "selector": dict(pair_of(s, "--selector") for s in selector or []),
                    "failure_threshold": failure_threshold, "approval_between_waves": approval,
                    "budgets": [{"group_by": k, "max_updating": int(v)}
                                for k, v in (pair_of(m, "--max-per") for m in max_per or [])], "group": group,
                    "allow_empty": allow_empty, "from_releases": from_release or []}
        with AdminClient(server, token, ca_file) as client:
            start_shown(client, body, dry_run)


def start_shown(client: AdminClient, body: dict[str, Any], dry_run: bool) -> None:
    """Show who each wave of the rollout ``body`` takes, then (unless ``dry_run``) start it
    and show it."""
    console.print(preview_table(client.call_json("POST", "/api/v1/admin/rollouts/preview", json=body)))
    if not dry_run:
        console.print(rollout_table(client.call_json("POST", "/api/v1/admin/rollouts", json=body)))


def preview_table(preview: dict[str, Any]) -> Table:
    """Who each wave takes (a preview: devices that join or leave change it)."""
    table = Table(title=f"planned: {preview['matched']} devices match")
    for column in ("wave", "devices", "first of them"):
        table.add_column(column)
    for wave in preview["waves"]:
        shown = ", ".join(wave["devices"][:5]) + (", ..." if wave["count"] > 5 else "")
        table.add_row(str(wave["wave"]), str(wave["count"]), shown)
    return table


@app.command("status")
def status(
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    rollout_id: Annotated[str | None, typer.Argument(help="Rollout id; all rollouts when omitted.")] = None,
    events: Annotated[bool, typer.Option(help="Also the audit trail of decisions and verbs.")] = False,
    output: Output = "table",
) -> None:
    """Counts per wave and why each failed device failed."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        if rollout_id is None:
            views = client.call_json("GET", "/api/v1/admin/rollouts")["rollouts"]
            if not printed_for_machines(output, views):
                for view in views:
                    console.print(rollout_table(view))
            return
        view = client.call_json("GET", f"/api/v1/admin/rollouts/{rollout_id}")
        trail = client.call_json("GET", f"/api/v1/admin/rollouts/{rollout_id}/events")["events"] if events else None
        if printed_for_machines(output, view if trail is None else {**view, "events": trail}):
            return
        console.print(rollout_table(view))
        if trail is not None:
            table = Table(title="decisions")
            for column in ("at", "kind", "device", "reason"):
                table.add_column(column)
            for event in reversed(trail):
                table.add_row(event["at"][:19], event["kind"], event["device_id"] or "", event["reason"])
            console.print(table)


@app.command("ls")
def ls(server: ServerUrl, token: AdminToken, ca_file: CaFile, output: Output = "table") -> None:
    """One line per rollout, newest first: id, release, status, wave, counts."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        views = client.call_json("GET", "/api/v1/admin/rollouts")["rollouts"]
    if printed_for_machines(output, views):
        return
    table = Table()
    for column in ("id", "release", "status", "wave", "succeeded", "failed", "started", "by"):
        table.add_column(column)
    for view in views:
        counts = _totals(view)
        table.add_row(view["id"], view["release"] + (f" ({view['group']})" if view.get("group") else ""),
                      view["status"], f"{view['wave']}/{len(view['waves'])}", str(counts.get("succeeded", 0)),
                      str(counts.get("failed", 0) + counts.get("timed_out", 0)), view["created_at"][:19],
                      view["created_by"])
    console.print(table)


def _totals(view: dict[str, Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for wave in view["waves"]:
        for state, count in wave["counts"].items():
            totals[state] = totals.get(state, 0) + int(count)
    return totals


def progress_line(view: dict[str, Any]) -> str:
    """The rollout in one line (``watch`` off a terminal writes one per change)."""
    counts = " ".join(f"{state}={count}" for state, count in sorted(_totals(view).items()) if count)
    reason = f" ({view['reason']})" if view.get("reason") else ""
    return f"{view['id']} {view['status']}{reason} wave {view['wave']}/{len(view['waves'])} {counts}".rstrip()


@app.command("watch")
def watch(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
) -> None:
    """Live progress per wave until the rollout completes, halts or is aborted (off a
    terminal: one line per change)."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        view = client.call_json("GET", f"/api/v1/admin/rollouts/{rollout_id}")
        if not sys.stdout.isatty():
            shown = ""
            while True:
                line = progress_line(view)
                if line != shown:
                    print(line, flush=True)
                    shown = line
                if view["status"] in STOPPED:
                    return
                time.sleep(interval)
                view = client.call_json("GET", f"/api/v1/admin/rollouts/{rollout_id}")
        with Live(rollout_table(view), console=console, refresh_per_second=4) as live:
            while view["status"] not in STOPPED:
                time.sleep(interval)
                view = client.call_json("GET", f"/api/v1/admin/rollouts/{rollout_id}")
                live.update(rollout_table(view))


def _verb(verb: str) -> Any:
    def command(rollout_id: Annotated[str, typer.Argument(help="Rollout id.")], server: ServerUrl,
                token: AdminToken, ca_file: CaFile) -> None:
        with shown_errors(), AdminClient(server, token, ca_file) as client:
            view = client.call_json("POST", f"/api/v1/admin/rollouts/{rollout_id}/{verb}")
        console.print(rollout_table(view))

    command.__doc__ = {"pause": "Stop telling devices; accounting goes on.",
                       "resume": "Continue a paused or halted rollout (after an engineer looked).",
                       "approve": "Let a rollout waiting between waves go on.",
                       "revert": "Send an aborted rollout's devices back to the release they ran before."}[verb]
    return command


for _name in ("pause", "resume", "approve", "revert"):
    app.command(_name)(_verb(_name))


@app.command("abort")
def abort(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id.")],
    server: ServerUrl, token: AdminToken, ca_file: CaFile,
    revert: Annotated[bool, typer.Option(help="Send devices already updated back to their previous release.")] = False,
) -> None:
    """Stop the rollout for good."""
    with shown_errors(), AdminClient(server, token, ca_file) as client:
        view = client.call_json("POST", f"/api/v1/admin/rollouts/{rollout_id}/abort/now", json={"revert": revert})
    console.print(rollout_table(view))
