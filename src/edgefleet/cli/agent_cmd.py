"""``edgefleet agent``: the device agent daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.agent.main import run
from edgefleet.agent.settings import AgentSettings
from edgefleet.cli.common import ConfigOption, flags, parse_labels, setup_logging, shown_errors
from edgefleet.settings import load_settings


def agent(
    config: ConfigOption = None,
    server_url: Annotated[str | None, typer.Option("--server", help="Control plane URL.")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="Fleet CA certificate.")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Agent state (keys, certificate, state.json).")] = None,
    device_dir: Annotated[Path | None, typer.Option(help="Run against an emulated device directory.")] = None,
    bootstrap_token: Annotated[
        str | None, typer.Option(help="Single-use enrollment token (first start only).", show_default=False)
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site this device stands in.")] = None,
    labels: Annotated[list[str] | None, typer.Option("--labels", "-l", help="k=v label (repeat).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the device agent: enroll on first start, then check in and report until SIGTERM.

    Settings: flags > EDGEFLEET_AGENT_* env > --config file.
    """
    setup_logging(log_level, daemon=True)
    with shown_errors():
        settings = load_settings(AgentSettings, config, flags(
            server_url=server_url, ca_file=ca_file, state_dir=state_dir, device_dir=device_dir,
            bootstrap_token=bootstrap_token, site=site, labels=parse_labels(labels) if labels else None,
        ))
        run(settings)
