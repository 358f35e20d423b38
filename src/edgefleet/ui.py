"""How fleet data looks in a terminal (the CLI and the demo share it)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from edgefleet.protocol.v1 import DeviceView, UpdateEvent

# Piped output (CI logs) gets room for the device tables instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


ATTESTATION_STYLE = {"passed": "green", "stale": "yellow", "failed": "bold red", "quarantined": "bold red"}


def attested(device: DeviceView) -> str:
    """The device's one attestation state (the server's), coloured: green, amber or red."""
    status = device.attestation
    if status is None:
        return "never"
    state = str(status.get("state") or ("quarantined" if status.get("quarantined") else
                                         "passed" if status.get("passed") else "failed"))
    shown = state.upper() if state == "quarantined" else state
    return f"[{ATTESTATION_STYLE.get(state, 'red')}]{shown}[/]"


def device_table(devices: list[DeviceView], title: str | None = None, *, labels: bool = False) -> Table:
    """One row per device; ``labels``: a column of the operator's labels too (``-o wide``)."""
    table = Table(title=title)
    for column in ("device", "site", "os", "health", "attested", "desired", "update", "last seen"):
        table.add_column(column, no_wrap=True)
    if labels:
        table.add_column("labels")
    for d in devices:
        if d.desired_version_applied == d.desired_version:
            desired = f"v{d.desired_version} applied"
        else:
            has = "-" if d.desired_version_applied is None else f"v{d.desired_version_applied}"
            desired = f"v{d.desired_version} (has {has})"
        row = [d.id, d.site, d.running_version or "?", d.health, attested(d), desired, d.update_state,
               ago(d.last_seen_at)]
        if labels:
            row.append(", ".join(f"{k}={v}" for k, v in sorted(d.labels.items()) if not k.startswith("device.")))
        table.add_row(*row)
    return table


def update_history_table(events: Sequence[UpdateEvent], *, title: str) -> Table:
    """A device's A/B update transitions, oldest first; failures stand out."""
    table = Table(title=title)
    for column in ("#", "at", "release", "phase", "reason"):
        table.add_column(column)
    for event in events:
        style = "red" if event.phase in ("rolling_back", "rolled_back", "failed") else \
            "green" if event.phase == "committed" else ""
        table.add_row(str(event.seq), event.at.strftime("%Y-%m-%d %H:%M:%S"), event.release or "",
                      f"[{style}]{event.phase}[/]" if style else event.phase, event.reason or "")
    return table
