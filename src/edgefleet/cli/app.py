"""The ``edgefleet`` command."""

from __future__ import annotations

import typer

from edgefleet import __version__
from edgefleet.cli import (
    agent_cmd,
    demo_cmd,
    devices_cmd,
    gitops_cmd,
    hub_cmd,
    image_cmd,
    release_cmd,
    rollout_cmd,
    server_cmd,
    sim_cmd,
    tokens_cmd,
    tpm_cmd,
)

app = typer.Typer(
    name="edgefleet",
    help="Immutable edge fleets: signed images, Git as the source of truth, TPM attestation as the gate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(server_cmd.app, name="server")
app.add_typer(hub_cmd.app, name="hub")
app.add_typer(tokens_cmd.app, name="tokens")
app.add_typer(devices_cmd.app, name="devices")
app.add_typer(tpm_cmd.app, name="tpm")
app.add_typer(image_cmd.app, name="image")
app.add_typer(release_cmd.keys_app, name="keys")
app.add_typer(release_cmd.release_app, name="release")
app.command("agent")(agent_cmd.agent)
app.command("assign")(release_cmd.assign)
app.command("demo")(demo_cmd.demo)
app.command("sim")(sim_cmd.sim)
app.add_typer(rollout_cmd.app, name="rollout")
app.add_typer(gitops_cmd.repo_app, name="repo")
app.add_typer(gitops_cmd.gitops_app, name="gitops")
app.command("drift")(gitops_cmd.drift)
app.command("alerts")(gitops_cmd.alerts)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """edgefleet keeps edge fleets immutable, compliant and reliable."""


def main() -> None:
    app()
