"""``edgefleet demo``: the whole story on one machine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.common import setup_logging, shown_errors
from edgefleet.demo.runner import DemoOptions, run_demo


def demo(
    devices: Annotated[int, typer.Option(min=1, max=2000, help="Emulated devices to start.")] = 12,
    sites: Annotated[int, typer.Option(min=1, max=100, help="Sites to spread them over.")] = 3,
    data_dir: Annotated[Path | None, typer.Option(help="Where to keep everything (default: a fresh temp dir).")]
    = None,
    port: Annotated[int, typer.Option(help="Control plane port (0: any free port).")] = 0,
    headless: Annotated[bool, typer.Option(help="No interactive wait: run for --duration, then exit.")] = False,
    duration: Annotated[float, typer.Option(min=5, help="Seconds to run with --headless.")] = 30,
    log_level: Annotated[str, typer.Option(help="Log level of the server and agents (the demo narrates).")]
    = "error",
) -> None:
    """Start a control plane on SQLite and a fleet of emulated devices that enroll over mTLS,
    check in and take a desired-state change; print what happened and where to look."""
    setup_logging(log_level)
    with shown_errors():
        ok = asyncio.run(run_demo(DemoOptions(devices, sites, data_dir, port, headless, duration, log_level)))
    raise typer.Exit(0 if ok else 1)
