"""The ``edgefleet`` command.

Each subcommand's module is imported only when that subcommand runs (or when the root
help lists them all): ``edgefleet hub`` loads the hub, never the control plane, and
``edgefleet --version`` loads nothing but this module.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

# Typer carries its own copy of click; a group's methods take that copy's Context and Command.
from typer._click import Command, Context
from typer.core import TyperGroup

from edgefleet import __version__

# name -> (module under edgefleet.cli, attribute): a Typer app (a group), or a function (one command).
COMMANDS: dict[str, tuple[str, str]] = {
    "server": ("server_cmd", "app"),
    "hub": ("hub_cmd", "app"),
    "tokens": ("tokens_cmd", "app"),
    "devices": ("devices_cmd", "app"),
    "tpm": ("tpm_cmd", "app"),
    "image": ("image_cmd", "app"),
    "keys": ("release_cmd", "keys_app"),
    "release": ("release_cmd", "release_app"),
    "agent": ("agent_cmd", "agent"),
    "assign": ("release_cmd", "assign"),
    "demo": ("demo_cmd", "demo"),
    "sim": ("sim_cmd", "sim"),
    "rollout": ("rollout_cmd", "app"),
    "repo": ("gitops_cmd", "repo_app"),
    "gitops": ("gitops_cmd", "gitops_app"),
    "drift": ("gitops_cmd", "drift"),
    "alerts": ("gitops_cmd", "alerts"),
}


def load_command(name: str) -> Command:
    """The click command for subcommand ``name``, importing its module now."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(f"edgefleet.cli.{module}"), attribute)
    if isinstance(target, typer.Typer):
        command: Command = typer.main.get_group(target)  # a group even with one command
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """The root group: lists every subcommand, builds one only when asked for it."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.add_command(load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="edgefleet",
    cls=LazyGroup,
    help="Immutable edge fleets: signed images, Git as the source of truth, TPM attestation as the gate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit


_debug = {"on": False}


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", envvar="EDGEFLEET_DEBUG",
                               help="Show the traceback of an unexpected error."),
) -> None:
    """edgefleet keeps edge fleets immutable, compliant and reliable."""
    _debug["on"] = debug


def main() -> None:
    """Run the command; an error no command turned into a message is one line with its
    cause (the traceback with --debug), never a traceback a newcomer has to read."""
    try:
        app()
    except Exception as exc:
        if _debug["on"] or os.environ.get("EDGEFLEET_DEBUG") in ("1", "true"):
            raise
        from edgefleet.errors import ConfigError, EdgefleetError

        what = exc.message if isinstance(exc, EdgefleetError) else f"{type(exc).__name__}: {exc}"
        kind = "configuration error" if isinstance(exc, ConfigError) else "error"
        print(f"{kind}: {what} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
