"""``edgefleet sim SCENARIO.yaml``: run a fleet scenario and write its reports."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.common import setup_logging, shown_errors
from edgefleet.sim.scenario import load_scenario
from edgefleet.ui import console


def sim(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (YAML); examples/sim/ has some.")],
    out: Annotated[Path | None, typer.Option(help="Where the reports and the run's data go (default: a temp dir).")]
    = None,
    servers: Annotated[int | None, typer.Option(min=1, max=16, help="Server processes (overrides the file).")]
    = None,
    database: Annotated[str | None, typer.Option(help="sqlite or postgresql (overrides the file).")] = None,
    scale: Annotated[float, typer.Option(min=0.001, max=100, help="Multiply the devices per site.")] = 1.0,
    duration: Annotated[float | None, typer.Option(min=1, help="Run at most this long (overrides the file).")]
    = None,
    log_level: Annotated[str, typer.Option(help="Log level of the devices' agents.")] = "error",
) -> None:
    """Run SCENARIO: real control plane processes, emulated devices running the real
    agent behind emulated site links, the scenario's faults and rollout. Writes
    report.json and report.html; exits 1 when the outcome is not what the scenario expects."""
    if database not in (None, "sqlite", "postgresql"):
        raise typer.BadParameter("--database must be sqlite or postgresql")
    from edgefleet.sim.runner import run_scenario  # server processes and emulated sites: loaded to run

    setup_logging(log_level)
    with shown_errors():
        loaded = load_scenario(scenario).scaled(scale).with_servers(servers, database)
        if duration is not None:
            loaded = loaded.model_copy(update={"duration_seconds": duration})
        out_dir = out or Path(tempfile.mkdtemp(prefix=f"edgefleet-sim-{loaded.name}-"))
        report = asyncio.run(run_scenario(loaded, out_dir, console))
    for check in report.checks:
        mark = "[green]held[/]" if check.held else "[bold red]failed[/]"
        console.print(f"  {check.name}: expected {check.expected}, saw {check.seen}: {mark}")
    verdict = "[bold green]as expected[/]" if report.passed else "[bold red]NOT as expected[/]"
    console.print(f"{loaded.name}: {verdict}; reports in {out_dir}/report.html and report.json")
    raise typer.Exit(0 if report.passed else 1)
