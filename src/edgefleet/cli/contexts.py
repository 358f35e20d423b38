"""Where ``edgefleet login`` keeps an operator's control planes: server URL, fleet CA and
admin token per named context, and which one is current, in one JSON file
(``$EDGEFLEET_CONTEXTS``, else ``$XDG_CONFIG_HOME/edgefleet/contexts.json``, mode 0600:
it holds tokens). A command's ``--server``/``--token``/``--ca-file`` flags win over the
``EDGEFLEET_*`` variables, which win over the current context."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError
from edgefleet.util.atomic import atomic_write_bytes

FIELDS = {"server": "EDGEFLEET_SERVER_URL", "token": "EDGEFLEET_ADMIN_TOKEN", "ca_file": "EDGEFLEET_CA_FILE"}


def contexts_file() -> Path:
    configured = os.environ.get("EDGEFLEET_CONTEXTS")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "contexts.json"


def load() -> dict[str, Any]:
    """``{"current": name | None, "contexts": {name: {server, token, ca_file}}}``; empty when
    there is no file. Raises ConfigError naming a file that is not one of ours."""
    path = contexts_file()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"current": None, "contexts": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the contexts file {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("contexts"), dict):
        raise ConfigError(f"the contexts file {path} is not edgefleet's (no contexts object)")
    return data


def save(data: dict[str, Any]) -> Path:
    path = contexts_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)
    return path


def fill_environment() -> None:
    """Put the current context's values where a flag or variable did not (the variables a
    command's options read)."""
    try:
        data = load()
    except ConfigError:
        return  # the command itself says nothing of contexts; `edgefleet login` reports the file
    context = data["contexts"].get(data.get("current") or "")
    if not isinstance(context, dict):
        return
    for field, variable in FIELDS.items():
        value = context.get(field)
        if isinstance(value, str) and value:
            os.environ.setdefault(variable, value)
