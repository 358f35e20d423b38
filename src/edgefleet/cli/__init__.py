"""The ``edgefleet`` command line (Typer + rich)."""

from edgefleet.cli.app import app, main

__all__ = ["app", "main"]
