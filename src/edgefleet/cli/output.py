"""How the listing and showing commands print: a table for people, or JSON or YAML for
programs (``-o``), the same data the API answers."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

FORMATS = ("table", "wide", "json", "yaml")
Output = Annotated[str, typer.Option("--output", "-o", help="table, wide (more columns where there are), json or "
                                                             "yaml.")]


def printed_for_machines(output: str, data: Any, *, as_json: bool = False) -> bool:
    """Print ``data`` (JSON-able: a model's ``model_dump(mode="json")``) as JSON or YAML
    when asked; True when it did, and the caller prints nothing else."""
    if output not in FORMATS:
        raise typer.BadParameter(f"-o is one of {', '.join(FORMATS)}, got {output!r}", param_hint="--output")
    if as_json or output == "json":
        typer.echo(json.dumps(data, indent=2))
        return True
    if output == "yaml":
        import yaml  # only a command asked for YAML pays for it

        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
        return True
    return False
