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
from typer._click import Command, Context, HelpFormatter
from typer.core import TyperCommand, TyperGroup

from edgefleet import __version__

# name -> (module under edgefleet.cli, attribute, summary): a Typer app (a group), or a
# function (one command). The summary is what the root help lists, so that listing loads
# no command (tests/test_cli.py checks each against its command's own help).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "server": ("server_cmd", "app", "The control plane (HTTPS API with mTLS for devices, bearer tokens for "
                                    "operators)."),
    "hub": ("hub_cmd", "app", "A site's regional hub: telemetry store-and-forward with summaries, repository "
                              "mirror."),
    "tokens": ("tokens_cmd", "app", "Enrollment (bootstrap) tokens and admin API tokens."),
    "devices": ("devices_cmd", "app", "Devices of the fleet (admin API, role viewer or more)."),
    "tpm": ("tpm_cmd", "app", "Read the TPM's PCRs and the firmware's boot event log."),
    "image": ("image_cmd", "app", "Golden images (erofs + dm-verity slots, UKI, systemd-boot) and their reference "
                                  "values."),
    "keys": ("release_cmd", "keys_app", "Offline signing keys of the release owners (root, targets)."),
    "release": ("release_cmd", "release_app", "Signed releases: create, sign (threshold), publish, list."),
    "agent": ("agent_cmd", "agent", "Run the device agent: enroll on first start, then check in and report until "
                                    "SIGTERM."),
    "assign": ("release_cmd", "assign", "Point devices' director at a release; each device verifies it through "
                                        "TUF, then installs it."),
    "demo": ("demo_cmd", "demo", "The whole story on one machine: control plane, hub, emulated fleet, a rollout "
                                 "an implant halts."),
    "sim": ("sim_cmd", "sim", "Run SCENARIO: a real control plane, emulated devices and links, faults and a "
                              "rollout; writes a report."),
    "rollout": ("rollout_cmd", "app", "Wave rollouts of a release (admin API, operator role to act)."),
    "repo": ("gitops_cmd", "repo_app", "The fleet repository (GitOps)."),
    "gitops": ("gitops_cmd", "gitops_app", "GitOps syncs on the control plane."),
    "drift": ("gitops_cmd", "drift", "Devices whose configuration differs from their desired state, and how."),
    "alerts": ("gitops_cmd", "alerts", "Alerts, newest first, with their webhook delivery state."),
    "login": ("login_cmd", "login", "Check the token against the server, then keep server, CA and token as a "
                                    "context."),
    "logout": ("login_cmd", "logout", "Forget a context and its token."),
    "contexts": ("login_cmd", "app", "Named control planes (server, fleet CA, admin token) for the operator's "
                                     "commands."),
    "audit": ("audit_cmd", "app", "The audit log: who did what, when and from where; verify that no row was "
                                  "changed."),
    "vuln": ("vuln_cmd", "app", "Vulnerabilities: import advisories (OSV), VEX and KEV; findings, reports, fixes."),
}


def load_command(name: str) -> Command:
    """The click command for subcommand ``name``, importing its module now."""
    module, attribute, _ = COMMANDS[name]
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
    """The root group: lists every subcommand, builds one only when asked for it (its own
    help included); the root's help lists the summaries and loads nothing."""

    listing = False

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            if self.listing:  # the root's help: its summary line is all that is shown
                return TyperCommand(cmd_name, short_help=COMMANDS[cmd_name][2])
            self.add_command(load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


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
    from edgefleet.cli.contexts import fill_environment

    fill_environment()  # the current context (edgefleet login), where no flag or variable says otherwise
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
