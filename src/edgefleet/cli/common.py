"""What every command shares: parsing ``k=v`` labels, logging, and showing errors."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.markup import escape

from edgefleet.errors import ConfigError, EdgefleetError, PeerError, TransportError
from edgefleet.protocol.typed_text import parse_pairs
from edgefleet.ui import err_console
from edgefleet.util.jsonlog import JsonFormatter, request_lines_at_debug

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", envvar="EDGEFLEET_CONFIG", help="TOML settings file.")
]
ServerUrl = Annotated[str, typer.Option("--server", envvar="EDGEFLEET_SERVER_URL", help="Control plane URL.")]
AdminToken = Annotated[
    str, typer.Option("--token", envvar="EDGEFLEET_ADMIN_TOKEN", help="Admin bearer token.", show_default=False)
]
CaFile = Annotated[
    Path, typer.Option("--ca-file", envvar="EDGEFLEET_CA_FILE", help="Fleet CA certificate (<data-dir>/pki/ca.pem).")
]


def parse_labels(values: list[str] | None) -> dict[str, str]:
    try:
        return parse_pairs(values or [])
    except ValueError as exc:
        raise typer.BadParameter(f"labels are {exc}") from None


def setup_logging(level: str = "info", *, daemon: bool = False) -> None:
    """Rich output for people at a terminal; plain lines for daemons (the server and the
    agent log under load, to journald: rendering each line with rich costs a core). HTTP clients'
    request lines only at DEBUG."""
    request_lines_at_debug(level)
    if daemon:
        if os.environ.get("EDGEFLEET_LOG_FORMAT") == "json":
            handler = logging.StreamHandler()
            handler.setFormatter(JsonFormatter())
            logging.basicConfig(level=level.upper(), handlers=[handler])
            return
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    logging.basicConfig(
        level=level.upper(), format="%(name)s: %(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
    )


@contextmanager
def shown_errors() -> Iterator[None]:
    """Turn edgefleet errors into one readable line and an exit code (2 config, 1 other)."""
    try:
        yield
    except ConfigError as exc:
        _one_line("configuration error", exc.message)
        raise typer.Exit(2) from None
    except (PeerError, TransportError) as exc:
        _one_line("error", exc.message)
        raise typer.Exit(1) from None
    except EdgefleetError as exc:
        _one_line(exc.code, exc.message)
        raise typer.Exit(1) from None


def _one_line(kind: str, message: str) -> None:
    """One line however long (a path, a field's reason), the message never read as markup."""
    err_console.print(f"[red]{kind}:[/] {escape(message)}", soft_wrap=True)


def flags(**values: object) -> dict[str, object]:
    """Flags the user actually gave (None = not given, so env and file may fill them)."""
    return {k: v for k, v in values.items() if v is not None}

