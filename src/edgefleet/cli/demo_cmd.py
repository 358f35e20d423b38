"""``edgefleet demo``: the whole story on one machine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from edgefleet.cli.common import setup_logging, shown_errors

if TYPE_CHECKING:
    from edgefleet.demo.runner import TpmChoice


def demo(
    devices: Annotated[int, typer.Option(min=1, max=2000, help="Emulated devices to start.")] = 24,
    sites: Annotated[int, typer.Option(min=1, max=100, help="Sites to spread them over.")] = 3,
    data_dir: Annotated[Path | None, typer.Option(help="Where to keep everything (default: a fresh temp dir).")]
    = None,
    port: Annotated[int, typer.Option(help="Control plane port (0: any free port).")] = 0,
    headless: Annotated[bool, typer.Option(help="No interactive wait: run for --duration, then exit.")] = False,
    duration: Annotated[float, typer.Option(min=5, help="Seconds to run with --headless.")] = 30,
    log_level: Annotated[str, typer.Option(help="Log level of the server and agents (the demo narrates).")]
    = "error",
    tpm: Annotated[str, typer.Option(help="auto (swtpm where installed), swtpm, or software (insecure).")] = "auto",
    keep: Annotated[bool, typer.Option(help="Keep the temporary directory after a successful run (a failed "
                                            "run always keeps it, to look at).")] = False,
) -> None:
    """The whole story: a control plane on SQLite, a regional hub and a fleet of emulated
    devices that enroll, attest, take configuration and a release, and a wave rollout that
    an implanted device halts; print what happens and where to look (the dashboard)."""
    if tpm not in ("auto", "swtpm", "software"):
        raise typer.BadParameter("--tpm must be auto, swtpm or software")
    from edgefleet.demo.runner import DemoOptions, run_demo  # the control plane and the fleet: loaded to run

    setup_logging(log_level)
    with shown_errors():
        ok = asyncio.run(run_demo(DemoOptions(devices, sites, data_dir, port, headless, duration, log_level,
                                              cast("TpmChoice", tpm), keep)))
    raise typer.Exit(0 if ok else 1)
